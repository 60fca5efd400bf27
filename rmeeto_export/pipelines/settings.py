"""Settings of `build` and `retrain` as a few typed groups, each name written once.

Every field carries its command-line option (`setting(...)`); `options(...)` turns a group's fields
into Click options and `from_options(...)` reads them back, so a new setting is one line here.
The manifest stores `BuildSettings.to_json()`, and a stage's record names the groups it read, so
changing a group's value re-runs exactly the stages that depend on it.
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass, field, fields
from typing import Any, Callable, Optional

import click

from rmeeto_export.calibration.collect import DEFAULT_METHOD, DEFAULT_NUM_IMAGES, DEFAULT_PERCENTILE, METHODS
from rmeeto_export.calibration.smoothing import DEFAULT_ALPHA
from rmeeto_export.data import AugmentSettings, MixSettings
from rmeeto_export.errors import InternalError, UserError
from rmeeto_export.export.batch import BatchRange, parse_batch
from rmeeto_export.merge.prune import IMPORTANCES, RELEASED_KEEP_RATIO, RELEASED_PRUNE_AFTER, PruneSettings
from rmeeto_export.merge.schedule import check_one_way
from rmeeto_export.precision import PRECISIONS, check_precision
from rmeeto_export.trt.backend import BACKENDS
from rmeeto_export.trt.plugins import PLUGIN_MODES

_AUGMENT, _MIX = AugmentSettings(), MixSettings()
REDUCERS = ("merge", "prune")
_RELEASED_AFTER = ",".join(map(str, RELEASED_PRUNE_AFTER))
_PROBABILITY = click.FloatRange(0, 1)


def setting(default: Any, help: str, *, flag: Optional[str] = None, aliases: tuple[str, ...] = (),
            toggle: bool = False, parse: Optional[Callable[[Any], Any]] = None, **click_options: Any) -> Any:
    """A dataclass field with its CLI option: `--<name>` unless `flag` says otherwise.

    toggle: a boolean with both `--<name>` and `--no-<name>`.
    parse: turns the option's value into the field's value (e.g. KEY=VALUE pairs into a dict).
    """
    metadata = {"flag": flag, "aliases": aliases, "toggle": toggle, "help": help, "parse": parse,
                "click": click_options}
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: type(default)(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def parse_overrides(pairs: tuple[str, ...]) -> dict[str, Any]:
    """KEY=VALUE model overrides; values are int, else float, else string."""
    overrides: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key:
            raise UserError(f"--override wants KEY=VALUE, got {pair!r}")
        for parse in (int, float, str):
            with contextlib.suppress(ValueError):
                overrides[key] = parse(text)
                break
    return overrides


def parse_block_counts(text: str) -> tuple[int, ...]:
    """'5,10,15' -> (5, 10, 15)."""
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise UserError(f"--prune-after wants block counts like 5,10,15, got {text!r}") from None


@dataclass(frozen=True)
class ModelSettings:
    """Which model, which weights and how many tokens to reduce, and how: what `create_model` and
    `load_weights` need."""

    KEY = "model"

    name: str = setting("vim_b", "vim_t, vim_s or vim_b", flag="--model")
    method: str = setting("merge", "token reducer: merge (R-MeeTo) or prune (token pruning, arXiv 2409.18962)",
                          type=click.Choice(REDUCERS))
    ratio: Optional[float] = setting(None, "fraction of token-layer work removed, e.g. 0.31 (merge or prune)", type=float)
    r: Optional[int] = setting(None, "tokens merged per merge step (instead of --ratio); under torchrun write --merge-r",
                               aliases=("--merge-r",), type=int)
    keep_ratio: Optional[float] = setting(
        None, f"prune: fraction of tokens kept at each prune (instead of --ratio; default {RELEASED_KEEP_RATIO})", type=float)
    prune_after: str = setting(_RELEASED_AFTER, "prune: after how many blocks to prune")
    importance: str = setting("ssm", "prune: token importance, ssm (the paper's clipped SSM output) or l2 (baseline)",
                              type=click.Choice(IMPORTANCES))
    weights: Optional[str] = setting(None, "checkpoint: .pth (official layout), .safetensors or hf://owner/repo/file")
    ema_weights: bool = setting(False, "take the checkpoint's model_ema weights", is_flag=True)
    overrides: dict[str, Any] = setting({}, "model config override, e.g. img_size=256 (repeatable)", flag="--override",
                                        parse=parse_overrides, multiple=True, metavar="KEY=VALUE")
    seed: int = setting(0, "seed of random weights, parity inputs and re-training", type=int)

    def check(self) -> None:
        check_one_way({"--ratio": self.ratio, "--r": self.r})
        check_one_way({"--ratio": self.ratio, "--keep-ratio": self.keep_ratio})
        if self.method not in REDUCERS:
            raise UserError(f"unknown method {self.method!r}; choose one of {', '.join(REDUCERS)}")
        if self.method == "prune" and self.r is not None:
            raise UserError("--r counts merged tokens; pruning takes --ratio or --keep-ratio")
        pruning_only = {"keep_ratio": self.keep_ratio is not None, "prune_after": self.prune_after != _RELEASED_AFTER,
                        "importance": self.importance != "ssm"}
        given = [name.replace("_", "-") for name, set_ in pruning_only.items() if set_]
        if self.method == "merge" and given:
            raise UserError(f"only --method prune takes --{', --'.join(given)}")

    @property
    def reduction(self) -> dict[str, Any]:
        """The keyword arguments that make `create_model` merge or prune as these settings say."""
        if self.method == "merge":
            return {"merge_ratio": self.ratio, "merge_r": self.r}
        return {"prune": PruneSettings(keep_ratio=self.keep_ratio, ratio=self.ratio,
                                       prune_after=parse_block_counts(self.prune_after), importance=self.importance)}

    @property
    def random_weights(self) -> bool:
        return self.weights is None


@dataclass(frozen=True)
class ExportSettings:
    """The ONNX graphs: their precision and batch (the engine's too)."""

    KEY = "export"

    precision: str = setting("fp32", "int8: Q/DQ around the linear layers, calibrated on --calib-data",
                             type=click.Choice(PRECISIONS))
    batch: str = setting("1", "N: a fixed batch; MIN:OPT:MAX (e.g. 1:8:64): a dynamic batch axis and one TensorRT "
                         "profile for serving", parse=lambda text: str(parse_batch(text)))

    def check(self) -> None:
        check_precision(self.precision)
        parse_batch(self.batch)  # UserError on a bad size or range

    @property
    def batch_range(self) -> BatchRange:
        return parse_batch(self.batch)

    @property
    def int8(self) -> bool:
        return self.precision == "int8"


@dataclass(frozen=True)
class ParitySettings:
    """ONNX Runtime against PyTorch."""

    KEY = "parity"

    samples: int = setting(8, "random inputs compared in parity (fp32/fp16)", flag="--parity-samples", type=int)

    def check(self) -> None:
        if self.samples < 1:
            raise UserError(f"parity samples must be at least 1, got {self.samples}")


@dataclass(frozen=True)
class CalibrationSettings:
    """INT8 calibration; on `build` each option has the prefix --calib- (`calibrate` takes them bare)."""

    KEY = "calibration"
    PREFIX = "calib-"

    data: Optional[str] = setting(None, "calibration images: a folder of images or an ImageFolder tree (its train/)")
    num: int = setting(DEFAULT_NUM_IMAGES, "number of calibration images", type=click.IntRange(min=1))
    method: str = setting(DEFAULT_METHOD, "activation range method", type=click.Choice(METHODS))
    percentile: float = setting(DEFAULT_PERCENTILE, "which percentile the percentile method takes", type=float)
    smoothing: bool = setting(True, "SmoothQuant: move large activation channels of in_proj/out_proj into the weights",
                              toggle=True)
    smoothing_alpha: float = setting(DEFAULT_ALPHA, "SmoothQuant migration strength (0..1)", type=float)
    quantize_merge_inputs: bool = setting(
        False, "also INT8 the out_proj layers whose output the next merge matches on (flips merges)", is_flag=True)

    def check(self) -> None:
        from rmeeto_export.calibration.collect import check_method

        check_method(self.method, self.percentile, self.alpha)

    @property
    def alpha(self) -> Optional[float]:
        """The smoothing strength calibration uses; None: no smoothing."""
        return self.smoothing_alpha if self.smoothing else None


@dataclass(frozen=True)
class EngineSettings:
    """The TensorRT engine."""

    KEY = "engine"

    trt: str = setting("auto", "TensorRT flavour for the engine stage (auto skips it when none is installed)",
                       type=click.Choice(BACKENDS))
    plugins: str = setting("auto", "engine with our plugins (C++ library, else Python plugins) or the portable graph (off)",
                           type=click.Choice(PLUGIN_MODES))
    target_cc: Optional[str] = setting(None, "TensorRT-RTX target compute capability, e.g. sm86, sm89, sm120")

    def check(self) -> None:
        if self.target_cc is not None:
            from rmeeto_export.trt.targets import parse_compute_capability

            parse_compute_capability(self.target_cc)


AMP_CHOICES = ("none", "bf16", "fp16")
DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class RetrainSettings:
    """The R-MeeTo re-training recipe; defaults are the official values. `build` re-trains when data is given."""

    KEY = "retrain"

    data: Optional[str] = setting(None, "ImageFolder root with train/<class>/ and val/<class>/ (build: re-train first)")
    epochs: int = setting(3, "re-training epochs", type=click.IntRange(min=1))
    batch_size: int = setting(128, "per process; the learning rate scales with the global batch",
                              type=click.IntRange(min=1))  # the official scripts ran 4 GPUs x 128 = 512
    lr: float = setting(2e-5, "at global batch 512", type=float)
    min_lr: float = setting(1e-6, "end of the cosine schedule", type=float)
    weight_decay: float = setting(0.05, "AdamW weight decay", type=float)
    distill_weight: float = setting(0.5, "weight of KL(teacher || student); 0 trains without a teacher", type=float)
    drop_path: float = setting(0.1, "drop path rate of the student", type=float)
    ema: bool = setting(False, "keep an EMA of the weights (Vim-B recipe)", toggle=True)
    ema_decay: float = setting(0.99996, "EMA decay", type=float)
    mixup: float = setting(_MIX.mixup_alpha, "mixup alpha, 0 = off", type=click.FloatRange(min=0))
    cutmix: float = setting(_MIX.cutmix_alpha, "cutmix alpha, 0 = off", type=click.FloatRange(min=0))
    mixup_prob: float = setting(_MIX.prob, "probability of mixup or cutmix per batch", type=_PROBABILITY)
    mixup_switch_prob: float = setting(_MIX.switch_prob, "probability of cutmix instead of mixup", type=_PROBABILITY)
    label_smoothing: float = setting(_MIX.smoothing, "label smoothing", type=_PROBABILITY)
    crop_scale_min: float = setting(_AUGMENT.crop_scale[0], "smallest area fraction of RandomResizedCrop",
                                    type=click.FloatRange(0, 1, min_open=True))
    hflip: float = setting(_AUGMENT.hflip, "horizontal flip probability", type=_PROBABILITY)
    reprob: float = setting(_AUGMENT.erase_prob, "random erasing probability", type=_PROBABILITY)
    amp: str = setting("none", "mixed precision on CUDA (the official recipe trains in fp32)",
                       type=click.Choice(AMP_CHOICES))
    device: str = setting("auto", "where to train", type=click.Choice(DEVICES))
    workers: int = setting(8, "data loader processes per training process", type=click.IntRange(min=0))
    log_every: int = setting(50, "steps between progress lines", type=click.IntRange(min=1))

    def check(self) -> None:
        positive = {"epochs": self.epochs, "batch_size": self.batch_size, "lr": self.lr, "log_every": self.log_every}
        for name, value in positive.items():
            if value <= 0:
                raise UserError(f"{name} must be positive, got {value}")
        if self.min_lr < 0:
            raise UserError(f"min_lr must not be negative, got {self.min_lr}")
        if not 0 <= self.drop_path < 1:
            raise UserError(f"drop_path must be in [0, 1), got {self.drop_path}")
        if not 0 < self.ema_decay < 1:
            raise UserError(f"ema_decay must be in (0, 1), got {self.ema_decay}")
        if self.distill_weight < 0 or self.weight_decay < 0 or self.workers < 0:
            raise UserError("distill_weight, weight_decay and workers must not be negative")
        if self.amp not in AMP_CHOICES:
            raise UserError(f"unknown amp {self.amp!r}; choose one of {', '.join(AMP_CHOICES)}")
        if self.device not in DEVICES:
            raise UserError(f"unknown device {self.device!r}; choose one of {', '.join(DEVICES)}")

    @property
    def augment(self) -> AugmentSettings:
        return dataclasses.replace(_AUGMENT, crop_scale=(self.crop_scale_min, _AUGMENT.crop_scale[1]),
                                   hflip=self.hflip, erase_prob=self.reprob)

    @property
    def mix(self) -> MixSettings:
        return MixSettings(mixup_alpha=self.mixup, cutmix_alpha=self.cutmix, prob=self.mixup_prob,
                           switch_prob=self.mixup_switch_prob, smoothing=self.label_smoothing)


def check_teacher(model: ModelSettings, retrain: RetrainSettings) -> None:
    """Distillation's teacher is the unmerged model with the given weights."""
    if retrain.distill_weight > 0 and model.weights is None:
        raise UserError("re-training distils from the unmerged model with the same weights: add --weights "
                        "(or --distill-weight 0 to train without a teacher)")


GROUPS = (ModelSettings, ExportSettings, ParitySettings, CalibrationSettings, EngineSettings, RetrainSettings)


@dataclass(frozen=True)
class BuildSettings:
    """Everything that decides a build folder's artifacts; the manifest stores it."""

    model: ModelSettings = ModelSettings()
    export: ExportSettings = ExportSettings()
    parity: ParitySettings = ParitySettings()
    calibration: CalibrationSettings = CalibrationSettings()
    engine: EngineSettings = EngineSettings()
    retrain: RetrainSettings = RetrainSettings()

    def check(self) -> None:
        for group in self.groups().values():
            group.check()
        if self.retraining:
            check_teacher(self.model, self.retrain)
        if self.export.int8 and self.calibration.data is None:
            raise UserError("--precision int8 needs calibration images: add --calib-data DIR")
        if self.calibrating and self.export.batch_range.dynamic:
            raise UserError(f"INT8 calibration runs graphs of a fixed batch; --batch {self.export.batch} is a range: "
                            "give a fixed --batch N")

    def groups(self) -> dict[str, Any]:
        return {group.KEY: getattr(self, group.KEY) for group in GROUPS}

    @property
    def retraining(self) -> bool:
        return self.retrain.data is not None

    @property
    def calibrating(self) -> bool:
        """INT8 twins of the graphs are made for an INT8 build, or whenever calibration images are given."""
        return self.export.int8 or self.calibration.data is not None

    def replace(self, **groups: Any) -> "BuildSettings":
        return dataclasses.replace(self, **groups)

    def to_json(self) -> dict[str, dict[str, Any]]:
        return {key: dataclasses.asdict(group) for key, group in self.groups().items()}

    @classmethod
    def from_json(cls, data: dict[str, dict[str, Any]]) -> "BuildSettings":
        try:
            return cls(**{group.KEY: group(**data[group.KEY]) for group in GROUPS})
        except (KeyError, TypeError) as err:
            raise UserError(f"the manifest's settings do not fit this version of rmeeto-export ({err}); "
                            "build the folder again") from None


# ----------------------------------------------------------------------------------------------
# Command-line options generated from the fields


def _flags(group: type, item: dataclasses.Field, prefixed: bool) -> list[str]:
    prefix = getattr(group, "PREFIX", "") if prefixed else ""
    name = item.metadata["flag"] or "--" + item.name.replace("_", "-")
    name = "--" + prefix + name.removeprefix("--")
    if item.metadata["toggle"]:
        return [f"{name}/--{prefix}no-{name.removeprefix('--' + prefix)}"]
    return [name, *item.metadata["aliases"]]


def _param(group: type, item: dataclasses.Field) -> str:
    return f"{group.KEY}__{item.name}"


def options(*groups: type, prefixed: bool = True, only: Optional[tuple[str, ...]] = None):
    """Click options for every field of `groups` (or the fields named in `only`)."""
    def decorate(func):
        seen: set[str] = set()
        for group in reversed(groups):
            for item in reversed(fields(group)):
                if only is not None and item.name not in only:
                    continue
                flags = _flags(group, item, prefixed)
                names = {name for flag in flags for name in flag.split("/")}
                clash = seen.intersection(names)
                if clash:
                    raise InternalError(f"two settings use the option {', '.join(sorted(clash))}")
                seen.update(names)
                click_options = item.metadata["click"]
                default = item.default if item.default is not dataclasses.MISSING else None
                if click_options.get("multiple"):
                    default = ()
                func = click.option(*flags, _param(group, item), default=default, show_default=default not in (None, ()),
                                    help=item.metadata["help"], **click_options)(func)
        return func
    return decorate


def from_options(group: type, values: dict[str, Any], explicit: Optional[set[str]] = None) -> dict[str, Any]:
    """The fields of `group` given as options (popped from `values`); all of them unless `explicit` names some."""
    result = {}
    for item in fields(group):
        name = _param(group, item)
        if name not in values:
            continue
        value = values.pop(name)
        if explicit is not None and name not in explicit:
            continue
        parse = item.metadata["parse"]
        result[item.name] = parse(value) if parse else value
    return result


def build_settings_from_options(values: dict[str, Any]) -> BuildSettings:
    return BuildSettings(**{group.KEY: group(**from_options(group, values)) for group in GROUPS})


def explicit_options(ctx: click.Context) -> set[str]:
    """Names of the parameters the user gave on the command line (not their defaults)."""
    return {name for name in ctx.params
            if ctx.get_parameter_source(name) not in (click.core.ParameterSource.DEFAULT, None)}
