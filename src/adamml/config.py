"""Experiment configuration, the schema: the YAML sections as typed dataclasses.

A config has three sections, ``data``, ``model`` and ``train`` (runtime settings, then one
section per stage of the recipe: ``unimodal``, ``fusion``, ``adamml``). Every field has a
default, the paper's setting where the paper gives one, so a YAML file only says what differs.

This module is the bottom of the package: every layer reads its dataclasses, so it imports
nothing of the package but ``errors`` (and no torch). Turning plain data into a config
(``config_from_dict``, with the upgrade of the earlier flat layout) is here; finding and
reading files, ``base:``, ``key.sub=value`` overrides and the check of every name against the
data, modality and model tables are in :mod:`adamml.config_files`, above those tables.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from adamml.errors import AdamMLError

# The names a config may use where no table elsewhere holds them.
DATA_FORMATS = ("folder", "csv", "list")  # data.dataset for own data: the layout is detected
PRECISIONS = ("auto", "32", "bf16", "16")
SPECTROGRAMS = ("linear", "mel")
EVAL_POSITIONS = ("linspace", "centre")  # where test clips start
TRAIN_CROPS = ("reference", "zoom")  # how training crops are drawn
STACK_NORMS = ("adamml", "reference")  # flow and RGB-difference values
INFLATIONS = ("rescaled", "reference")  # RGB first-conv kernels for other inputs
POLICY_JOINTS = ("adamml", "reference")  # the policy head over its extractors' features
POLICY_ALLOCATIONS = ("threshold", "quota")  # how a budget fit shares out the spend (models/thresholds.py)
LOSSES = ("ce", "bce")  # train.loss
CROPS = ("shared", "independent")  # data.clip.crops: one crop for every visual input, or one each
AUDIO_WINDOWS = ("clip", "centre")  # train.unimodal.audio_window: where stage 1 draws an audio window
FROZEN_MODES = ("eval", "train")  # train.adamml.frozen_mode: the frozen side's batch norm and dropout
VAL_DECISIONS = ("argmax", "sampled")  # train.adamml.val_decisions: the policy's decisions at validation


# ---- how videos become tensors (data.decode, data.clip): read by data, modalities and models --


@dataclass
class DecodeSettings:
    """How a video is decoded before anything else happens to it.

    Frames are resampled to ``fps`` (None: kept at the source's rate) and resized so their
    short side is ``short_side``; audio is downmixed to mono and resampled to ``sample_rate``.
    """

    fps: float | None = 25.0  # None: the source's own frame rate (every frame, as the reference)
    short_side: int = 256
    sample_rate: int = 24_000
    flow: str | None = None  # None, "tvl1" or "dis": which optical flow to compute and cache
    strict_audio: bool = False  # a missing audio track is an error instead of a warning


@dataclass
class ClipSettings:
    """How a decoded video becomes model input: segments, frames per segment, sizes.

    Defaults are the paper's (docs/method.md): 8 frames at stride 4 per segment, 224x224
    crops, 5 stacked flow fields, a 1.28 s log spectrogram window (n_fft 511 -> 256 bins,
    10 ms Hann window, 5 ms hop at 24 kHz).
    """

    num_segments: int = 5
    frames_per_segment: int = 8
    frame_stride: int = 4
    stack_length: int = 5  # flow fields / frame differences stacked per frame position
    crop_size: int = 224
    audio_window_s: float = 1.28
    n_fft: int = 511
    win_ms: float = 10.0
    hop_ms: float = 5.0
    spectrogram: str = "linear"  # "linear" (the paper's) or "mel"
    n_mels: int = 128
    audio_frames: int | None = 256  # crop/pad the spectrogram's time axis to this many frames
    # Where test clips start: "linspace" (the reference: linspace(0, last start, K), first
    # and last clip at the ends) or "centre" (the centre of each of K equal segments).
    eval_positions: str = "linspace"
    # Training crop: "reference" (frame resized to a random short side in [256, 320] for a
    # 224 crop, i.e. a square of short * 224/U(256, 320), then a random crop and a flip) or
    # "zoom" (a square of crop_size * U(0.8, 1.25), a random crop and a flip).
    train_crop: str = "reference"
    # Mirror training crops with p=0.5; off where a mirror changes the class (digits, text,
    # "swiping left" vs "right").
    train_flip: bool = True
    # Flow and RGB-difference values: "adamml" (flow / 20 px in [-1, 1], scaled with the
    # crop's resize; differences of [0, 1] pixels / ImageNet std) or "reference" (the
    # reference code's image normalisation, so its checkpoints can be loaded).
    stack_norm: str = "adamml"
    # Training crops of the visual inputs (RGB, flow, RGB difference): "shared" (one crop and
    # flip for all, so they show the same region) or "independent" (each input its own, as
    # the reference's per-modality augmentors draw them). Evaluation crops are centred either way.
    crops: str = "shared"

    @property
    def segment_span(self) -> int:
        """Number of consecutive decoded frames one segment covers (including the stack)."""
        return (self.frames_per_segment - 1) * self.frame_stride + self.stack_length + 1


@dataclass
class DataConfig:
    dataset: str = "folder"  # a name from adamml.data.catalog, or "folder"/"csv"/"list"
    root: str = ""
    train_split: str = "train"
    val_split: str = "val"
    cache: str | None = None  # None: <root>/cache
    use_cache: bool = True  # False: decode straight from the video files
    num_workers: int = 0
    multi_label: bool = False
    # top1 | mAP: the headline of the tables and the score checkpoints are selected by
    # (None: the catalogue's metric for its datasets, else mAP for multi-label sets, top1)
    metric: str | None = None
    decode: DecodeSettings = field(default_factory=DecodeSettings)
    clip: ClipSettings = field(default_factory=ClipSettings)
    eval_segments: int | None = None  # segments at test time (the reference uses 10 clips)


@dataclass
class PolicyConfig:
    """The light network that decides, per segment, which modalities to run (docs/method.md;
    reference ``models/policy_net.py``)."""

    backbone: str = "mobilenet_v2"
    width_mult: float = 1.0
    # Keep only the visual extractor's first N feature blocks (None: all). At a few dozen
    # pixels a full MobileNetV2 shrinks the frame to 1x1 halfway through and, trained from
    # scratch, learns slowly; its first blocks see occlusion and object type well and cost less.
    blocks: int | None = None
    frames: int = 4  # RGB frames per segment it looks at (every other of the clip's frames)
    resolution: int = 160
    joint_dim: int = 2048  # the MLP over concatenated per-modality features
    hidden_size: int = 256  # LSTM cell
    flow_proxy: str = "rgbdiff"  # what the policy looks at to decide about flow
    # Backbone of the audio extractor (None: the audio sub-network's, so it can start from
    # the stage-1 audio network; the reference uses an ImageNet MobileNetV2 of its own).
    audio_backbone: str | None = None
    # Keep only the audio extractor's first N blocks (None: all). A cut copy of the stage-1
    # audio network hears what that network learned at a fraction of its cost.
    audio_blocks: int | None = None
    # Weights each extractor starts from: one source for all, or {source: weights}; a source
    # is a local file, imagenet:efficientnet_lite0 or torchvision:<model>.<weights> (the
    # reference: ImageNet for all).
    pretrained: dict[str, str] | str = field(default_factory=dict)
    # The head over the extractors' features: "adamml" (per-source LayerNorm and projection,
    # summed; LayerNorm before the LSTM) or "reference" (concatenation -> Linear -> ReLU ->
    # Linear -> ReLU -> LSTMCell, as the reference; its checkpoints import into it)
    joint: str = "adamml"
    # How a budget's spend is shared out when thresholds are fitted to it: "threshold" (the
    # paper: each decision alone, one threshold per modality over all videos) or "quota"
    # (every video also gets its round(rate x K) best-ranked segments of each modality,
    # thresholds share out the rest; adamml.models.thresholds). A quota needs the whole
    # video's margins: a live stream decides each segment as it comes, by thresholds only.
    allocation: str = "threshold"


@dataclass
class ModelConfig:
    modalities: list[str] = field(default_factory=lambda: ["rgb", "audio"])
    # modality -> backbone name from adamml.models.backbones.BACKBONES
    backbones: dict[str, str] = field(
        default_factory=lambda: {"rgb": "resnet50", "audio": "mobilenet_v2"}
    )
    num_classes: int = 31
    temporal_pool: bool = True  # TSN-like max pooling over time between ResNet stages
    dropout: float = 0.5
    fusion: str = "weighted"  # average | weighted | classwise | fc
    # normalised: weights renormalised over the modalities that ran, empty segments left out
    # of the mean; reference: sum_m w_m u_m logits_m, every segment in the mean (the paper's)
    fusion_mode: str = "normalised"
    # modality -> weights source: a local file, imagenet:efficientnet_lite0 or
    # torchvision:<model>.<weights> (e.g. torchvision:resnet50.IMAGENET1K_V1, torch's hub cache)
    pretrained: dict[str, str] = field(default_factory=dict)
    # How RGB first-conv weights become flow / RGB-difference / spectrogram kernels: "rescaled"
    # (the mean over RGB times 3 / channels: activations keep their size) or "reference" (the
    # plain mean, as the reference code)
    inflation: str = "rescaled"
    policy: PolicyConfig = field(default_factory=PolicyConfig)


@dataclass
class UnimodalTrainConfig:
    """Stage 1: each modality's recognition network trained alone (SGD, as the reference's ``train_unimodal.py``)."""

    epochs: int = 60  # with patience: the cap
    lr: float = 0.01
    # modality -> its own rate where it differs from ``lr`` (an ImageNet-initialised network
    # wants a smaller one than a network trained from scratch)
    modality_lr: dict[str, float] = field(default_factory=dict)
    lr_steps: list[int] = field(default_factory=lambda: [20, 40, 50])  # multistep LR, x0.1
    # Stop when the validation score has not improved for this many epochs (0: never; run
    # `epochs`), counted once the top-1 is above twice chance (a network from scratch may sit
    # at chance for a while). A fixed count fits one dataset; a plateau says when it learned.
    # A plateau before the last of lr_steps takes the next step early instead of stopping.
    patience: int = 0
    # clips per training video: 1 as the reference (None: data.clip.num_segments)
    train_segments: int | None = 1
    # Where a training clip's audio window is drawn for the stage-1 audio network: "clip" (at
    # the centre of the clip sampled as for any modality) or "centre" (near the video's
    # centre, as the reference's released audio command samples it: the window's centre
    # uniform in the middle eighth of the video, or of each of the clips' equal parts)
    audio_window: str = "clip"
    # clips per validation video in stage 1 (None: data.eval_segments, the test clips). 1 is
    # the reference's --num_clips 1: with linspace test positions RGB and flow at the video's
    # first frame; the audio network with audio_window "centre" hears the video's centre.
    val_segments: int | None = None

    def lr_for(self, modality: str) -> float:
        """A modality's base rate: ``modality_lr`` where it names one, else ``lr``."""
        return float(self.modality_lr.get(modality, self.lr))


@dataclass
class FusionTrainConfig:
    """Stage 2: the stage-1 networks joined by a fusion head, trained together (SGD)."""

    epochs: int = 10
    lr: float = 0.001  # the recognition networks, already trained
    head_lr: float = 0.01  # the new fusion head


@dataclass
class AdamMLTrainConfig:
    """Stage 3: policy and recognition networks (reference ``train_adamml.py``).

    Warm-up with the policy frozen, then ``epochs`` alternating epochs (recognition networks,
    then policy, the other frozen), then a fine-tune with the policy fixed.
    """

    warmup_epochs: int = 5
    epochs: int = 20  # alternating epochs
    finetune_epochs: int = 10
    alternate_every: int = 1  # epochs of each turn (recognition, then policy) when alternating
    lr: float = 0.001  # recognition networks (SGD)
    head_lr: float = 0.01  # the fusion head's weights
    lr_steps: list[int] = field(default_factory=lambda: [10, 15])  # of the alternating epochs
    policy_lr: float = 0.01  # Adam
    policy_extractor_lr_scale: float = 0.1  # the policy's CNN feature extractors learn slower
    policy_pretrain_epochs: int = 0  # classify with the policy's own extractors first (see stages)
    policy_pretrain_lr: float = 0.003  # Adam
    temperature: float = 5.0  # Gumbel-Softmax temperature at the start ...
    temperature_decay: float = 0.965  # ... multiplied by this after each alternating epoch
    cost_weights: dict[str, float] = field(default_factory=lambda: {"rgb": 1.0, "audio": 0.05})
    # Weight of the policy's guidance loss (not in the paper; 0: off): while the policy trains,
    # each "use" probability is also pulled toward how much that segment's own prediction tells
    # about the label (training/loss.py, guidance_loss), so it ranks the segments that matter.
    guidance: float = 0.0
    gamma: float = 10.0  # the efficiency loss of a wrong prediction (the paper's gamma)
    # Target GFLOPs as a fraction of weighted fusion's (adamml train --budget): the cost
    # weights are then adapted while the policy trains (training/budget.py) instead of
    # `cost_weights`, and the kept checkpoint is the most accurate one within the budget.
    budget: float | None = None
    # Dual-ascent step on the budget's multiplier per policy step: larger reacts faster and
    # overshoots more (the policy's selection lags its cost weights by about an epoch).
    budget_step: float = 0.05
    # With a budget: after each validated policy epoch, move the policy's use thresholds so
    # that its cost on the validation split is the budget (they fit on the policy's outputs
    # alone, no labels; training/budget.py). Off: the argmax, wherever it lands.
    calibrate: bool = True
    # The frozen side's batch norm and dropout while the other side trains: "eval" (no dropout
    # noise, batch-norm statistics fixed with the weights) or "train" (as the reference, which
    # only switches requires_grad off: statistics keep moving, dropout stays on)
    frozen_mode: str = "eval"
    # The policy's decisions when an epoch is validated: "argmax" (deterministic) or "sampled"
    # (one seeded Gumbel draw per segment, as the reference validates; a run trained to a
    # budget validates at its fitted thresholds, which are deterministic, either way)
    val_decisions: str = "argmax"


@dataclass
class TrainConfig:
    """Runtime settings shared by every stage, and one section per stage."""

    seed: int = 0
    # The global batch (the reference's -b), split evenly over the processes of a torchrun
    batch_size: int = 8
    sync_bn: bool = False  # batch-norm statistics over all processes (the paper's configs: on)
    output_dir: str | None = None  # None: runs/<name>
    # ce: cross-entropy, on multi-label sets against the labels as a uniform distribution (the
    # reference, every dataset); bce: binary cross-entropy per class (multi-label sets only)
    loss: str = "ce"
    momentum: float = 0.9  # every stage's SGD
    weight_decay: float = 1e-4  # every stage's SGD and the policy's Adam
    precision: str = "auto"  # PRECISIONS: auto | 32 | bf16 | 16 (mixed precision on GPU)
    eval_every: int = 1  # validate every N epochs (0: only at the end of each stage)
    progress: bool = True
    # TensorBoard scalars beside log.csv: None when tensorboard is installed, true requires it
    # (pip install 'adamml[tensorboard]'), false never
    tensorboard: bool | None = None
    max_steps_per_epoch: int | None = None
    # Train in oneDNN's preferred layout: on a CPU, small depthwise networks (EfficientNet-Lite0
    # at 64x64) train 1.5-2x faster (docs/own-data.md); same function, other rounding
    channels_last: bool = False
    unimodal: UnimodalTrainConfig = field(default_factory=UnimodalTrainConfig)
    fusion: FusionTrainConfig = field(default_factory=FusionTrainConfig)
    adamml: AdamMLTrainConfig = field(default_factory=AdamMLTrainConfig)


@dataclass
class ExperimentConfig:
    name: str = "experiment"
    description: str = ""
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        if self.train.output_dir is None:
            self.train.output_dir = f"runs/{self.name}"


class ConfigError(AdamMLError, ValueError):
    """A config file or override is wrong; the message says where and what."""


def _convert(tp: Any, value: Any, where: str) -> Any:
    """Turn YAML data into the annotated type, so mistakes fail at load time."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, found {value!r}")
        return _from_dict(tp, value, where)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(arg, value, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{where}: bad value {value!r}")
    if origin is list:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list, found {value!r}")
        return [_convert(args[0], v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, found {value!r}")
        return {str(k): _convert(args[1], v, f"{where}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"{where}: expected true/false, found {value!r}")
    if tp in (int, float, str):
        try:
            if tp is int and isinstance(value, float) and not value.is_integer():
                raise ValueError
            return tp(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected {tp.__name__}, found {value!r}") from None
    return value


def _from_dict(cls: Any, data: dict, where: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        moved = [_MOVED[f"{where}.{k}"] for k in unknown if f"{where}.{k}" in _MOVED]
        hint = f" ({'; '.join(moved)})" if moved else ""
        raise ConfigError(
            f"{where or 'config'}: unknown key(s) {', '.join(unknown)}{hint}; "
            f"valid keys: {', '.join(sorted(names))}"
        )
    kwargs = {k: _convert(hints[k], v, f"{where}.{k}" if where else k) for k, v in data.items()}
    return cls(**kwargs)


# The flat ``train`` keys of configs written before the stage sections, and where each went.
# ``lr`` and ``adamml_lr`` each served two stages, so they fill two places.
_LEGACY_TRAIN: dict[str, tuple[str, ...]] = {
    "epochs": ("unimodal.epochs",),
    "lr": ("unimodal.lr", "fusion.head_lr", "adamml.head_lr"),
    "lr_steps": ("unimodal.lr_steps",),
    "fusion_epochs": ("fusion.epochs",),
    "adamml_lr": ("fusion.lr", "adamml.lr"),
    "adamml_epochs": ("adamml.epochs",),
    "adamml_lr_steps": ("adamml.lr_steps",),
    **{k: (f"adamml.{k}",) for k in (
        "warmup_epochs", "finetune_epochs", "alternate_every", "policy_lr", "policy_extractor_lr_scale",
        "policy_pretrain_epochs", "policy_pretrain_lr", "temperature", "temperature_decay",
        "cost_weights", "gamma",
    )},
}
_LEGACY_DROPPED = ("warmup_iters", "log_every")  # knobs that never reached the code
_MOVED = {f"train.{k}": f"train.{k} is now {' and '.join(f'train.{t}' for t in v)}" for k, v in _LEGACY_TRAIN.items()}


def upgrade_legacy(data: dict) -> dict:
    """Rewrite a config dict of the earlier flat layout (saved in older runs and checkpoints).

    Values land where the code read them before, so an old run loads to the same settings.
    The unused ``eval`` section and dead knobs are dropped. A current dict is returned as is.
    """
    train = data.get("train")
    legacy = isinstance(train, dict) and any(k in train for k in (*_LEGACY_TRAIN, *_LEGACY_DROPPED))
    if not legacy and "eval" not in data:
        return data
    data = copy.deepcopy(data)
    data.pop("eval", None)
    if isinstance(train, dict):
        train = data["train"]
        for key in _LEGACY_DROPPED:
            train.pop(key, None)
        for key, targets in _LEGACY_TRAIN.items():
            if key not in train:
                continue
            value = train.pop(key)
            for target in targets:
                section, name = target.split(".")
                train.setdefault(section, {}).setdefault(name, copy.deepcopy(value))
    return data


def config_from_dict(data: dict, where: str = "") -> ExperimentConfig:
    """An ``ExperimentConfig`` from plain data (a YAML file, a checkpoint's ``config``)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping, found {type(data).__name__}")
    return _from_dict(ExperimentConfig, upgrade_legacy(data), where)


def to_dict(config: Any) -> dict:
    return dataclasses.asdict(config)


def check_choice(key: str, value: Any, choices: typing.Iterable[str]) -> None:
    """``value`` must be one of ``choices``; the error names the key, the value and the choices."""
    choices = list(choices)
    if value in choices:
        return
    close = difflib.get_close_matches(str(value), choices, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise ConfigError(f"{key}: got {value!r}; expected one of {', '.join(choices)}{hint}")


