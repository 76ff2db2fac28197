"""Options declared once: each config field carries its help text and its constraint.

    @dataclass(frozen=True)
    class FlowConfig(TrainConfig):
        hidden: int = option(128, "MLP width.", Integer(1))

`validate(config)` checks every field against its constraint (one message shape for all:
"hidden must be an integer >= 1, got 0"), and `genlab.cli` builds each `genlab fit <family>`
command from the same fields (`options(config_class)`), so the API, the CLI and the saved
config.json cannot drift apart. After sklearn's declarative `_parameter_constraints`.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import typing
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "Choice",
    "Constraint",
    "Flag",
    "Integer",
    "Option",
    "Real",
    "option",
    "options",
    "validate",
]


class Constraint:
    """What values a field accepts; `check` raises ValueError naming the field and the rule."""

    optional: bool = False

    def accepts(self, value: Any) -> bool:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError

    def check(self, name: str, value: Any) -> None:
        if value is None and self.optional:
            return
        if not self.accepts(value):
            rule = self.describe() + (" or None" if self.optional else "")
            raise ValueError(f"{name} must be {rule}, got {value!r}")


def _is_int(v: Any) -> bool:
    return isinstance(v, int | np.integer) and not isinstance(v, bool)


def _is_real(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


@dataclass(frozen=True)
class Integer(Constraint):
    """An integer in [low, high] (either end may be None: unbounded)."""

    low: int | None = None
    high: int | None = None
    optional: bool = False

    def accepts(self, v: Any) -> bool:
        return (
            _is_int(v)
            and (self.low is None or v >= self.low)
            and (self.high is None or v <= self.high)
        )

    def describe(self) -> str:
        if self.low is not None and self.high is not None:
            return f"an integer in [{self.low}, {self.high}]"
        if self.low is not None:
            return f"an integer >= {self.low}"
        return "an integer" if self.high is None else f"an integer <= {self.high}"


@dataclass(frozen=True)
class Real(Constraint):
    """A finite number in an interval: [low, high] with either end open (`low_open`, ...)."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    optional: bool = False

    def accepts(self, v: Any) -> bool:
        if not _is_real(v):
            return False
        if self.low is not None and (v <= self.low if self.low_open else v < self.low):
            return False
        return self.high is None or (v < self.high if self.high_open else v <= self.high)

    def describe(self) -> str:
        if self.low is not None and self.high is not None:
            left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
            return f"a number in {left}{self.low:g}, {self.high:g}{right}"
        if self.low is not None:
            return f"a number {'>' if self.low_open else '>='} {self.low:g}"
        if self.high is not None:
            return f"a number {'<' if self.high_open else '<='} {self.high:g}"
        return "a finite number"


@dataclass(frozen=True)
class Choice(Constraint):
    """One of a fixed set of values."""

    choices: tuple[Any, ...] = ()
    optional: bool = False

    def accepts(self, v: Any) -> bool:
        return not isinstance(v, bool) and isinstance(v, str | int) and v in self.choices

    def describe(self) -> str:
        return f"one of {self.choices}"


@dataclass(frozen=True)
class Flag(Constraint):
    """True or False."""

    optional: bool = False

    def accepts(self, v: Any) -> bool:
        return isinstance(v, bool)

    def describe(self) -> str:
        return "True or False"


def option(
    default: Any,
    help: str,
    check: Constraint | None = None,
    *,
    flag: str | None = None,
    short: str | None = None,
    cli: bool = True,
) -> Any:
    """A dataclass field with its help text and constraint (and, for the CLI, its flag:
    default `--field-name`, and an optional short flag). `cli=False` keeps it out of
    `genlab fit` (options that only make sense from Python)."""
    meta = {"help": help, "check": check, "flag": flag, "short": short, "cli": cli}
    return dataclasses.field(default=default, metadata=meta)


@dataclass(frozen=True)
class Option:
    """One declared field: its name, type (resolved annotation), default, help and rule."""

    name: str
    annotation: Any
    default: Any
    help: str
    check: Constraint | None
    flag: str
    short: str | None
    cli: bool


def options(config_class: type) -> Iterator[Option]:
    """The declared fields of a config dataclass, in declaration order (base class first)."""
    hints = typing.get_type_hints(config_class)
    for f in dataclasses.fields(config_class):
        meta = f.metadata
        yield Option(
            name=f.name,
            annotation=hints[f.name],
            default=f.default,
            help=meta.get("help", ""),
            check=meta.get("check"),
            flag=meta.get("flag") or "--" + f.name.replace("_", "-"),
            short=meta.get("short"),
            cli=meta.get("cli", True) and "help" in meta,
        )


def validate(config: Any, names: Sequence[str] | None = None) -> None:
    """Check every field of a config dataclass (or those in `names`) against its constraint.

    Raises:
        ValueError: the first field whose value breaks its rule, named with the rule.
    """
    for f in dataclasses.fields(config):
        check = f.metadata.get("check")
        if check is not None and (names is None or f.name in names):
            check.check(f.name, getattr(config, f.name))
