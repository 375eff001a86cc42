"""One configuration key: its default, the values it accepts and one line saying what it does.

The range (`min`, `max`, `choices`) is enforced by the TOML reader (study/config/toml_io.py); the
meaning (`doc`) is what docs/configuration.md shows (python -m study.config.reference writes it).
"""
from __future__ import annotations

from dataclasses import field
from typing import Any


def knob(default: Any, doc: str, *, min: float | None = None, max: float | None = None,
         choices: tuple | None = None, factory: bool = False, allowed: str = "") -> Any:
    """A dataclass field; `factory`: `default` is a callable making the default (lists); `allowed`: the
    accepted values in words, where a `validate` method rather than min/max/choices checks them."""
    meta = {"min": min, "max": max, "choices": choices, "doc": doc, "allowed": allowed}
    if factory:
        return field(default_factory=default, metadata=meta)
    return field(default=default, metadata=meta)


def section(cls: type, doc: str) -> Any:
    """A nested table (a dataclass field holding another configuration dataclass)."""
    return field(default_factory=cls, metadata={"doc": doc})
