"""The configurations of a run's training: plain, typed values that the pipeline resolves and every stage reads.

``CheckpointMeta`` (what a checkpoint records of its model and data), ``DataConfig`` and ``Schedule`` (the
training data and its length), ``TrainConfig`` (the training loop), ``DistillConfig`` and ``BCKDConfig``
(the distillation terms). They live below the stages so that ``context.py`` holds them without importing
``distill``; nothing here imports torch (``DataConfig`` builds its datasets through ``data`` when asked).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from .errors import ConfigError, unknown_name

KD_CHOICES = ("none", "kd", "cwd", "bckd", "kd+bckd", "cwd+bckd")  # segmentation's --kd
# Detection's --kd (distill/detection_task.py): dense score KD for kd, PKD on the FPN maps; no cwd.
DET_KD_CHOICES = ("none", "kd", "pkd", "bckd", "kd+bckd", "pkd+bckd")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
BCKD_CHOICES = {
    "teacher_fusion": ("identity", "normalized", "frozen"),
    "boundary_teacher": ("semantic", "conv", "trainable"),
    "boundary_student": ("head", "semantic"),
    "boundary_repr": ("pairwise", "pixel"),
    "polarity": ("boundary", "affinity"),
    "delta": ("sigmoid", "hard_ste"),
    "softmax_input": ("logit", "prob"),
    "relation": ("cosine", "dot"),
    "context_loss": ("kl", "mse"),
    "gamma_mode": ("epoch", "iter"),
    "balance": ("none", "grad"),
}


@dataclass(frozen=True)
class CheckpointMeta:
    model: str  # a preset name (see `bckd-pipeline models`)
    num_classes: int
    class_names: tuple[str, ...]
    ignore_index: int = 255
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    input_hw: tuple[int, int] | None = None  # the resize used in training, if any
    role: str = "student"
    dataset: str = ""
    extra: dict = field(default_factory=dict)
    # One RGB 0..255 per class when the training data gives them (a folder: dataset's classes file); None: the
    # project's palette (palette.py). A checkpoint without the entry reads back as None.
    class_colors: tuple[tuple[int, int, int], ...] | None = None
    # The task the model was trained for (tasks/: "segmentation", "detection"); a checkpoint without the entry
    # is a segmentation model.
    task: str = "segmentation"


TASK_NAMES = ("segmentation", "detection")  # tasks/TASKS' names, here so that configs need not import the tasks


@dataclass(frozen=True)
class DataConfig:
    """The training and evaluation data. Segmentation trains on random crops (``crop``) of images resized to
    ``resize``; detection trains on whole images resized to ``resize`` (a crop would cut boxes, so ``crop`` is
    refused), and ``skip_bad_annotations`` leaves bad boxes out with a count instead of stopping."""

    spec: str = "demo"
    task: str = "segmentation"  # what the labels are: label maps ("segmentation") or boxes ("detection")
    train_split: str = "train"
    eval_split: str = "val"
    resize: tuple[int, int] | None = None
    crop: tuple[int, int] | None = None
    scale_range: tuple[float, float] = (0.5, 2.0)
    demo_size: tuple[int, int] = (96, 128)
    demo_count: int | None = None
    skip_bad_annotations: bool = False

    def __post_init__(self):
        if self.task not in TASK_NAMES:
            raise unknown_name("--task", self.task, TASK_NAMES, "Pass --task segmentation or --task detection.")
        if self.task == "detection" and self.crop is not None:
            raise ConfigError(
                f"--crop {self.crop[0]},{self.crop[1]} was given with --task detection: a detector trains on whole "
                "images (a random crop would cut boxes). Drop --crop and set the input size with --resize H,W."
            )

    @property
    def is_detection(self) -> bool:
        return self.task == "detection"

    def train_set(self):
        if self.is_detection:
            from .data.detection_transforms import DetTrainTransform

            return self._detection_set(self.train_split, DetTrainTransform(resize=self.resize))
        from .data import build_dataset
        from .data.base import PAD_LABEL
        from .data.transforms import TrainTransform

        tf = TrainTransform(resize=self.resize, crop=self.crop, scale_range=self.scale_range, pad_label=PAD_LABEL)
        return build_dataset(self.spec, self.train_split, tf, demo_size=self.demo_size, demo_count=self.demo_count)

    def eval_set(self):
        if self.is_detection:
            from .data.detection_transforms import DetEvalTransform

            return self._detection_set(self.eval_split, DetEvalTransform(resize=self.resize))
        from .data import build_dataset
        from .data.transforms import EvalTransform

        tf = EvalTransform(resize=self.resize)
        return build_dataset(self.spec, self.eval_split, tf, demo_size=self.demo_size, demo_count=self.demo_count)

    def _detection_set(self, split: str, transform):
        from .data import build_detection_dataset

        return build_detection_dataset(
            self.spec,
            split,
            transform,
            skip_bad_annotations=self.skip_bad_annotations,
            demo_size=self.demo_size,
            demo_count=self.demo_count,
        )


@dataclass(frozen=True)
class Schedule:
    """--iters wins over --epochs; one of them is required."""

    iters: int | None = None
    epochs: int | None = None

    def resolve(self, dataset_size: int, batch_size: int) -> int:
        if self.iters:
            return self.iters
        if self.epochs:
            return epochs_to_iters(self.epochs, dataset_size, batch_size)
        raise ConfigError("Give --iters N or --epochs N.")


def epochs_to_iters(epochs: int, dataset_size: int, batch_size: int) -> int:
    """Iterations for ``epochs`` passes with drop_last batches."""
    return max(1, epochs * max(1, dataset_size // batch_size))


@dataclass(frozen=True)
class TrainConfig:
    iters: int = 1000
    batch_size: int = 8  # the global batch, split over processes under torchrun
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    poly_power: float = 0.9
    eval_every: int = 0  # 0: only at the end
    seed: int = 0
    num_workers: int = 2
    device: str = "cpu"
    precision: str = "auto"  # see distill/trainer.py resolve_precision: what auto picks on CUDA and on the CPU
    channels_last: bool = False
    compile: bool = False
    sync_bn: bool = False
    checkpoint_every: int = 500  # also at every evaluation; 0: only at evaluations

    def __post_init__(self):
        for name in ("iters", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}.")
        if self.lr <= 0:
            raise ConfigError(f"--lr must be > 0, got {self.lr}.")
        if self.precision not in PRECISIONS:
            raise ConfigError(
                f"--train-precision {self.precision!r} is not allowed. Allowed: {', '.join(PRECISIONS)}. "
                "auto picks bf16 on CUDA where supported, else fp16; on the CPU see docs/decisions.md."
            )
        on_cuda = self.device.startswith("cuda")
        if not on_cuda and self.precision == "fp16":
            raise ConfigError(
                "--train-precision fp16 needs --train-device cuda (fp16 autocast with loss scaling is for GPUs). "
                "Use --train-precision bf16, fp32 or auto on the CPU."
            )
        if not on_cuda and self.sync_bn:
            raise ConfigError("--sync-bn needs CUDA (PyTorch's SyncBatchNorm has no CPU kernel). Drop it on CPU.")


@dataclass(frozen=True)
class BCKDConfig:
    """Every knob of BCKD. Defaults are the ones the CamVid benchmark chose (docs/benchmarks.md).

    alpha, beta: Eq. (6) weights of L_b and L_c (paper: 10 and 50).
    boundary, context, decay: the ablation switches (Table I).
    grid_stride: the fused features live at 1/grid_stride of the input (spec §1: 8).
    fusion_dim: channels of each student stage after its 1x1 projection P_k.
    teacher_fusion: "identity" (resize + concat of the raw teacher stages), "normalized" (each stage
        L2-normalised per position before the concat, so every stage weighs the same in a cosine),
        or "frozen" (a fixed random projection to fusion_dim per stage; the relation then depends on
        the seed, and the cosines move: only worth it to save memory on very wide teachers).
    boundary_teacher: where B^t comes from. "semantic": the teacher's class probabilities
        (semantic_boundary); "conv": a frozen random Conv_{C->1} on F^t (the literal reading);
        "trainable": a Conv_{C->1} trained by L_b (MMRazor's behaviour; can collapse, spec §7.1).
    boundary_student: "head" is Eq. (2)'s Conv_{C->1} on the student's fused features F^s (trainable);
        "semantic" reads the student's own class probabilities like the teacher's (no head).
    boundary_repr: "pairwise" Eq. (2) over IRNet paths of ``radius``, or "pixel" (b itself).
    polarity, delta: boundary (max) or affinity (1 - max); sigmoid or hard threshold (STE).
    softmax_input: Eq. (3)'s softmax over the boundary "logit" (max-logit) or the "prob" B in [0,1].
    relation: "dot" is Eq. (4) as written (Psi_s conv+BN+ReLU, Psi_t non-affine BN+ReLU, 1/sqrt(C));
        "cosine" L2-normalises both sides and divides by relation_tau (CIRKD's form).
    context_loss: "kl" is Eq. (5); "mse" is SKD's pairwise form.
    context_pool: average-pool F before the relation (1 = exact, full grid).
    teacher_tau: teacher relation sharpening (SERE 0.5; paper silent, 1).
    gamma_mode: Eq. (7) stepped per epoch or continuous per iteration.
    temperature, temperature_factor, temperature_threshold, temperature_schedule: the T rule.
    chunk: rows per block of the exact chunked relation (memory bound, not a result knob).
    mask_padding: leave padded positions of a crop out of both terms (softmaxes and means).
    balance: "none" uses alpha and beta as given; "grad" replaces them by weights that make each
        term's gradient norm (at the student's deepest tapped stage) ``balance_boundary`` and
        ``balance_context`` times the cross-entropy's, averaged over the first ``balance_iters``
        iterations and then frozen (a fixed-ratio rule in the spirit of GradNorm, without its
        continual updates).
    """

    alpha: float = 10.0
    beta: float = 50.0
    boundary: bool = True
    context: bool = True
    decay: bool = True
    grid_stride: int = 8
    fusion_dim: int = 64
    teacher_fusion: str = "normalized"
    boundary_teacher: str = "semantic"
    boundary_student: str = "head"
    boundary_repr: str = "pairwise"
    radius: int = 5
    polarity: str = "boundary"
    delta: str = "sigmoid"
    softmax_input: str = "logit"
    relation: str = "cosine"
    relation_tau: float = 0.1
    context_loss: str = "kl"
    context_pool: int = 1
    teacher_tau: float = 1.0
    gamma_mode: str = "epoch"
    temperature: float = 1.0
    temperature_factor: float = 1.05
    temperature_threshold: float = 0.5
    temperature_schedule: bool = True
    chunk: int = 512
    seed: int = 0
    mask_padding: bool = True
    balance: str = "none"
    balance_boundary: float = 0.5
    balance_context: float = 0.5
    balance_iters: int = 50

    def __post_init__(self):
        for name, allowed in BCKD_CHOICES.items():
            value = getattr(self, name)
            if value not in allowed:
                raise ConfigError(
                    f"BCKD option {name}={value!r} is not allowed. Allowed: {', '.join(allowed)}. "
                    f"Pass --bckd {name}={allowed[0]} (for example)."
                )
        for name in ("grid_stride", "fusion_dim", "radius", "context_pool", "chunk", "balance_iters"):
            if getattr(self, name) < 1:
                raise ConfigError(f"BCKD option {name}={getattr(self, name)} must be a positive integer.")
        if self.temperature <= 0 or self.relation_tau <= 0 or self.teacher_tau <= 0:
            raise ConfigError("BCKD temperatures (temperature, relation_tau, teacher_tau) must be > 0.")
        if self.balance_boundary <= 0 or self.balance_context <= 0:
            raise ConfigError(
                f"balance_boundary={self.balance_boundary} and balance_context={self.balance_context} are target "
                "ratios of a term's gradient norm to the cross-entropy's; give positive numbers, e.g. 0.5."
            )
        self._refuse_silent_combinations()

    def _refuse_silent_combinations(self) -> None:
        """Option combinations that would silently do nothing, or break training, are refused."""
        if self.boundary and self.delta == "hard_ste" and self.softmax_input == "logit":
            raise ConfigError(
                "--bckd delta=hard_ste does nothing with softmax_input=logit: delta is applied to the boundary "
                "probability, and the logit form softmaxes the path max-logit directly. "
                "Add --bckd softmax_input=prob, or drop delta=hard_ste."
            )
        if self.boundary and self.delta == "hard_ste" and self.boundary_teacher == "semantic":
            raise ConfigError(
                "--bckd delta=hard_ste with boundary_teacher=semantic gives an all-zero teacher map: the "
                "semantic boundary probability of an edge is about 1/3, under hard_ste's 0.5 threshold. "
                "Use delta=sigmoid, or boundary_teacher=conv|trainable."
            )

    @classmethod
    def from_overrides(cls, overrides: dict[str, str], **base) -> BCKDConfig:
        """Build from ``key=value`` strings (the CLI's ``--bckd``), converting to each field's type."""
        types = {f.name: f.type for f in fields(cls)}
        values = dict(base)
        for key, raw in overrides.items():
            if key not in types:
                raise unknown_name("BCKD option", key, types, "Use --bckd KEY=VALUE with one of these keys.")
            kind = types[key]
            try:
                if kind == "bool":
                    if raw.lower() not in ("1", "0", "true", "false", "yes", "no"):
                        raise ValueError(raw)
                    values[key] = raw.lower() in ("1", "true", "yes")
                elif kind == "int":
                    values[key] = int(raw)
                elif kind == "float":
                    values[key] = float(raw)
                else:
                    values[key] = raw
            except ValueError:
                raise ConfigError(f"--bckd {key}={raw!r}: expected a {kind} value.") from None
        return cls(**values)


@dataclass(frozen=True)
class DistillConfig:
    """Which distillation terms, and their weights. ``kd`` is one of :data:`KD_CHOICES`.

    Logit KD: T = 1, weight 1 (the common segmentation setting). CWD: T = 1, weight 5, on the
    logits of the segmentation head's last conv at their native stride (before any upsampling), as
    published for PSPNet-R101 -> PSPNet-R18 on Cityscapes by the CWD authors
    (pppppM/mmsegmentation-distiller, configs/distiller/cwd/
    cwd_psp_r101-d8_distill_psp_r18_d8_512_1024_80k_cityscapes.py: tau 1.0, weight 5.0,
    ``decode_head.conv_seg``) and by MMRazor (configs/distill/mmseg/cwd/
    cwd_logits_pspnet_r101_d8_pspnet_r18_d8_512x1024_cityscapes_80k.py:
    ``ChannelWiseDivergence(tau=1, loss_weight=5)`` on ``decode_head.conv_seg``). The CWD authors'
    ADE20K configs use weight 10. BCKD: see :class:`BCKDConfig`.
    """

    kd: str = "kd+bckd"
    kd_temperature: float = 1.0
    kd_weight: float = 1.0
    cwd_temperature: float = 1.0
    cwd_weight: float = 5.0
    bckd: BCKDConfig = field(default_factory=BCKDConfig)

    def __post_init__(self):
        if self.kd not in KD_CHOICES and self.kd not in DET_KD_CHOICES:  # each task checks its own (task_models)
            raise unknown_name(
                "--kd method",
                self.kd,
                KD_CHOICES,
                "Pick one of them, e.g. --kd bckd (--task detection also takes pkd and pkd+bckd, not cwd).",
            )
        if "bckd" in self.terms and not self.bckd.boundary and not self.bckd.context:
            raise ConfigError(
                "--no-boundary and --no-context together leave BCKD with no term. "
                "Drop one of them, or use --kd kd (or --kd none) for a run without BCKD."
            )

    @property
    def terms(self) -> set[str]:
        return set() if self.kd == "none" else set(self.kd.split("+"))
