"""The config schema: one dataclass per section, validated in ``__post_init__``.

Every field has a docstring (the string literal under it) and is validated in ``__post_init__`` so a bad
value is refused when the config is loaded, naming the key and the allowed range, never mid-training.
Key names such as ``data.root`` or ``algo.threshold`` are a public contract used by presets, search spaces,
MLflow params and the docs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from typing import Any, get_type_hints

ARCHS = ("tiny", "plain4", "naive", "naive_t", "r10", "r18", "r34", "r50")
ALGOS = ("supervised", "fixmatch", "cmpl")
SCHEMES = ("cross", "self_first", "opposite_first", "maximum", "average")
BN_MODES = ("clean", "split", "concat", "separate")


class ConfigError(ValueError):
    """A config value or key was refused; the message names the key."""


def _check(cond: bool, key: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"{key}: {msg}")


BUILTIN_RESOURCES = ("CPU", "GPU", "memory", "object_store_memory")


def _check_resource_name(name: str, key: str) -> None:
    """A custom resource a node declares (``ray start --resources``): not a built-in one, not a node id."""
    _check(
        not name or (name.replace("_", "").replace("-", "").isalnum() and name not in BUILTIN_RESOURCES),
        key,
        f"must be empty or a custom resource name (letters, digits, _ or -; not {', '.join(BUILTIN_RESOURCES)}),"
        f" got {name!r}",
    )


def flip_pairs_problem(pairs: list[tuple[Any, Any]]) -> str:
    """Why the pairs of a flip label map are not a swap of disjoint pairs ('' if they are). A flip applied twice
    gives back the clip, so the label map must be its own inverse: a class in two different pairs would send two
    classes onto one label. A pair repeated (or written both ways) is the same swap; ``a:a`` is refused because
    every class already keeps its label, so it can only be a typo."""
    partner: dict[Any, Any] = {}
    for a, b in pairs:
        if a == b:
            return f"{a}:{b} maps a class to itself (unlisted classes keep their label); leave it out"
        for x, y in ((a, b), (b, a)):
            if partner.setdefault(x, y) != y:
                return (
                    f"{x} is paired with both {partner[x]} and {y}; each class may be in one pair only "
                    "(the map must be its own inverse)"
                )
    return ""


MAX_WIDTH = 16.0  # 16x a ResNet-50's channels is far past any GPU's memory; above it is a typo


def _channels_ok(width: float, base: int = 64) -> bool:
    # the narrowest stage of any arch has `base` channels before the multiplier (tiny: 16)
    return 0 < width <= MAX_WIDTH and round(base * width) >= 1


@dataclass
class ModelConfig:
    primary_arch: str = "r50"
    """Primary backbone F: one of tiny, r10, r18, r34, r50 (3D-ResNet of the paper's Table A4), plain4 (a
    4-layer 3x3x3 CNN, the architecture baseline of docs/recipe-study.md) or naive (4 x 3x3x3 conv + 1x2x2
    max-pool, the few-label floor of docs/fewlabel-floor.md) or naive_t (naive with 2x2x2 pools after blocks
    2-4: 1.4x cheaper)."""
    primary_width: float = 1.0
    """Channel width multiplier of the primary (1.0 = standard)."""
    aux_arch: str = "r50"
    """Auxiliary network A (paper default: r50 at width 1/4); "same" = the primary's arch and width with
    separate weights (Table 3, row 3)."""
    aux_width: float = 0.25
    """Channel width multiplier of the auxiliary (Table 3: 1/2, 1/4, 1/8)."""
    dropout: float = 0.5
    """Dropout before the linear classifier of both networks."""
    num_classes: int = 0
    """Number of classes; 0 = read from the classes.txt beside the labeled list."""

    def __post_init__(self) -> None:
        _check(self.primary_arch in ARCHS, "model.primary_arch", f"must be one of {ARCHS}, got {self.primary_arch!r}")
        _check(
            self.aux_arch in ARCHS + ("same",),
            "model.aux_arch",
            f"must be one of {ARCHS + ('same',)}, got {self.aux_arch!r}",
        )
        for key in ("primary_width", "aux_width"):
            base = 16 if getattr(self, key.replace("width", "arch")) in ("tiny", "plain4", "naive", "naive_t") else 64
            _check(
                _channels_ok(getattr(self, key), base),
                f"model.{key}",
                f"must be in (0, {MAX_WIDTH:g}] and give at least one channel ({base} x width >= 0.5), "
                f"got {getattr(self, key)}",
            )
        _check(0.0 <= self.dropout < 1.0, "model.dropout", f"must be in [0, 1), got {self.dropout}")
        _check(
            self.num_classes >= 0, "model.num_classes", f"must be >= 0 (0 = from classes.txt), got {self.num_classes}"
        )


@dataclass
class DataConfig:
    root: str = ""
    """Dataset root; list paths are relative to it. Local path or pyarrow URI (s3://, gs://)."""
    labeled_list: str = ""
    """List file (`relative/path label` per line) of labeled training videos."""
    unlabeled_list: str = ""
    """List file of unlabeled training videos (labels, when present, are only used for statistics)."""
    val_list: str = ""
    """List file of validation videos."""
    classes_file: str = ""
    """classes.txt mapping ids to names; empty = classes.txt beside the labeled list."""
    raw_clip_len: int = 64
    """Consecutive raw frames per training clip window (paper: 64)."""
    primary_stride: int = 8
    """Primary sampling stride s: it sees raw_clip_len / s frames (paper 8x8)."""
    aux_stride: int = 4
    """Auxiliary sampling stride (paper 16x4: a faster frame rate than the primary)."""
    time_offset: float = 10.0
    """t_s in seconds: max shift between the primary's and the auxiliary's windows (Table 5)."""
    crop_size: int = 224
    """Training/eval crop size in pixels; 0 = derived from the videos: their short side (probed from the
    labeled list at start) rounded down to a multiple of 8 and capped at data.max_crop, so a 64 px set is not
    shrunk to 40 px and a 96 px set is not wasted on a 40 px network input."""
    max_crop: int = 56
    """Cap of the derived crop (data.crop_size=0): compute grows with its square."""
    train_short_side: list[int] = field(default_factory=lambda: [256, 320])
    """Scale jitter range [min, max] of the short side for the standard (labeled) augmentation;
    [0, 0] = derived: [crop, round(crop x 8 / 7)] (the paper's 224 -> [256, 320] is milder than CPU crops need)."""
    test_short_side: int = 256
    """Short side the decoder resizes to for evaluation (paper: 256); 0 = derived: the crop size."""
    flip: bool = True
    """Random horizontal flip (p = 0.5) of the labeled view, one draw per video shared by both networks' clips.
    Turn it off for classes a mirror image changes (left/right motion, clockwise/anticlockwise turns), or name
    the pairs in ``data.flip_label_map``."""
    flip_label_map: str = ""
    """Classes swapped when a labeled clip is flipped, as ``a:b,c:d`` (class names from classes.txt or ids),
    mmaction2's ``flip_label_map`` for Something-Something; e.g. ``right:left,orbit_cw:orbit_ccw``."""
    weak_flip: bool = False
    """Random horizontal flip in the weak (teacher) view; the paper uses a centre crop only."""
    randaug_n: int = 2
    """RandAugment: number of ops per clip in the strong view."""
    randaug_m: int = 10
    """RandAugment magnitude in [0, 30] (FixMatch-style strong view)."""
    cutout: float = 0.5
    """Cutout square side as a fraction of the crop (0 disables)."""
    cutout_uniform: bool = False
    """Draw each strong clip's Cutout side uniformly in [0, cutout] (TorchSSL/USB's FixMatch) instead of always
    ``cutout`` (FixMatch-pytorch). Measured on 3 splits: the milder uniform Cutout cost CMPL's auxiliary 8-14
    points of top-1 and CMPL's primary 1-10, with FixMatch unchanged on average (docs/fewlabel-cpu-study.md)."""
    eval_clips: int = 10
    """Uniformly spaced temporal clips per validation video (paper: 10)."""
    eval_crops: int = 3
    """Spatial crops per clip at evaluation (paper: 3)."""
    decode_actors: int = 2
    """Size of the Ray Data actor pool that decodes and augments."""
    decode_batch: int = 4
    """Videos per Ray Data map_batches call."""
    decode_timeout_s: float = 30.0
    """A video whose decode takes longer is skipped and counted."""
    cpus_per_decoder: float = 1.0
    """CPUs reserved by each decode actor."""
    decode_resource: str = ""
    """A custom Ray resource that each decode actor asks a share (0.01) of, so decoding runs only on nodes that
    declare it: ``cluster.yaml``'s CPU-only ``decode`` node type declares ``decode: 1``, and the autoscaler adds
    such a node when decode actors wait for it (docs/cluster.md). Empty: any node with free CPUs."""
    val_decode: str = "auto"
    """Who decodes the training-time evaluation: ``worker`` (each Train worker decodes its share of the val list
    in threads, as PySlowFast's loaders do: no start-up per evaluation), ``ray_data`` (a Ray Data actor pool
    per evaluation, spread over the cluster: for long val lists) or ``auto`` (``worker`` up to 256 videos per
    worker). Same clips and numbers either way."""

    def __post_init__(self) -> None:
        _check(self.raw_clip_len >= 1, "data.raw_clip_len", f"must be >= 1, got {self.raw_clip_len}")
        for key in ("primary_stride", "aux_stride"):
            s = getattr(self, key)
            _check(
                isinstance(s, int) and s >= 1 and self.raw_clip_len % s == 0,
                f"data.{key}",
                f"must be a positive divisor of data.raw_clip_len={self.raw_clip_len}, got {s}",
            )
        _check(self.time_offset >= 0, "data.time_offset", f"must be >= 0 seconds, got {self.time_offset}")
        _check(
            self.crop_size == 0 or self.crop_size >= 8,
            "data.crop_size",
            f"must be >= 8 (or 0 = derived from the videos), got {self.crop_size}",
        )
        _check(self.max_crop >= 8, "data.max_crop", f"must be >= 8, got {self.max_crop}")
        ss = self.train_short_side
        _check(
            isinstance(ss, list) and len(ss) == 2 and (ss == [0, 0] or ss[0] <= ss[1] and ss[0] >= self.crop_size),
            "data.train_short_side",
            f"must be [min, max] with data.crop_size={self.crop_size} <= min <= max, or [0, 0] = derived, got {ss}",
        )
        _check(
            self.test_short_side == 0 or self.test_short_side >= self.crop_size,
            "data.test_short_side",
            f"must be >= data.crop_size={self.crop_size} (or 0 = derived), got {self.test_short_side}",
        )
        _check(ss == [0, 0] or ss[0] > 0, "data.train_short_side", f"must be positive or [0, 0], got {ss}")
        _check(
            all(len(p.split(":")) == 2 and all(x.strip() for x in p.split(":")) for p in self.flip_label_map.split(","))
            if self.flip_label_map
            else True,
            "data.flip_label_map",
            f"must look like a:b,c:d (class names or ids), got {self.flip_label_map!r}",
        )
        problem = flip_pairs_problem(
            [tuple(x.strip() for x in p.split(":")) for p in self.flip_label_map.split(",")]
            if self.flip_label_map
            else []
        )
        _check(not problem, "data.flip_label_map", f"{problem}, got {self.flip_label_map!r}")
        _check(
            not (self.flip_label_map and not self.flip),
            "data.flip_label_map",
            "is set but data.flip=false: no clip is flipped, so the map would never apply",
        )
        _check(
            not (self.weak_flip and (not self.flip or self.flip_label_map)),
            "data.weak_flip",
            "cannot flip unlabeled clips when labeled flips are off or remap labels (pseudo-labels would be "
            "mirrored too); set data.weak_flip=false",
        )
        _check(0 <= self.randaug_n <= 14, "data.randaug_n", f"must be in [0, 14], got {self.randaug_n}")
        _check(0 <= self.randaug_m <= 30, "data.randaug_m", f"must be in [0, 30], got {self.randaug_m}")
        _check(0.0 <= self.cutout < 1.0, "data.cutout", f"must be in [0, 1), got {self.cutout}")
        _check(self.eval_clips >= 1, "data.eval_clips", f"must be >= 1, got {self.eval_clips}")
        _check(self.eval_crops in (1, 3), "data.eval_crops", f"must be 1 or 3, got {self.eval_crops}")
        _check(self.decode_actors >= 1, "data.decode_actors", f"must be >= 1, got {self.decode_actors}")
        _check(self.decode_batch >= 1, "data.decode_batch", f"must be >= 1, got {self.decode_batch}")
        _check(self.decode_timeout_s > 0, "data.decode_timeout_s", f"must be > 0, got {self.decode_timeout_s}")
        _check(self.cpus_per_decoder > 0, "data.cpus_per_decoder", f"must be > 0, got {self.cpus_per_decoder}")
        _check_resource_name(self.decode_resource, "data.decode_resource")
        _check(
            self.val_decode in ("auto", "worker", "ray_data"),
            "data.val_decode",
            f"must be auto, worker or ray_data, got {self.val_decode!r}",
        )


@dataclass
class AlgoConfig:
    name: str = "cmpl"
    """supervised (primary, labels only) | fixmatch (primary, Eq. 1) | cmpl (both networks, Eq. 6)."""
    scheme: str = "cross"
    """Pseudo-label scheme (Appendix A): cross | self_first | opposite_first | maximum | average."""
    threshold: float = 0.9
    """Confidence threshold tau in (0, 1] for keeping a pseudo-label."""
    lambda_u: float = 5.0
    """Weight lambda of the unsupervised losses (paper: 5 for 1%, 2 for 10% labels)."""
    unlabeled_ratio: int = 5
    """B_u / B_l: unlabeled clips per labeled clip in each step (paper: 10/2 = 5)."""
    aux_supervised: bool = True
    """Keep L_s^A, the auxiliary's supervised loss (Table 6)."""
    aux_unsupervised: bool = True
    """Keep L_u^A, the auxiliary's loss on the primary's pseudo-labels (Table 6)."""
    unsup_warmup_epochs: float = 0.0
    """Linear ramp of lambda from 0 over this many epochs: pseudo-labels of an untrained net are noise."""
    bn_mode: str = "clean"
    """BatchNorm statistics: concat = one forward per network over labeled+weak+strong clips (shared
    batch statistics, FixMatch's choice); separate = one forward per view; clean = one forward over
    labeled+weak, then the strong views with their own batch statistics kept out of the running averages
    (evaluation then normalises with statistics of un-distorted clips); split = as clean, but the weak views
    run under no_grad on their own and the labeled clips on theirs (no backward pass over the weak rows)."""

    def __post_init__(self) -> None:
        _check(self.name in ALGOS, "algo.name", f"must be one of {ALGOS}, got {self.name!r}")
        _check(self.scheme in SCHEMES, "algo.scheme", f"must be one of {SCHEMES}, got {self.scheme!r}")
        _check(0.0 < self.threshold <= 1.0, "algo.threshold", f"must be in (0, 1], got {self.threshold}")
        _check(self.lambda_u >= 0.0, "algo.lambda_u", f"must be >= 0, got {self.lambda_u}")
        _check(
            isinstance(self.unlabeled_ratio, int) and self.unlabeled_ratio >= 1,
            "algo.unlabeled_ratio",
            f"must be a positive int, got {self.unlabeled_ratio}",
        )
        _check(
            self.unsup_warmup_epochs >= 0, "algo.unsup_warmup_epochs", f"must be >= 0, got {self.unsup_warmup_epochs}"
        )
        _check(self.bn_mode in BN_MODES, "algo.bn_mode", f"must be one of {BN_MODES}, got {self.bn_mode!r}")


@dataclass
class OptimConfig:
    lr: float = 0.1
    """Peak learning rate for the whole job's batch (paper: 0.1 for 16 GPUs x (2+10) clips)."""
    momentum: float = 0.9
    """SGD momentum."""
    weight_decay: float = 1e-4
    """SGD weight decay (paper: 1e-4 Kinetics, 1e-3 UCF-101)."""
    nesterov: bool = False
    """Nesterov momentum."""
    warmup_epochs: float = 0.0
    """Linear learning-rate warm-up before the cosine decay."""
    grad_clip: float = 0.0
    """Clip the global gradient norm to this value (0 = off)."""
    decay_norm_bias: bool = True
    """Apply weight decay to BatchNorm weights and biases too (false: decay only conv/linear weights)."""

    def __post_init__(self) -> None:
        _check(self.lr > 0, "optim.lr", f"must be > 0, got {self.lr}")
        _check(0 <= self.momentum < 1, "optim.momentum", f"must be in [0, 1), got {self.momentum}")
        _check(self.weight_decay >= 0, "optim.weight_decay", f"must be >= 0, got {self.weight_decay}")
        _check(self.warmup_epochs >= 0, "optim.warmup_epochs", f"must be >= 0, got {self.warmup_epochs}")
        _check(self.grad_clip >= 0, "optim.grad_clip", f"must be >= 0 (0 = off), got {self.grad_clip}")


@dataclass
class TrainConfig:
    epochs: int = 200
    """Training epochs (one epoch = one pass over the unlabeled set, or steps_per_epoch steps)."""
    batch_labeled: int = 2
    """B_l: labeled clips per worker per step (B_u = algo.unlabeled_ratio x B_l)."""
    steps_per_epoch: int = 0
    """Steps per epoch; > 0 fixes the run's length whatever train.passes says (smoke tests:
    ``--set train.steps_per_epoch=2`` on any preset). 0 = derived from the data: with train.passes > 0 the run's
    total steps (below) split evenly over train.epochs, else one pass over the unlabeled set,
    len(unlabeled) // (B_u x workers) (for supervised without an unlabeled list, len(labeled) // (B_l x workers))."""
    passes: float = 0.0
    """Size the run from the data: total steps = max(train.min_steps, passes x (labeled + unlabeled videos) /
    (B_l + B_u) / workers), the same for every algorithm on a split; an epoch is then 1/epochs of the run (a
    report, evaluation and checkpoint round), so warm-ups in epochs are fractions of the run. 0 = off."""
    min_steps: int = 0
    """With train.passes: at least this many steps, whatever the data size (a small set still needs the
    optimiser to leave its starting plateau; see docs/recipe-study.md)."""
    num_workers: int = 1
    """Ray Train workers (one per GPU on a cluster)."""
    use_gpu: bool = False
    """Give each worker a GPU (NCCL backend); CPU workers use gloo."""
    cpus_per_worker: float = 1.0
    """CPUs reserved by each training worker; leave the rest to Ray Data decoding."""
    worker_resource: str = ""
    """A custom Ray resource that each training worker asks one unit of, so workers run only on nodes that
    declare it (``cluster.yaml``'s GPU node type declares ``trainer: <GPUs>``): decoding cannot take the trainer
    nodes' CPUs first. Empty: any node with the CPUs (and GPU)."""
    amp: str = "none"
    """Mixed precision on GPU: none | bf16 | fp16 (fp16 uses a GradScaler)."""
    channels_last: bool = True
    """Use channels_last_3d memory format on GPU."""
    aux_stream: bool = False
    """CMPL on GPU: queue the auxiliary's forward/backward on a second CUDA stream so its small kernels overlap
    the primary's (``scripts/bench_gpu.py --aux-variants aux_stream`` measures it). Same math; ignored
    on CPU."""
    seed: int = 0
    """Global seed: weights, sampling and augmentation are reproducible for a seed."""
    eval_every: int = 1
    """Evaluate every N epochs (and always at the end)."""
    log_every: int = 10
    """Print progress and log step metrics every N steps."""
    max_bad_steps: int = 5
    """Stop with an error after this many consecutive non-finite losses (each is skipped)."""
    threads_per_worker: int = 0
    """torch intra-op threads per worker on CPU (0 = cpus_per_worker)."""
    ema_decay: float = 0.0
    """Evaluate (and export) an exponential moving average of both networks' weights with this decay
    (warmed up as min(decay, (1+n)/(10+n)) over n steps); 0 = evaluate the live weights. Pseudo-labels always
    come from the live networks."""

    def __post_init__(self) -> None:
        _check(self.epochs >= 1, "train.epochs", f"must be >= 1, got {self.epochs}")
        _check(self.batch_labeled >= 1, "train.batch_labeled", f"must be >= 1, got {self.batch_labeled}")
        _check(self.steps_per_epoch >= 0, "train.steps_per_epoch", f"must be >= 0, got {self.steps_per_epoch}")
        _check(self.passes >= 0, "train.passes", f"must be >= 0 (0 = off), got {self.passes}")
        _check(self.min_steps >= 0, "train.min_steps", f"must be >= 0, got {self.min_steps}")
        _check(
            not (self.min_steps and not self.passes),
            "train.min_steps",
            "only applies with train.passes > 0; set train.passes too",
        )
        _check(self.num_workers >= 1, "train.num_workers", f"must be >= 1, got {self.num_workers}")
        _check(self.cpus_per_worker > 0, "train.cpus_per_worker", f"must be > 0, got {self.cpus_per_worker}")
        _check_resource_name(self.worker_resource, "train.worker_resource")
        _check(self.amp in ("none", "bf16", "fp16"), "train.amp", f"must be none, bf16 or fp16, got {self.amp!r}")
        _check(self.eval_every >= 1, "train.eval_every", f"must be >= 1, got {self.eval_every}")
        _check(self.log_every >= 1, "train.log_every", f"must be >= 1, got {self.log_every}")
        _check(self.max_bad_steps >= 1, "train.max_bad_steps", f"must be >= 1, got {self.max_bad_steps}")
        _check(self.threads_per_worker >= 0, "train.threads_per_worker", f"must be >= 0, got {self.threads_per_worker}")
        _check(0.0 <= self.ema_decay < 1.0, "train.ema_decay", f"must be in [0, 1) (0 = off), got {self.ema_decay}")


@dataclass
class RunConfig:
    name: str = "cmpl"
    """Run name: re-running with the same name and storage_path resumes from its latest checkpoint, but only
    when the config is the same (cmpl_ray/train/identity.py); a changed config is refused (exit 2) naming the
    keys that differ: choose another name, or pass ``--fresh`` to start this one over."""
    output_dir: str = "outputs/cmpl"
    """Local directory for metrics.json, per-class CSVs and plots."""
    storage_path: str = ""
    """Ray Train storage for checkpoints (local dir or s3://, gs://; shared storage on a cluster);
    empty = <output_dir>/../ray_results absolute path."""
    keep_checkpoints: int = 2
    """Best-k checkpoints kept by validation top-1 (the latest is always kept too)."""
    max_failures: int = 2
    """Worker failures Ray Train recovers from (restart from the latest checkpoint)."""
    resume: str = ""
    """Continue from this checkpoint directory (weights, optimizer, epoch) in this run; refused when the
    checkpoint was trained with another config (its fingerprint differs)."""

    def __post_init__(self) -> None:
        _check(
            bool(self.name) and "/" not in self.name,
            "run.name",
            f"must be a non-empty name without '/', got {self.name!r}",
        )
        _check(bool(self.output_dir), "run.output_dir", "must not be empty")
        _check(self.keep_checkpoints >= 1, "run.keep_checkpoints", f"must be >= 1, got {self.keep_checkpoints}")
        _check(self.max_failures >= -1, "run.max_failures", f"must be >= -1 (-1 = infinite), got {self.max_failures}")


@dataclass
class TrackingConfig:
    enabled: bool = True
    """Log to MLflow (rank 0 only)."""
    uri: str = ""
    """Tracking URI; empty = $MLFLOW_TRACKING_URI or sqlite:///mlflow.db in the working directory."""
    experiment: str = "cmpl-ray"
    """MLflow experiment name."""
    log_checkpoint: bool = True
    """Upload the best checkpoint folder (both networks, optimizer: what ``eval`` and a resume read) as MLflow
    artifacts at the end."""
    log_model: bool = True
    """Log the best checkpoint's primary network as an MLflow PyTorch model ``primary`` (signature, input
    example; ``cmpl-ray predict runs:/<run_id>/primary``): what the UI lists as the run's model."""
    register_as: str = ""
    """Register that model in the MLflow model registry under this name (a new version per run); empty = do not
    register. MLflow refuses names with '/' or ':'."""

    def __post_init__(self) -> None:
        _check(bool(self.experiment), "tracking.experiment", "must not be empty")
        name = self.register_as
        _check(
            name == name.strip() and "/" not in name and ":" not in name and name not in (".", ".."),
            "tracking.register_as",
            f"must be a model name without '/', ':' or surrounding spaces, got {name!r}",
        )
        _check(
            not name or self.log_model,
            "tracking.register_as",
            "registers the logged model: needs tracking.log_model=true",
        )


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    run: RunConfig = field(default_factory=RunConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def flat(self) -> dict[str, Any]:
        """`{"algo.threshold": 0.9, ...}`: MLflow params, Tune spaces and reports use these keys."""
        return {f"{s}.{k}": v for s, sec in self.to_dict().items() for k, v in sec.items()}

    def aux_spec(self) -> tuple[str, float]:
        """(arch, width) of the auxiliary network, resolving aux_arch='same'."""
        if self.model.aux_arch == "same":
            return self.model.primary_arch, self.model.primary_width
        return self.model.aux_arch, self.model.aux_width

    @property
    def uses_aux(self) -> bool:
        return self.algo.name == "cmpl"


SECTIONS: dict[str, type] = {f.name: get_type_hints(Config)[f.name] for f in fields(Config)}
