"""Reading and writing configurations as TOML, with every key checked against study/config/schema.py.

Unknown keys, wrong types and out-of-range values raise ConfigError naming the file and the dotted key.
"""
from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from pathlib import Path
from typing import Any

from study.config.schema import Config
from study.names import unread_sections


class ConfigError(ValueError):
    """A bad configuration value; the message names the file and the key."""


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
        raise ConfigError(f"{prefix}{unknown[0]}: unknown key (known keys: {', '.join(sorted(fields))}; "
                          "every key: docs/configuration.md)")
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
    """What a trial's result depends on: everything but where it runs, how it is labelled and the
    sections its method does not read."""
    tree = to_dict(cfg)
    del tree["train"]["device"], tree["train"]["threads"], tree["tracking"]["run_name"]
    for section in unread_sections(cfg.method):
        del tree[section]
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
    """The file's tree, on top of the file it `extends` (if any; see read_toml_with_sources)."""
    return _read_with_bases(Path(path), ())[0]


def read_toml_with_sources(path: Path) -> tuple[dict, list[Path]]:
    """The tree, and the file with every file it extends, itself first: what a run must keep to be re-read."""
    return _read_with_bases(Path(path), ())


def _read_with_bases(path: Path, children: tuple[Path, ...]) -> tuple[dict, list[Path]]:
    """`extends = "other.toml"` (relative to the file) starts from that file's configuration: its keys,
    table by table, with this file's winning; never its [sweep] table or its experiment name."""
    try:
        with open(path, "rb") as f:
            tree = tomllib.load(f)
    except FileNotFoundError:
        where = f"{children[-1]}: extends: " if children else ""
        raise ConfigError(f"{where}{path}: experiment file not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    base_name = tree.pop("extends", None)
    if base_name is None:
        return tree, [path]
    if not isinstance(base_name, str):
        raise ConfigError(f"{path}: extends: expected a file name, got {base_name!r}")
    base_path = path.parent / base_name
    if base_path.resolve() in {p.resolve() for p in (*children, path)}:
        raise ConfigError(f"{path}: extends: {base_path} extends this file again (a cycle)")
    base, sources = _read_with_bases(base_path, (*children, path))
    base.pop("sweep", None)
    if isinstance(base.get("tracking"), dict):
        base["tracking"].pop("experiment", None)
    return _merged(base, tree), [path, *sources]


def _merged(base: dict, top: dict) -> dict:
    """Tables merged key by key (recursively); any other value of `top` replaces the base's."""
    out = dict(base)
    for key, value in top.items():
        out[key] = _merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


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
