"""A teacher or student that is not a preset: a TorchScript file, a torch.export program, or a factory
function with its state_dict; the pair checked against each other; the modules a model offers as BCKD taps.

``distill --teacher`` takes a checkpoint of a preset, a TorchScript (``torch.jit.save``) or ``.pt2`` file;
``--teacher-factory module:function --teacher-weights FILE`` builds any ``nn.Module`` (a torchvision
segmentation model returning ``{"out": logits}`` included) and fills it from a state_dict loaded with
``weights_only=True``. ``--student-factory`` (``--student-weights`` optional: a student may start from its
factory's initialisation) does the same for the student. Files are read by ``model_files.py``, the loader
``deploy --model``/``--model-factory`` uses.

BCKD taps modules by name with forward hooks. A TorchScript or ``torch.export`` module runs its own compiled
graph: ``register_forward_hook`` raises "not supported on ScriptModules", and an exported program keeps no
submodules, so such a teacher distils with logit terms (kd, cwd) only and BCKD is refused with that reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..errors import ConfigError
from ..inference import logits_of
from ..model_files import load_torch_module, module_from_factory, torch_kind
from ..model_spec import ModelSource
from .models import PRESETS, build_model, default_taps

# Kinds whose modules take forward hooks (and so BCKD taps by name).
HOOKABLE = ("preset", "checkpoint", "factory")


@dataclass
class LoadedModel:
    """A teacher or student ready to train or to tap: the module, what it is called, where it came from."""

    model: nn.Module
    name: str  # the preset name, the factory ``module:function``, or the file name
    kind: str  # "preset", "checkpoint", "factory", "torchscript" or "pt2"
    role: str  # "teacher" or "student"
    factory: str | None = None

    @property
    def is_preset(self) -> bool:
        return self.name in PRESETS and self.kind in ("preset", "checkpoint")

    def taps(self, given: list[str] | None, *, bckd: bool) -> list[str] | None:
        """The module names BCKD taps: ``given``, else the preset's; refused where hooks cannot run."""
        flag = f"--{self.role}-taps"
        if self.kind not in HOOKABLE:
            if given or bckd:
                raise ConfigError(
                    f"The {self.role} {self.name!r} is a {self.kind} module: it runs its own compiled graph, and "
                    "PyTorch does not run forward hooks on its submodules (register_forward_hook is not supported "
                    f"on ScriptModules), so BCKD cannot tap its features. Distil from its logits with --kd kd "
                    f"(or kd+cwd), or give the module itself with --{self.role}-factory module:function "
                    f"--{self.role}-weights FILE and name its taps with {flag}."
                )
            return None
        if given:
            return given
        if self.is_preset:
            return default_taps(self.name, role=self.role)
        if bckd:
            raise ConfigError(
                f"BCKD taps the {self.role}'s feature stages by module name, and {self.name!r} is not a preset "
                f"whose stages are known. Name them with {flag} a,b,c (e.g. layer2,layer3 of a ResNet backbone); "
                f"`bckd-pipeline taps --model-factory {self.factory or 'module:function'}` lists the candidates "
                "with their strides."
            )
        return None


def load_teacher(path: Path | None, factory: str | None, weights: Path | None, num_classes: int) -> LoadedModel:
    """``--teacher FILE`` (a preset checkpoint, TorchScript, .pt2) or ``--teacher-factory`` with its weights."""
    from .checkpoint import load_model

    given = [f for f, v in (("--teacher", path), ("--teacher-factory", factory)) if v is not None]
    if len(given) != 1:
        raise ConfigError(
            f"distill takes one teacher; got {', '.join(given) if given else 'none'}. Pass --teacher FILE (a "
            "teacher.pt checkpoint, a TorchScript file or a .pt2 program) or --teacher-factory module:function "
            "--teacher-weights FILE."
        )
    if factory is not None:
        if weights is None:
            raise ConfigError(
                "--teacher-factory needs --teacher-weights FILE (the trained state_dict): an untrained teacher "
                "teaches nothing."
            )
        model = module_from_factory(factory, _existing(weights, "--teacher-weights"), flag="--teacher-factory",
                                    weights_flag="--teacher-weights")  # fmt: skip
        return LoadedModel(model.eval(), factory, "factory", "teacher", factory)
    if weights is not None:
        raise ConfigError("--teacher-weights goes with --teacher-factory; a --teacher file carries its weights.")
    path = _existing(path, "--teacher")
    kind = torch_kind(path)
    if kind == "checkpoint":
        model, meta = load_model(path, expect_classes=num_classes, expect_task="segmentation", flag="--teacher")
        return LoadedModel(model, meta.model, "checkpoint", "teacher")
    model = load_torch_module(ModelSource(kind, path))
    return LoadedModel(model, path.name, kind, "teacher")


def load_student(
    preset: str, factory: str | None, weights: Path | None, num_classes: int, *, pretrained: str
) -> LoadedModel:
    """The student preset (``--student-arch``), or ``--student-factory`` with optional ``--student-weights``."""
    if factory is None:
        if weights is not None:
            raise ConfigError("--student-weights goes with --student-factory; a preset student starts from scratch.")
        return LoadedModel(build_model(preset, num_classes, pretrained=pretrained), preset, "preset", "student")
    if weights is not None:
        weights = _existing(weights, "--student-weights")
    model = module_from_factory(factory, weights, flag="--student-factory", weights_flag="--student-weights")
    return LoadedModel(model, factory, "factory", "student", factory)


def _existing(path: Path, flag: str) -> Path:
    from ..errors import CheckpointError

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{flag} {str(path)!r} does not exist (or is not a file). Check the path.")
    return path


@torch.no_grad()
def _logits(m: LoadedModel, hw: tuple[int, int]) -> torch.Tensor:
    was = m.model.training
    m.model.eval()
    try:
        out = logits_of(m.model(torch.zeros(1, 3, *hw)))
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001 - a module fails on a size it does not take with any exception type
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        raise ConfigError(
            f"The {m.role} {m.name!r} failed on a 1x3x{hw[0]}x{hw[1]} zero image ({type(exc).__name__}: "
            f"{lines[-1][:200] if lines else ''}). Pick --crop/--resize H,W that it takes."
        ) from None
    finally:
        m.model.train(was)
    if out.ndim != 4:
        raise ConfigError(
            f"The {m.role} {m.name!r} returned logits of shape {tuple(out.shape)} for a 1x3x{hw[0]}x{hw[1]} "
            "input; distillation needs per-class logits N x K x H x W (a dict's 'out', as torchvision returns)."
        )
    return out


def check_pair(student: LoadedModel, teacher: LoadedModel, hw: tuple[int, int], num_classes: int) -> dict:
    """One zero image through both models: the class counts must match each other and the data.

    Logits of another spatial size are taken: the distillation terms resize the teacher's logits to the
    student's (bilinear), as they already do for heads at different strides. Returns both shapes.
    """
    s, t = _logits(student, hw), _logits(teacher, hw)
    shapes = {"student": tuple(s.shape), "teacher": tuple(t.shape)}
    if s.shape[1] != t.shape[1]:
        raise ConfigError(
            f"The teacher {teacher.name!r} outputs logits of shape {tuple(t.shape)} and the student "
            f"{student.name!r} {tuple(s.shape)} for a 1x3x{hw[0]}x{hw[1]} input: {t.shape[1]} classes against "
            f"{s.shape[1]}. Distillation needs the same classes in the same order: give a teacher trained on the "
            "student's classes, or build the student with the teacher's class count."
        )
    if s.shape[1] != num_classes:
        raise ConfigError(
            f"The student {student.name!r} outputs {s.shape[1]} classes (logits {tuple(s.shape)}), the dataset has "
            f"{num_classes}. Build the student (and the teacher) for the dataset's classes."
        )
    return shapes


@dataclass(frozen=True)
class Tap:
    name: str
    shape: tuple[int, ...]
    stride: tuple[float, float]  # input size / output size, per axis


@torch.no_grad()
def candidate_taps(model: nn.Module, hw: tuple[int, int]) -> list[Tap]:
    """Every module whose output on a 1x3xHxW zero image is one 4-D tensor, in the order they ran, with its
    stride (input size / output size): what ``--teacher-taps``/``--student-taps`` can name."""
    found: dict[str, Tap] = {}

    def hook(name: str):
        def fn(_m, _i, out):
            if isinstance(out, torch.Tensor) and out.dim() == 4 and name not in found:
                found[name] = Tap(name, tuple(out.shape), (hw[0] / out.shape[-2], hw[1] / out.shape[-1]))

        return fn

    try:
        handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules() if n]
    except RuntimeError as exc:
        raise ConfigError(
            f"{type(model).__name__} takes no forward hooks ({exc}): a TorchScript or exported module cannot be "
            "tapped. Give the nn.Module itself with --model-factory module:function."
        ) from None
    was = model.training
    model.eval()
    try:
        model(torch.zeros(1, 3, *hw))
    except Exception as exc:  # noqa: BLE001 - the user's model refusing the size
        raise ConfigError(
            f"{type(model).__name__} failed on a 1x3x{hw[0]}x{hw[1]} zero image ({type(exc).__name__}: "
            f"{str(exc)[:200]}). Pass --input-size H,W that it takes."
        ) from None
    finally:
        model.train(was)
        for h in handles:
            h.remove()
    return list(found.values())
