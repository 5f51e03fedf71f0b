"""A real OpenSSH server on 127.0.0.1 for the remote-device tests, with throwaway keys.

The server runs as the current user from a private config (key authentication only, a fresh host
key, its own authorized_keys); the client side gets a known_hosts file holding that host key, so
every test runs with host-key checking on, as users do.
"""

from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
SFTP_SERVER = next(
    (p for p in ("/usr/lib/openssh/sftp-server", "/usr/libexec/openssh/sftp-server", "/usr/libexec/sftp-server")
     if os.path.exists(p)),
    None,
)  # fmt: skip


@dataclass
class SshServer:
    port: int
    user: str
    identity: Path  # accepted key
    wrong_identity: Path  # a key the server does not know
    known_hosts: Path
    process: subprocess.Popen
    folder: Path

    @property
    def url(self) -> str:
        return f"ssh://{self.user}@127.0.0.1:{self.port}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _keygen(path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)


def require_openssh() -> None:
    missing = [t for t in ("ssh", "scp", "ssh-keygen") if shutil.which(t) is None]
    if not os.path.exists(SSHD):
        missing.append("sshd")
    if SFTP_SERVER is None:
        missing.append("sftp-server")
    if missing:
        pytest.skip(f"OpenSSH ({', '.join(missing)}) is not installed: apt install openssh-server openssh-client")


def start_sshd(folder: Path) -> SshServer:
    require_openssh()
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    for name in ("host_key", "client_key", "wrong_key"):
        _keygen(folder / name)
    (folder / "authorized_keys").write_text((folder / "client_key.pub").read_text())
    port = _free_port()
    config = folder / "sshd_config"
    config.write_text(
        "\n".join(
            [
                f"Port {port}",
                "ListenAddress 127.0.0.1",
                f"HostKey {folder / 'host_key'}",
                f"PidFile {folder / 'sshd.pid'}",
                f"AuthorizedKeysFile {folder / 'authorized_keys'}",
                "PubkeyAuthentication yes",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "UsePAM no",
                "StrictModes no",
                "PermitRootLogin prohibit-password",
                f"Subsystem sftp {SFTP_SERVER}",
                "",
            ]
        )
    )
    if os.geteuid() == 0:
        os.makedirs("/run/sshd", exist_ok=True)  # sshd's privilege-separation folder, absent in containers
    log = open(folder / "sshd.log", "w")  # noqa: SIM115 - lives as long as the server
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + 10
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"sshd exited at start: {(folder / 'sshd.log').read_text()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
        except OSError:
            time.sleep(0.1)
    else:
        proc.kill()
        raise RuntimeError("sshd did not start listening within 10 s")
    host_pub = (folder / "host_key.pub").read_text().split()
    (folder / "known_hosts").write_text(f"[127.0.0.1]:{port} {host_pub[0]} {host_pub[1]}\n")
    return SshServer(
        port, getpass.getuser(), folder / "client_key", folder / "wrong_key", folder / "known_hosts", proc, folder
    )


def stop_sshd(server: SshServer) -> None:
    server.process.terminate()
    try:
        server.process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        server.process.kill()
