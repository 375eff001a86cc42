"""Typed configuration: dataclasses with defaults, loaded from TOML with every key checked.

Unknown keys, wrong types and out-of-range values raise ConfigError naming the file and the dotted
key. Ranges live in field metadata (`min`, `max`, `choices`) so the checks stay next to the field.
"""
from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from study.data.synthetic import SyntheticConfig


class ConfigError(ValueError):
    """A bad configuration value; the message names the file and the key."""


def knob(default: Any, *, min: float | None = None, max: float | None = None,
         choices: tuple | None = None, factory: bool = False) -> Any:
    meta = {"min": min, "max": max, "choices": choices}
    if factory:
        return field(default_factory=default, metadata=meta)
    return field(default=default, metadata=meta)


METHODS = ("dense", "adaptive_dropout", "magnitude_structured", "magnitude_unstructured", "small_dense")
BASELINES = METHODS[2:]  # need a budget: prune.target_params or prune.target_reduction


@dataclass
class FsddConfig:
    split_by: str = knob("index", choices=("index", "speaker"))
    dev_indices: list[int] = knob(lambda: list(range(5, 10)), factory=True)
    test_indices: list[int] = knob(lambda: list(range(0, 5)), factory=True)
    dev_speakers: list[str] = knob(lambda: ["nicolas"], factory=True)
    test_speakers: list[str] = knob(lambda: ["theo"], factory=True)


@dataclass
class DataConfig:
    source: str = knob("synthetic", choices=("synthetic", "librispeech", "fsdd"))
    root: str = ""  # data set folder for librispeech and fsdd
    cache_dir: str = "runs/cache"  # corpus and feature caches; relative to the working directory
    train_subsets: list[str] = knob(lambda: ["train-clean-100"], factory=True)  # librispeech
    dev_subsets: list[str] = knob(lambda: ["dev-clean"], factory=True)
    test_subsets: list[str] = knob(lambda: ["test-clean"], factory=True)
    extra_test_subsets: list[str] = knob(list, factory=True)  # librispeech: each reported as <subset>/wer, /cer
    max_train_seconds: float = knob(30.0, min=0.5)  # longer training utterances are skipped
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    fsdd: FsddConfig = field(default_factory=FsddConfig)


@dataclass
class FeatureConfig:
    n_mels: int = knob(80, min=8)
    win_ms: float = knob(25.0, min=5)
    hop_ms: float = knob(10.0, min=1)
    freq_masks: int = knob(1, min=0)  # SpecAugment, training only
    freq_mask_width: int = knob(10, min=0)
    time_masks: int = knob(1, min=0)
    time_mask_width: int = knob(10, min=0)  # frames


@dataclass
class ModelConfig:
    d_model: int = knob(96, min=8)
    num_heads: int = knob(4, min=1)
    ffn_dim: int = knob(384, min=1)
    conv_channels: int = knob(96, min=1)  # channels after the GLU in the conv module
    conv_kernel: int = knob(15, min=1)
    num_blocks: int = knob(4, min=1)
    subsampling_channels: int = knob(32, min=1)
    dropout: float = knob(0.1, min=0.0, max=0.9)
    attention_dropout: float = knob(0.0, min=0.0, max=0.9)  # on attention weights; slow on the CPU
    scale_input: bool = True  # multiply front-end output by sqrt(d_model) before adding positions

    def validate(self) -> None:
        if self.d_model % self.num_heads:
            raise ValueError(f"model.d_model ({self.d_model}) must be divisible by model.num_heads ({self.num_heads})")
        if self.conv_kernel % 2 == 0:
            raise ValueError(f"model.conv_kernel must be odd (same-length output), got {self.conv_kernel}")


@dataclass
class TrainConfig:
    epochs: int = knob(9, min=1)
    batch_seconds: float = knob(16.0, min=1.0)  # audio seconds per batch (length-bucketed)
    lr: float = knob(4e-3, min=0.0)
    weight_decay: float = knob(1e-2, min=0.0)
    warmup_fraction: float = knob(0.1, min=0.0, max=1.0)
    grad_clip: float = knob(5.0, min=0.0)
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    threads: int = knob(0, min=0)  # CPU threads; 0 = every core this process may use


@dataclass
class AdlConfig:
    """Adaptive dropout (METHOD.md section 1); used when method = "adaptive_dropout"."""
    locations: list[str] = knob(lambda: ["ffn", "mhsa", "conv"], choices=("ffn", "mhsa", "conv"), factory=True)
    alpha: float = knob(1e-2, min=0.0)  # penalty weight of the regulariser
    tau: float = knob(1.0, min=1e-3)  # Gumbel-sigmoid temperature
    tau_end: float = knob(0.0, min=0.0)  # > 0: anneal tau geometrically to this by the end
    threshold: float = knob(0.5, min=0.0, max=1.0)
    inference: str = knob("expected", choices=("expected", "hard"))
    mask_granularity: str = knob("frame", choices=("frame", "utterance"))
    straight_through: bool = False
    rescale: str = knob("none", choices=("none", "inverted"))
    beta0: float = 3.0  # initial logit (p = 0.95)
    c0: float = 3.0  # regulariser target c(t) falls from c0 to c1 between t0 and t1
    c1: float = -4.0
    t0: float = knob(0.1, min=0.0, max=1.0)
    t1: float = knob(0.8, min=0.0, max=1.0)
    reg_normalization: str = knob("unit", choices=("unit", "layer"))
    weight_ffn: float = knob(1.0, min=0.0)  # per-location multipliers of the regulariser
    weight_mhsa: float = knob(1.0, min=0.0)
    weight_conv: float = knob(1.0, min=0.0)
    lr: float = knob(2e-2, min=0.0)  # learning rate of the logits (no weight decay)
    hard_phase: float = knob(0.0, min=0.0, max=1.0)  # final fraction trained with thresholded masks
    finetune_epochs: int = knob(0, min=0)  # after pruning; 0 = the paper's "no fine-tuning"

    def validate(self) -> None:
        if self.t1 < self.t0:
            raise ValueError(f"adl.t1 ({self.t1}) must be >= adl.t0 ({self.t0})")
        if len(set(self.locations)) != len(self.locations):
            raise ValueError(f"adl.locations: repeated location in {self.locations}")


@dataclass
class PruneConfig:
    """The baselines' budget and recipe (METHOD.md section 5); ignored by dense and adaptive_dropout."""
    target_params: int = knob(0, min=0)  # parameters to keep (nonzero ones for unstructured); 0 = unset
    target_reduction: float = knob(0.0, min=0.0, max=0.99)  # 1 - kept/dense; 0 = unset
    ranking: str = knob("global", choices=("global", "uniform"))  # structured: see study/baselines.py
    shrink: str = knob("d_model", choices=("d_model", "inner"))  # small_dense: which widths shrink
    finetune_epochs: int = knob(0, min=0)  # magnitude baselines: training after pruning

    def validate(self) -> None:
        if self.target_params and self.target_reduction:
            raise ValueError("prune.target_params and prune.target_reduction are both set; give one")


@dataclass
class TrackingConfig:
    experiment: str = ""  # MLflow experiment; empty = the experiment file's stem
    run_name: str = ""


@dataclass
class Config:
    method: str = knob("dense", choices=METHODS)
    data: DataConfig = field(default_factory=DataConfig)
    features: FeatureConfig = field(default_factory=FeatureConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    adl: AdlConfig = field(default_factory=AdlConfig)
    prune: PruneConfig = field(default_factory=PruneConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def validate(self) -> None:
        if self.method in BASELINES and not (self.prune.target_params or self.prune.target_reduction):
            raise ValueError(f"method {self.method!r} needs a budget: set prune.target_params or prune.target_reduction")


def _check_type(value: Any, annotation: Any, key: str) -> Any:
    origin = typing.get_origin(annotation)
    if origin is list:
        (item_type,) = typing.get_args(annotation)
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_check_type(v, item_type, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(annotation):
            try:
                return _check_type(value, option, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key}: {value!r} is not a {annotation}")
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if annotation is int and isinstance(value, bool) or not isinstance(value, annotation):
        raise ConfigError(f"{key}: expected {annotation.__name__}, got {type(value).__name__} {value!r}")
    return value


def _check_range(value: Any, meta: typing.Mapping, key: str) -> None:
    items = value if isinstance(value, list) else [value]
    for item in items:
        if meta.get("min") is not None and item < meta["min"]:
            raise ConfigError(f"{key}: must be >= {meta['min']}, got {item!r}")
        if meta.get("max") is not None and item > meta["max"]:
            raise ConfigError(f"{key}: must be <= {meta['max']}, got {item!r}")
        if meta.get("choices") is not None and item not in meta["choices"]:
            raise ConfigError(f"{key}: must be one of {list(meta['choices'])}, got {item!r}")


def build(cls: type, data: dict, prefix: str = "") -> Any:
    """Build dataclass `cls` from a (TOML) dict, rejecting unknown keys and bad values."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a table, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{prefix}{unknown[0]}: unknown key (known keys: {', '.join(sorted(fields))})")
    kwargs = {}
    for name, value in data.items():
        key = prefix + name
        if dataclasses.is_dataclass(hints[name]):
            kwargs[name] = build(hints[name], value, key + ".")
        else:
            kwargs[name] = _check_type(value, hints[name], key)
            _check_range(kwargs[name], fields[name].metadata, key)
    obj = cls(**kwargs)
    if hasattr(obj, "validate"):
        try:
            obj.validate()
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc
    return obj


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def identity(cfg: Config) -> dict:
    """What a trial's result depends on: everything but where it runs and how it is labelled."""
    tree = to_dict(cfg)
    del tree["train"]["device"], tree["train"]["threads"], tree["tracking"]["run_name"]
    return tree


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    """{"model": {"d_model": 144}} -> {"model.d_model": 144}; used for MLflow params."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat


def set_dotted(tree: dict, dotted_key: str, value: Any) -> None:
    """Set tree["a"]["b"] = value for "a.b", creating tables on the way."""
    *parents, last = dotted_key.split(".")
    for part in parents:
        tree = tree.setdefault(part, {})
    tree[last] = value


def read_toml(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: experiment file not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> Config:
    """Read a TOML configuration (no [sweep] table) into a Config; every error names `path` and the key."""
    path = Path(path)
    data = read_toml(path)
    for key, value in (overrides or {}).items():
        set_dotted(data, key, value)
    try:
        cfg = build(Config, data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    if not cfg.tracking.experiment:
        cfg.tracking.experiment = path.stem
    return cfg


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


def dumps_toml(tree: dict, prefix: str = "") -> str:
    """Writes a resolved config back as TOML that load_config reads to the same Config."""
    scalars = [f"{k} = {_toml_value(v)}" for k, v in tree.items() if not isinstance(v, dict)]
    out = ([f"[{prefix[:-1]}]"] if prefix and scalars else []) + scalars
    text = "\n".join(out) + ("\n" if out else "")
    for key, value in tree.items():
        if isinstance(value, dict):
            text += ("\n" if text else "") + dumps_toml(value, f"{prefix}{key}.")
    return text
