"""What to run and how to feed it, read from the artifact itself (Ultralytics' AutoBackend idea, one small
function per step): ``locate`` turns a run folder or a file into one artifact and its backend,
``read_contract`` reads the preprocessing and class names the artifact carries, ``make_runtime``
builds the Runtime that runs it. Which backends run a file, and the default among them, is the runtime
registry's word (runtimes/registry.py).

Where the contract comes from, per kind of file:

- ONNX (FP32 or INT8 Q/DQ): its ``metadata_props`` (``bckd.preprocessing``, ``bckd.class_names``, ...,
  written by export/onnx_export.py::onnx_metadata and kept by simplification and quantization);
- OpenVINO IR: ``rt_info["framework"]``, where OpenVINO keeps the ONNX's metadata_props when it
  converts the ONNX (calibrate/openvino.py; NNCF keeps them in the INT8 IR);
- TensorRT plan: the ``onnx_metadata`` of the run's manifest.json (a plan holds no metadata);
- student checkpoint (.pt): its ``CheckpointMeta``.

The run's manifest.json (a run folder, or found above a file the manifest lists) adds the provenance:
target, artifact hash, checkpoint, git commit, report status.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

from .. import runtimes
from ..errors import ConfigError

ARTIFACT_HELP = (
    "Pass a run folder (with manifest.json), an .onnx, an OpenVINO model.xml, a TensorRT .plan/.engine, or a "
    "student checkpoint (.pt)."
)


@dataclass(frozen=True)
class Artifact:
    """One file to run, the backend and device that run it, and the manifest of the run it comes from."""

    path: Path
    kind: str  # onnx | openvino-ir | tensorrt-plan | checkpoint
    backend: str  # onnxruntime | openvino | tensorrt | torch
    device: str = "cpu"
    target: str | None = None
    manifest: dict | None = None
    run_dir: Path | None = None


@dataclass(frozen=True)
class Contract:
    """How to feed the model and read its output; ``None``: the artifact does not say."""

    mean: tuple[float, float, float] | None
    std: tuple[float, float, float] | None
    normalization_in_graph: bool
    class_names: tuple[str, ...] | None
    resize_to: tuple[int, int] | None
    output_name: str | None
    model: str | None
    source: str  # where it was read: "onnx metadata_props", "openvino rt_info", ...
    extra: dict = field(default_factory=dict)
    class_colors: tuple[tuple[int, int, int], ...] | None = None  # one RGB 0..255 per class, from the training data
    task: str | None = None  # the model's task (tasks/): ONNX ``bckd.task``, a checkpoint's meta; None: not said

    def with_overrides(self, mean=None, std=None, classes=None) -> Contract:
        """The user's values where the artifact has none; they never replace what it carries."""
        given = {"mean": mean, "std": std, "classes": classes}
        carried = {"mean": self.mean, "std": self.std, "classes": self.class_names}
        clash = [k for k, v in given.items() if v is not None and carried[k] is not None and tuple(v) != carried[k]]
        if clash:
            raise ConfigError(
                f"{', '.join(clash)} given, but the artifact carries its own ({self.source}: "
                + "; ".join(f"{k}={list(carried[k])}" for k in clash)
                + "). The artifact's values are what it was trained and exported with; drop the override."
            )
        if (mean is None) != (std is None) and self.mean is None:
            raise ConfigError("Give mean and std together (RGB statistics on the 0..1 scale, e.g. ImageNet's).")
        return replace(
            self,
            mean=self.mean or (None if mean is None else tuple(float(v) for v in mean)),
            std=self.std or (None if std is None else tuple(float(v) for v in std)),
            class_names=self.class_names or (None if classes is None else tuple(str(c) for c in classes)),
        )

    def require(self, path: Path) -> None:
        """The normalisation must be known; class names default to class_0..N-1 (Segmenter, from the output)."""
        missing = []
        if self.mean is None or self.std is None:
            missing.append("mean/std (the normalisation: --mean R,G,B --std R,G,B, on the 0..1 scale)")
        if missing:
            raise ConfigError(
                f"{str(path)!r} does not carry {' or '.join(missing)} ({self.source} has no bckd.* entries: it was "
                "not exported by bckd-pipeline). Give them as flags (Python: mean=, std=, classes= of "
                "Segmenter.load), or run a model exported by `bckd-pipeline run`/`deploy`, which writes them "
                "into the file."
            )


# -- locate ------------------------------------------------------------------------------------------
def locate(model: Path | str, target: str | None = None) -> Artifact:
    """A run folder or an artifact file -> the one file to run, with its backend, device and manifest."""
    path = Path(model)
    if not path.exists():
        raise ConfigError(f"Model {str(path)!r} does not exist. {ARTIFACT_HELP}")
    manifest, run_dir = None, None
    if path.is_dir():
        run_dir = path
        manifest = _read_manifest(path / "manifest.json", folder=path)
        several = len(manifest.get("per_target") or {}) > 1
        manifest = _one_target(manifest, run_dir, target)
        if several and target is not None:
            target = manifest.get("target")  # the target whose artifact was picked (--target may name its label)
        path = _deployable(manifest, run_dir)
    else:
        run_dir, manifest = _enclosing_run(path)
    suffix = path.suffix.lower()
    if suffix not in runtimes.suffixes():
        raise ConfigError(
            f"{str(path)!r} is not a model file predict runs (suffix {suffix or 'none'!r}). {ARTIFACT_HELP}"
        )
    kind = runtimes.file_kind(suffix).kind
    backends = tuple(entry.name for entry in runtimes.backends_for(suffix))  # the default first
    backend, target_name = backends[0], None
    device = runtimes.get_backend(backend).default_device
    if manifest is not None and run_dir is not None and Path(model).is_dir():
        target_name = manifest.get("target")
        backend, device = _target_backend(target_name, backends, backend)
    if target is not None:
        from ..targets import get_target

        profile = get_target(target)
        if str(profile.backend) not in backends:
            raise ConfigError(
                f"--target {target} runs {profile.backend}, which cannot run {str(path)!r} (a {kind}; it runs on "
                f"{', '.join(backends)}). Pick a target of that backend (`bckd-pipeline targets`), or pass an "
                "artifact built for this target."
            )
        backend, device, target_name = str(profile.backend), profile.device, target
    return Artifact(path, kind, backend, device, target_name, manifest, run_dir)


def _target_backend(target_name: str | None, backends: tuple[str, ...], default: str) -> tuple[str, str]:
    from ..targets import TARGETS

    profile = TARGETS.get(target_name or "")
    if profile is None or str(profile.backend) not in backends:
        return default, runtimes.get_backend(default).default_device
    return str(profile.backend), profile.device


def _read_manifest(path: Path, *, folder: Path) -> dict:
    if not path.is_file():
        raise ConfigError(
            f"{str(folder)!r} is a folder without manifest.json, so it is not a run folder of `bckd-pipeline run` "
            f"or `deploy` (or that run did not finish). {ARTIFACT_HELP}"
        )
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"Could not read {str(path)!r} ({type(exc).__name__}: {str(exc)[:160]}). Re-run the command that wrote "
            "it, or pass the artifact file itself."
        ) from None
    if not isinstance(manifest, dict) or not str(manifest.get("format", "")).startswith("bckd-pipeline/manifest"):
        raise ConfigError(f"{str(path)!r} is not a bckd-pipeline manifest. Pass the artifact file itself.")
    return manifest


def _one_target(manifest: dict, run_dir: Path, target: str | None) -> dict:
    """A run folder of several targets (report/combined.py): the manifest of the one ``--target`` names, else of
    the first deployed. A folder of one target: its manifest, whatever --target says (it picks the backend)."""
    per_target = manifest.get("per_target") or {}
    if len(per_target) < 2:
        return manifest
    keys = list(per_target)
    if target is None:
        key = keys[0]
    else:
        matches = [k for k in keys if k == target] or [k for k in keys if k.startswith(f"{target}-")]
        if len(matches) != 1:
            from ..targets.aliases import suggest_target

            pick = suggest_target(target, keys) if not matches else None
            raise ConfigError(
                f"--target {target}: the run in {str(run_dir)!r} deployed {', '.join(keys)}"
                + (f", and {target} matches {', '.join(matches)}" if matches else "")
                + (f". Did you mean --target {pick}?" if pick else f". Pick one with --target {keys[0]}")
                + f" (or leave --target out for the first, {keys[0]})."
            )
        key = matches[0]
    return _read_manifest(run_dir / per_target[key]["manifest"], folder=run_dir)


def _deployable(manifest: dict, run_dir: Path) -> Path:
    """The deployed artifact the manifest names (an IR's model.bin travels with its model.xml)."""
    files = [f for f in manifest.get("deployable") or [] if not str(f).endswith(".bin")]
    if not files:
        raise ConfigError(
            f"{str(run_dir / 'manifest.json')!r} names no deployable artifact. Pass the artifact file itself."
        )
    path = run_dir / files[0]
    if path.suffix in (".plan", ".engine") and not path.is_file():
        raise ConfigError(
            f"The run in {str(run_dir)!r} deployed a TensorRT engine ({files[0]}) that is not on this host: "
            "engines are built on the device. Run predict on the device, or pass the run's Q/DQ ONNX "
            f"({run_dir / 'deploy/model.qdq.onnx'}) to run the same quantized model here on ONNX Runtime."
        )
    if not path.is_file():
        raise ConfigError(
            f"The run in {str(run_dir)!r} names {files[0]} as its deployed artifact, but the file is missing. "
            "Re-run `bckd-pipeline run`/`deploy` into that folder (finished stages are cached)."
        )
    return path


def _enclosing_run(path: Path) -> tuple[Path | None, dict | None]:
    """The run folder above ``path`` whose manifest lists it, if any (for provenance and a plan's contract)."""
    for parent in list(path.resolve().parents)[:4]:
        candidate = parent / "manifest.json"
        if not candidate.is_file():
            continue
        try:
            manifest = json.loads(candidate.read_text())
        except (OSError, ValueError):
            return None, None
        rel = str(path.resolve().relative_to(parent))
        listed = {a.get("path") for a in manifest.get("artifacts", [])} | set(manifest.get("deployable") or [])
        return (parent, manifest) if rel in listed else (None, None)
    return None, None


# -- the contract --------------------------------------------------------------------------------------
def read_contract(artifact: Artifact) -> Contract:
    if artifact.kind == "checkpoint":
        return _checkpoint_contract(artifact.path)
    if artifact.kind == "onnx":
        from ..onnxfile import read_metadata

        return contract_from_props(read_metadata(artifact.path), "onnx metadata_props")
    if artifact.kind == "openvino-ir":
        return contract_from_props(_ir_props(artifact.path), "openvino rt_info")
    props = (artifact.manifest or {}).get("onnx_metadata") or {}
    return contract_from_props(props, "the run's manifest.json (a TensorRT plan holds no metadata)")


def contract_from_props(props: dict[str, str], source: str) -> Contract:
    """The ``bckd.*`` entries of export/onnx_export.py::onnx_metadata -> a Contract."""

    def load(key: str):
        try:
            return json.loads(props[key]) if key in props else None
        except ValueError:
            raise ConfigError(
                f"{source} entry {key!r} is not JSON: {props[key][:80]!r}. Re-export the model."
            ) from None

    pre = load("bckd.preprocessing") or {}
    out = load("bckd.output") or {}
    names = load("bckd.class_names")
    output = out.get("name")  # a model of several outputs (a detector's raw head) may list them
    colors = load("bckd.class_colors")
    return Contract(
        mean=None if pre.get("mean") is None else tuple(pre["mean"]),
        std=None if pre.get("std") is None else tuple(pre["std"]),
        normalization_in_graph=bool(pre.get("baked_into_graph", False)),
        class_names=None if names is None else tuple(names),
        resize_to=None if pre.get("resize_to") is None else tuple(pre["resize_to"]),
        output_name=output if isinstance(output, str) else None,
        model=props.get("bckd.model"),
        source=source,
        class_colors=None if colors is None else tuple(tuple(int(v) for v in c) for c in colors),
        task=props.get("bckd.task"),
        extra={
            name: props[key]
            for key, name in (
                ("bckd.version", "exported_by_version"),
                ("bckd.checkpoint_sha256", "checkpoint_sha256"),
                ("bckd.opset", "opset"),
                ("bckd.nms", "nms"),  # the settings of a graph with NMS inside (export/detection_nms.py)
            )
            if key in props
        },
    )


def _ir_props(path: Path) -> dict[str, str]:
    from ..runtimes.openvino import import_openvino

    ov = import_openvino()
    try:
        model = ov.Core().read_model(str(path))
    except RuntimeError as exc:
        raise ConfigError(
            f"OpenVINO could not read {str(path)!r}: {str(exc).strip().splitlines()[0][:300]}. The IR is truncated "
            "or its model.bin is missing; rebuild it with `bckd-pipeline run`/`deploy`."
        ) from None
    if not model.has_rt_info(["framework"]):
        return {}
    framework = model.get_rt_info()["framework"]
    return {key: framework[key].astype(str) for key in framework}


def _checkpoint_contract(path: Path) -> Contract:
    from ..distill.checkpoint import read_checkpoint

    meta, _ = read_checkpoint(path)
    return Contract(
        mean=tuple(meta.mean),
        std=tuple(meta.std),
        normalization_in_graph=True,  # the export wrapper normalises, as in the exported graph
        class_names=tuple(meta.class_names),
        resize_to=None if meta.input_hw is None else tuple(meta.input_hw),
        output_name="logits",
        model=meta.model,
        source="checkpoint meta",
        class_colors=meta.class_colors,
        task=meta.task,
        extra={"dataset": meta.dataset, "role": meta.role},
    )


def task_of(artifact: Artifact, contract: Contract) -> str:
    """The artifact's task: what the file says (ONNX/IR ``bckd.task``, a checkpoint's meta), else its run's
    manifest ``task``, else segmentation (the file format: a file without ``bckd.task`` holds a segmentation model;
    a model exported elsewhere is read as one)."""
    from ..tasks import DEFAULT_TASK, get_task

    in_manifest = (artifact.manifest or {}).get("task")
    if contract.task is not None and in_manifest is not None and contract.task != in_manifest:
        raise ConfigError(
            f"{str(artifact.path)!r} says its task is {contract.task!r} ({contract.source}), but the manifest of its "
            f"run in {str(artifact.run_dir)!r} says {in_manifest!r}. The file is not the one that run deployed; pass "
            "the artifact file itself, or re-run `bckd-pipeline deploy` into that folder."
        )
    name = contract.task or in_manifest or DEFAULT_TASK
    get_task(name)  # an unknown name fails here, listing the tasks
    return name


# -- the runtime ---------------------------------------------------------------------------------------
def make_runtime(artifact: Artifact, *, threads: int | None = None):
    """The Runtime that runs ``artifact`` (not yet active); a library missing here is refused at once."""
    runtimes.require(artifact.backend, artifact.path)
    if artifact.kind == "checkpoint":  # a checkpoint is rebuilt into the student before it runs
        return _torch_runtime(artifact, threads)
    return runtimes.build_runtime(
        artifact.backend,
        artifact.path,
        device=artifact.device,
        precision=precision_of(artifact),
        threads=threads,
        name=artifact.path.name,
    )


def _torch_runtime(artifact: Artifact, threads: int | None):
    from ..data.base import Normalization
    from ..runtimes.torch import TorchRuntime
    from ..distill.checkpoint import load_model
    from ..export.wrapper import SegExportWrapper

    model, meta = load_model(artifact.path)
    if meta.task != "segmentation":
        raise ConfigError(
            f"{str(artifact.path)!r} is a {meta.task} checkpoint; predict runs detectors from their exported graph. "
            "Export it first (`bckd-pipeline deploy`), then pass the run folder or its .onnx/model.xml."
        )
    wrapper = SegExportWrapper(model, normalize=Normalization(meta.mean, meta.std), head="logits")
    # Any batch and size: the wrapper pads to the encoder's stride and crops back, as evaluation does.
    return TorchRuntime(wrapper, (None, 3, None, None), threads=threads, name=artifact.path.name)


def precision_of(artifact: Artifact) -> str:
    """fp32 | fp16 | int8: the manifest's word for the file, else what the graph holds."""
    for entry in (artifact.manifest or {}).get("artifacts", []):
        if (
            artifact.run_dir is not None
            and (artifact.run_dir / entry.get("path", "")).resolve() == artifact.path.resolve()
        ):
            return entry["precision"]
    if artifact.kind == "onnx":
        from ..onnxfile import load_onnx

        graph = load_onnx(artifact.path, load_weights=False).graph
        if any(n.op_type in ("QuantizeLinear", "DequantizeLinear", "QLinearConv", "ConvInteger") for n in graph.node):
            return "int8"
        return "fp16" if any(t.data_type == 10 for t in graph.initializer) else "fp32"  # 10: TensorProto.FLOAT16
    if artifact.kind == "openvino-ir":
        text = artifact.path.read_text(errors="replace")
        if 'type="FakeQuantize"' in text:
            return "int8"
        return "fp16" if 'element_type="f16"' in text else "fp32"
    return "int8" if artifact.kind == "tensorrt-plan" else "fp32"
