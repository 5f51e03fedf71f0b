"""``--device ssh://user@host[:port]``: run the device bundle on a remote device with the system's OpenSSH.

One job, five steps, each a separate ``ssh``/``scp`` call with host-key checking on and no password
prompt (``BatchMode``): make a private work folder on the device, copy the bundle there, run
``python3 agent.pyz job.json out`` (the engine is built on the device), copy ``out/`` back into a
local staging folder, check every file against the sha256 the device reported, then move it into
place in one rename. Remote command lines are built from words this module made (a ``mktemp``
folder it validated, fixed file names), each quoted with :func:`shlex.quote`; no local file name
ever reaches a shell. A failure at any step leaves nothing half-written locally and removes the
remote folder.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from ..context import SshOptions
from ..errors import BckdError, ConfigError, StageCheckError
from .agent import RESULT_FILE

SAFE_REMOTE_DIR = re.compile(r"^/[A-Za-z0-9._/-]+$")
# Neither may start with "-": ssh would read it as an option.
SAFE_HOST = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._:-]*$")
SAFE_USER = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]*$")


class DeviceError(BckdError):
    """The device could not be reached, refused us, or a transfer broke off (exit code 2)."""


@dataclass(frozen=True)
class SshTarget:
    host: str
    user: str | None = None
    port: int | None = None

    @classmethod
    def parse(cls, url: str) -> SshTarget:
        parts = urlsplit(url)
        if parts.scheme != "ssh" or not parts.hostname:
            raise ConfigError(
                f"--device {url!r} is not an SSH address. Allowed: ssh://user@host or ssh://user@host:port "
                "(e.g. --device ssh://nvidia@192.168.55.1)."
            )
        try:
            port = parts.port
        except ValueError:
            raise ConfigError(f"--device {url!r}: the port must be a number 1..65535.") from None
        if parts.path not in ("", "/") or parts.query or parts.fragment or parts.password:
            raise ConfigError(
                f"--device {url!r}: give only user, host and port (no path, query or password; SSH keys "
                "authenticate, see --ssh-identity)."
            )
        if not SAFE_HOST.match(parts.hostname) or (parts.username and not SAFE_USER.match(parts.username)):
            raise ConfigError(f"--device {url!r}: the user or host name has characters SSH does not accept.")
        return cls(parts.hostname, parts.username, port)

    @property
    def destination(self) -> str:
        return f"{self.user}@{self.host}" if self.user else self.host

    def __str__(self) -> str:
        return f"ssh://{self.destination}" + (f":{self.port}" if self.port else "")


class RemoteDevice:
    """One device reached with the system ``ssh``/``scp``."""

    def __init__(self, target: SshTarget, options: SshOptions | None = None) -> None:
        self.target = target
        self.options = options or SshOptions()
        for tool in ("ssh", "scp"):
            if shutil.which(tool) is None:
                raise DeviceError(
                    f"--device {target} needs the OpenSSH client ({tool} not on PATH): apt install openssh-client."
                )

    # -- the two primitives ----------------------------------------------------------------------
    def _common(self, port_flag: str) -> list[str]:
        o = self.options
        args = [
            "-o", "BatchMode=yes",
            "-o", "StrictHostKeyChecking=yes",
            "-o", f"ConnectTimeout={o.connect_timeout_s}",
            "-o", "LogLevel=ERROR",
        ]  # fmt: skip
        if self.target.port:
            args += [port_flag, str(self.target.port)]
        if o.identity:
            args += ["-i", str(o.identity), "-o", "IdentitiesOnly=yes"]
        if o.known_hosts:
            args += ["-o", f"UserKnownHostsFile={o.known_hosts}"]
        return args

    def run(self, words: list[str], *, timeout: float, what: str) -> subprocess.CompletedProcess:
        """Run a command on the device; ``words`` are quoted one by one for the remote shell."""
        command = " ".join(shlex.quote(w) for w in words)
        argv = ["ssh", *self._common("-p"), self.target.destination, "--", command]
        return self._call(argv, timeout=timeout, what=what)

    def copy(self, sources: list[str], dest: str, *, what: str) -> None:
        """``scp`` with the same options; remote paths are ``host:path`` words made by this module."""
        limit = ["-l", str(self.options.bandwidth_kbps)] if self.options.bandwidth_kbps else []
        argv = ["scp", "-q", "-p", *limit, *self._common("-P"), "--", *sources, dest]
        self._call(argv, timeout=self.options.transfer_timeout_s, what=what)

    def remote(self, path: str) -> str:
        return f"{self.target.destination}:{path}"

    def _call(self, argv: list[str], *, timeout: float, what: str) -> subprocess.CompletedProcess:
        try:
            res = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise DeviceError(
                f"{what} on {self.target} did not finish within {timeout:g} s and was stopped (an interrupted "
                "transfer or a hung device); nothing was kept locally. Check the link and run again."
            ) from None
        if res.returncode == 255:  # ssh's own failure: connection, authentication or host key
            raise DeviceError(self._explain(res.stderr, what))
        if res.returncode != 0 and argv[0] == "scp":
            raise DeviceError(f"{what} on {self.target} failed: {res.stderr.strip() or f'scp exit {res.returncode}'}")
        return res

    def _explain(self, stderr: str, what: str) -> str:
        text = stderr.strip()
        t = self.target
        port = f"-p {t.port} " if t.port else ""
        if "Host key verification failed" in text or ("No " in text and "host key is known" in text):
            kh = self.options.known_hosts or "~/.ssh/known_hosts"
            return (
                f"{what}: the host key of {t.host} is not in {kh} (or has changed), and host-key checking stays on. "
                f"Check the device's fingerprint, then add it: ssh-keyscan {port}{t.host} >> {kh}. ssh said: {text}"
            )
        if "Permission denied" in text or "Too many authentication failures" in text:
            return (
                f"{what}: {t} refused the login (ssh: {text}). Give the key the device accepts with --ssh-identity "
                f"PATH, or install yours there: ssh-copy-id {port}{t.destination}."
            )
        if any(s in text for s in ("Connection refused", "timed out", "No route to host", "Could not resolve",
                                   "Network is unreachable", "Connection closed", "Connection reset")):  # fmt: skip
            return (
                f"{what}: {t} is unreachable (ssh: {text}). Check that the device is on, its address and port, and "
                "that sshd runs there (systemctl status ssh)."
            )
        return f"{what} on {t} failed (ssh exit 255): {text}"

    # -- one job ---------------------------------------------------------------------------------
    def run_bundle(self, bundle: Path, dest: Path, job: dict, *, progress=print) -> dict:
        """Copy ``bundle`` over, run its job, bring ``out/`` back into ``dest``; returns the checked result."""
        from .bundle import BUNDLE_FILES, publish, read_result

        work = self._make_workdir()
        staging = Path(tempfile.mkdtemp(prefix=f".{Path(dest).name}-", dir=Path(dest).parent))
        try:
            progress(f"device: copying the bundle to {self.target}:{work}")
            self.copy([str(Path(bundle) / f) for f in BUNDLE_FILES], self.remote(work + "/"), what="copying the bundle")
            progress(f"device: building the engine and measuring on {self.target}")
            res = self.run(
                [self.options.python, f"{work}/agent.pyz", f"{work}/job.json", f"{work}/out"],
                timeout=self.options.job_timeout_s,
                what="the device-side agent",
            )
            names = self._result_files(work, res)
            progress(f"device: copying {len(names)} result files back")
            self.copy([self.remote(f"{work}/out/{n}") for n in names], str(staging), what="copying the results back")
            result = read_result(staging, job)
            publish(staging, dest)
            return result
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        finally:
            self._remove_workdir(work)

    def _make_workdir(self) -> str:
        res = self.run(
            [self.options.python, "-c", "import tempfile; print(tempfile.mkdtemp(prefix='bckd-pipeline-'))"],
            timeout=self.options.connect_timeout_s + 30,
            what="making a work folder",
        )
        work = res.stdout.strip().splitlines()[-1] if res.stdout.strip() else ""
        if res.returncode != 0 or not SAFE_REMOTE_DIR.match(work):
            raise DeviceError(
                f"Could not make a work folder on {self.target} with {self.options.python!r} "
                f"(exit {res.returncode}: {res.stderr.strip() or res.stdout.strip()}). The agent needs Python 3.10+ "
                "with numpy on the device; point --device-python at it."
            )
        return work

    def _result_files(self, work: str, res: subprocess.CompletedProcess) -> list[str]:
        """The agent's exit status and ``result.json``: which files to bring back, or the device's error."""
        listing = self.run(
            [
                self.options.python,
                "-c",
                "import sys; sys.stdout.write(open(sys.argv[1]).read())",
                f"{work}/out/{RESULT_FILE}",
            ],
            timeout=self.options.connect_timeout_s + 30,
            what="reading the device's result",
        )
        try:
            result = json.loads(listing.stdout)
        except ValueError:
            result = None
        tail = "\n".join(res.stderr.strip().splitlines()[-8:])
        if res.returncode != 0 or result is None or not result.get("ok"):
            reason = (result or {}).get("error") or f"the agent exited with {res.returncode}"
            raise StageCheckError(f"The device-side build or measurement failed on {self.target}: {reason}\n{tail}")
        return [RESULT_FILE, *result["files"]]

    def _remove_workdir(self, work: str) -> None:
        try:
            self.run(["rm", "-rf", "--", work], timeout=self.options.connect_timeout_s + 30, what="cleaning up")
        except BckdError:
            pass  # the device went away mid-job: the folder is in its tmp, and the error that matters is raised
