"""Scalars that change over training, as named schedules (never magic lists).

A recipe value is either a plain number (constant) or a one-key mapping:

    {linear: {from: 0.98, to: 0.5, start: 0, end: 1.0, unit: fraction}}
    {piecewise: {0: 64, 10000: 256}}            # keys are steps; each value holds until the next key
    {keyframes: {0: 0.98, 1000: 0.5, 7999: 0.5, 8000: 0.35}}   # linear between keyed steps, then held

`unit: steps` (the default) counts optimiser steps; `unit: fraction` counts fractions of `train.steps`, so a
recipe keeps its shape when a user shortens the run with `--steps`.

A choice among names (`loss.weighting`) is a NamedSchedule: one name, or {piecewise: {0: sds, 8000: uniform}}.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

from asdcli.errors import ConfigError
from asdcli.suggest import check_choice, did_you_mean

Unit = Literal["steps", "fraction"]
FORMS = ("linear", "piecewise", "keyframes")  # the one-key mappings a recipe may give instead of a number
V = TypeVar("V")
SCIENTIFIC = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")  # YAML 1.1 reads 1e-3 as a string, not a number


@dataclass(frozen=True)
class Schedule:
    """A scalar as a function of the training step."""

    kind: Literal["constant", "linear", "piecewise", "keyframes"]
    value: float = 0.0
    start_value: float = 0.0
    end_value: float = 0.0
    start: float = 0.0
    end: float = 0.0
    unit: Unit = "steps"
    points: tuple[tuple[int, float], ...] = ()

    @staticmethod
    def constant(value: float) -> Schedule:
        return Schedule(kind="constant", value=float(value))

    def at(self, step: int, total_steps: int) -> float:
        """Value at optimiser step `step` of a run of `total_steps` steps."""
        if self.kind == "constant":
            return self.value
        if self.kind == "piecewise":
            return _piecewise_at(self.points, step)
        if self.kind == "keyframes":
            return _between_keyframes(self.points, step)
        scale = float(total_steps) if self.unit == "fraction" else 1.0
        start, end = self.start * scale, self.end * scale
        if step <= start or end <= start:
            return self.start_value if step <= start else self.end_value
        if step >= end:
            return self.end_value
        frac = (step - start) / (end - start)
        return self.start_value + frac * (self.end_value - self.start_value)

    def values(self) -> list[float]:
        """The values it passes through: the extremes it takes at any step lie among them (linear and keyframes
        interpolate between theirs)."""
        if self.kind == "constant":
            return [self.value]
        if self.kind in ("piecewise", "keyframes"):
            return [v for _, v in self.points]
        return [self.start_value, self.end_value]

    def lowest(self) -> float:
        """The smallest value the schedule takes at any step."""
        return min(self.values())

    def to_plain(self) -> Any:
        """Plain YAML data that `parse_schedule` turns back into an equal object."""
        if self.kind == "constant":
            return self.value
        if self.kind in ("piecewise", "keyframes"):
            return {self.kind: {k: v for k, v in self.points}}
        return {
            "linear": {
                "from": self.start_value,
                "to": self.end_value,
                "start": self.start,
                "end": self.end,
                "unit": self.unit,
            }
        }


_LINEAR_KEYS = ("from", "to", "start", "end", "unit")


def _number(value: Any, path: str) -> float:
    if isinstance(value, str) and SCIENTIFIC.fullmatch(value.strip()):
        value = float(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{path}: expected a finite number, got {value!r}")
    return float(value)


def parse_schedule(value: Any, path: str) -> Schedule:
    """Parse a recipe value into a Schedule; errors name the key path and the allowed forms."""
    if isinstance(value, Schedule):
        return value
    if isinstance(value, str) and SCIENTIFIC.fullmatch(value.strip()):
        value = float(value)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return Schedule.constant(_number(value, path))
    forms = ("a number, {linear: {from, to, start, end, unit}}, {piecewise: {STEP: VALUE, ...}} or "
             "{keyframes: {STEP: VALUE, ...}}")
    if not isinstance(value, dict) or len(value) != 1:
        raise ConfigError(f"{path}: expected {forms}, got {value!r}")
    (name, body), = value.items()
    if name == "linear":
        return _parse_linear(body, f"{path}.linear")
    if name in ("piecewise", "keyframes"):
        return _parse_piecewise(body, f"{path}.{name}", name)
    raise ConfigError(f"{path}: unknown schedule {name!r}{did_you_mean(name, FORMS)}; "
                      f"expected {forms}")


def _parse_linear(body: Any, path: str) -> Schedule:
    if not isinstance(body, dict):
        raise ConfigError(f"{path}: expected a mapping with keys from, to, start, end (unit optional)")
    for key in body:
        if key not in _LINEAR_KEYS:
            raise ConfigError(f"{path}.{key}: unknown key{did_you_mean(str(key), _LINEAR_KEYS)}; "
                              f"allowed: {', '.join(_LINEAR_KEYS)}")
    missing = [k for k in ("from", "to", "start", "end") if k not in body]
    if missing:
        raise ConfigError(f"{path}: missing {', '.join(missing)}")
    unit = body.get("unit", "steps")
    if unit not in ("steps", "fraction"):
        raise ConfigError(f"{path}.unit: expected 'steps' or 'fraction', got {unit!r}")
    start, end = _number(body["start"], f"{path}.start"), _number(body["end"], f"{path}.end")
    if start < 0 or end < start:
        raise ConfigError(f"{path}: need 0 <= start <= end, got start={start:g}, end={end:g}")
    return Schedule(kind="linear", start_value=_number(body["from"], f"{path}.from"),
                    end_value=_number(body["to"], f"{path}.to"), start=start, end=end, unit=unit)


def _between_keyframes(points: tuple[tuple[int, float], ...], step: int) -> float:
    """Linear between the two keyed steps around `step`; the last value after the last key."""
    for (k0, v0), (k1, v1) in zip(points[:-1], points[1:], strict=True):
        if step < k1:
            return v0 + (max(step, k0) - k0) / (k1 - k0) * (v1 - v0)
    return points[-1][1]


def _piecewise_at(points: tuple[tuple[int, V], ...], step: int) -> V:
    """The value of the last key at or before `step` (the first value before the first key)."""
    current = points[0][1]
    for key, val in points:
        if step >= key:
            current = val
    return current


def _parse_points(body: Any, path: str, parse_value: Callable[[Any, str], V],
                  example: str) -> tuple[tuple[int, V], ...]:
    """Sorted ((step, value), ...) of a {STEP: VALUE} mapping whose first key is step 0."""
    if not isinstance(body, dict) or not body:
        raise ConfigError(f"{path}: expected a non-empty mapping STEP: VALUE, e.g. {example}")
    points = []
    for key, val in body.items():
        if isinstance(key, bool) or not isinstance(key, int) or key < 0:
            raise ConfigError(f"{path}: keys are steps (integers >= 0), got {key!r}")
        points.append((key, parse_value(val, f"{path}.{key}")))
    points.sort()
    if points[0][0] != 0:
        raise ConfigError(f"{path}: the first key must be step 0 (the value at the start), got {points[0][0]}")
    return tuple(points)


def _parse_piecewise(body: Any, path: str, kind: str = "piecewise") -> Schedule:
    return Schedule(kind=kind, points=_parse_points(body, path, _number, "{0: 64, 10000: 256}"))


@dataclass(frozen=True)
class NamedSchedule(Generic[V]):
    """A choice among names (a Literal's values) as a function of the training step: in a recipe one name, or
    {piecewise: {STEP: NAME, ...}}, each name holding from its step on. Annotate a field NamedSchedule[Literal]."""

    points: tuple[tuple[int, str], ...]

    @staticmethod
    def constant(name: str) -> NamedSchedule:
        return NamedSchedule(points=((0, name),))

    def at(self, step: int) -> str:
        """The name in force at optimiser step `step`."""
        return _piecewise_at(self.points, step)

    def to_plain(self) -> Any:
        """Plain YAML data that `parse_named_schedule` turns back into an equal object."""
        if len(self.points) == 1:
            return self.points[0][1]
        return {"piecewise": {k: v for k, v in self.points}}


def parse_named_schedule(value: Any, allowed: tuple[str, ...], path: str) -> NamedSchedule:
    """Parse a recipe value (a name or {piecewise: {STEP: NAME}}) whose names must be among `allowed`."""
    def name(val: Any, where: str) -> str:
        return check_choice(val, allowed, where)

    if isinstance(value, NamedSchedule):
        return NamedSchedule(points=tuple((k, name(v, path)) for k, v in value.points))
    if not isinstance(value, dict):
        return NamedSchedule.constant(name(value, path))
    if len(value) != 1 or "piecewise" not in value:
        raise ConfigError(f"{path}: expected one of {', '.join(repr(a) for a in allowed)} or "
                          f"{{piecewise: {{STEP: NAME, ...}}}}, got {value!r}")
    example = f"{{0: {allowed[0]}, 8000: {allowed[-1]}}}"
    return NamedSchedule(points=_parse_points(value["piecewise"], f"{path}.piecewise", name, example))
