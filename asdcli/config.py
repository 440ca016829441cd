"""The typed run config: one frozen dataclass per recipe section, and the strict builder that fills them.

`build_dataclass` turns plain data (what recipe.py read from YAML) into the dataclasses, checking every value
against its field's type (unknown keys, wrong types, Literal choices, schedules) with a did-you-mean. Sections
that come in several kinds (`prior`, `generator`, `loss`) carry `kind:`; the registry maps it to the component
class, whose `Config` dataclass validates the section, and every integer size or count in it is range-checked.
`to_plain` turns a config back into plain data. Reading YAML, `base:` inheritance and overrides: recipe.py.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from asdcli.errors import ConfigError, shown
from asdcli.registry import config_class
from asdcli.schedule import SCIENTIFIC, NamedSchedule, Schedule, parse_named_schedule, parse_schedule
from asdcli.suggest import check_choice, did_you_mean

SCHEMA_VERSION = 1


def is_device_name(name: str, auto: bool = True) -> bool:
    """cpu, cuda or cuda:N (and `auto` where a recipe may leave the choice to the machine)."""
    return name in ("cpu", "cuda") or (auto and name == "auto") or (name.startswith("cuda:") and name[5:].isdigit())


# ------------------------------------------------------------------------------------------- run sections
@dataclass(frozen=True)
class PromptsConfig:
    library: str | None = None  # JSON {"train","val","test"} or a text file with one prompt per line
    items: tuple[str, ...] = ()  # inline prompts, used when `library` is not set
    train_split: str = "train"  # split of a JSON library trained on
    val_split: str = "val"  # split rendered at validation
    num_val: int = 4  # validation prompts rendered (at most)


@dataclass(frozen=True)
class CameraConfig:
    """Training camera distribution: uniform in each range (degrees, scene units)."""

    elevation: tuple[float, float] = (-10.0, 45.0)
    azimuth: tuple[float, float] = (-180.0, 180.0)
    fovy: tuple[float, float] = (40.0, 70.0)
    distance: tuple[float, float] = (1.0, 1.4)
    relative_distance: bool = True  # distance scaled by 1/tan(fovy/2), so the object keeps its framing
    views_evenly_spaced: bool = False  # MVDream: the V views of a prompt are 360/V degrees apart
    eval_elevation: float = 15.0  # orbit used by validation, generate and eval
    eval_distance: float = 3.0
    eval_fovy: float = 40.0


@dataclass(frozen=True)
class RenderConfig:
    resolution: Schedule = field(default_factory=lambda: Schedule.constant(32))  # render side, pixels
    prompts_per_step: int = 1  # P: prompts rendered per optimiser step (per rank)
    views_per_prompt: int = 1  # V: views of each prompt per step
    samples_per_ray: int = 64  # stratified samples along each ray
    importance_samples: int = 0  # extra samples drawn from the coarse weights (0 = off)
    radius: float = 1.0  # scene bounding box is [-radius, radius]^3
    inv_std: float = 30.0  # VolSDF Laplace sharpness (fixed, as in the paper)
    background: Literal["solid", "random", "env-mlp", "text-env-mlp"] = "random"  # text-env-mlp: Hyper-iNGP's
    background_color: tuple[float, float, float] = (1.0, 1.0, 1.0)  # solid colour (and eval colour of random)
    background_random_prob: float | None = None  # chance an env-map image gets a random colour (None: reference)
    shading: Literal["albedo", "lambertian"] = "albedo"
    light: Literal["random", "camera"] = "random"  # lambertian training light: random, or fixed in the camera frame
    chunk_rays: int = 16384  # rays per chunk when rendering without gradients
    camera: CameraConfig = field(default_factory=CameraConfig)


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 1000  # optimiser steps
    optimizer: Literal["adam", "adamw", "adan"] = "adam"
    # Learning rates as schedules (a number is constant; e.g. a cool-down {linear: {from: 3e-4, to: 3e-5, start:
    # 8000, end: 10000}}). A generator's own parts scale the generator's rate (the NeRF's hash grid).
    lr: Schedule = field(default_factory=lambda: Schedule.constant(1e-3))  # generator learning rate
    lr_background: Schedule = field(default_factory=lambda: Schedule.constant(1e-3))
    betas: tuple[float, ...] = (0.9, 0.99)  # Adan takes three
    eps: float = 1e-8
    weight_decay: float = 0.0
    grad_accum: int = 1  # micro-batches per optimiser step
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"  # autocast of the generator on CUDA
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    checkpoint_every: int = 500
    keep_last: int = 3  # step checkpoints kept (last/ is always kept)
    val_every: int = 0  # 0 = validate only at the end
    val_views: int = 8  # orbit views in the validation turntable
    log_every: int = 10
    max_nonfinite: int = 10  # abort after this many non-finite steps in a row
    text_cache: str | None = None  # on-disk text-embedding cache dir (built on first use) for large corpora


@dataclass(frozen=True)
class OutputConfig:
    root: str = "runs"  # run directories go to ROOT/NAME unless `dir` is set
    dir: str | None = None


@dataclass(frozen=True)
class RunConfig:
    name: str
    prior: Any = field(metadata={"family": "prior"})
    generator: Any = field(metadata={"family": "generator"})
    loss: Any = field(metadata={"family": "loss"})
    prompts: PromptsConfig = field(default_factory=PromptsConfig)
    render: RenderConfig = field(default_factory=RenderConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    seed: int = 0
    schema_version: int = SCHEMA_VERSION

    @property
    def run_dir(self) -> Path:
        return Path(self.output.dir) if self.output.dir else Path(self.output.root) / self.name


# ------------------------------------------------------------------------------------- strict builder
def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def key_text(key: Any) -> str:
    """A recipe key as a message shows it: as written when it is a short printable name, else quoted+escaped."""
    text = str(key)
    return text if isinstance(key, str) and len(text) <= 80 and text.isprintable() else shown(key)


def _convert(value: Any, tp: Any, path: str) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _convert(value, arg, path)
            except ConfigError as exc:
                errors.append(exc)
        if len(errors) == 1:  # `str | None`: the one type's own message (it names the problem more exactly)
            raise errors[0]
        raise ConfigError(f"{path}: expected {_type_name(tp)}, got {shown(value)}")
    if origin is Literal:
        return check_choice(value, args, path)
    if tp is Schedule:
        return parse_schedule(value, path)
    if origin is NamedSchedule:  # NamedSchedule[Literal[...]]: the Literal's values are the allowed names
        return parse_named_schedule(value, typing.get_args(args[0]), path)
    if dataclasses.is_dataclass(tp):
        return build_dataclass(tp, value, path)
    if origin in (tuple, list, Sequence):
        return _convert_sequence(value, tp, path)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {shown(value)}")
        return {str(k): _convert(v, args[1], f"{path}.{shown(k)}") for k, v in value.items()}
    return _convert_scalar(value, tp, path)


def _convert_sequence(value: Any, tp: Any, path: str) -> tuple:
    args = typing.get_args(tp)
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"{path}: expected a list, got {shown(value)}")
    if len(args) == 2 and args[1] is Ellipsis or typing.get_origin(tp) is not tuple:
        return tuple(_convert(v, args[0], f"{path}[{i}]") for i, v in enumerate(value))
    if len(value) != len(args):
        raise ConfigError(f"{path}: expected a list of {len(args)} values, got {len(value)}")
    return tuple(_convert(v, a, f"{path}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True)))


def _convert_scalar(value: Any, tp: Any, path: str) -> Any:
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true or false, got {shown(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: expected an integer, got {shown(value)}")
        return value
    if tp is float:
        if isinstance(value, str) and SCIENTIFIC.fullmatch(value.strip()):  # YAML 1.1 reads 1e-3 as a string
            value = float(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}: expected a number, got {shown(value)}")
        if not math.isfinite(value):
            raise ConfigError(f"{path}: expected a finite number, got {shown(value)}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {shown(value)}")
        if "\x00" in value:  # no path, name or prompt can hold one (open() raises ValueError on it)
            raise ConfigError(f"{path}: {shown(value)} holds a NUL byte (\\x00); remove it")
        return value
    raise ConfigError(f"{path}: unsupported config type {shown(tp)}")


def build_dataclass(cls: type, data: Any, path: str) -> Any:
    """Build the frozen dataclass `cls` from plain data, rejecting unknown keys and wrong types."""
    if isinstance(data, cls):
        return data
    if not isinstance(data, dict):
        raise ConfigError(f"{path or 'recipe'}: expected a mapping, got {shown(data)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    prefix = f"{path}." if path else ""
    for key in data:
        if key not in fields:
            raise ConfigError(f"{prefix}{key_text(key)}: unknown key"
                              f"{did_you_mean(str(key), fields)}; "
                              f"allowed: {', '.join(fields)}")
    kwargs = {}
    for name, f in fields.items():
        if name not in data:
            no_default = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            if no_default:
                raise ConfigError(f"{prefix}{name}: missing required key")
            continue
        family = f.metadata.get("family")
        if family:
            kwargs[name] = _build_kind(family, data[name], f"{prefix}{name}")
        else:
            kwargs[name] = _convert(data[name], hints[name], f"{prefix}{name}")
    return cls(**kwargs)


def _build_kind(family: str, data: Any, path: str) -> Any:
    if not isinstance(data, dict) or "kind" not in data:
        raise ConfigError(f"{path}: expected a mapping with a 'kind' key")
    if not isinstance(data["kind"], str):
        raise ConfigError(f"{path}.kind: expected a string, got {shown(data['kind'])}")
    cfg = build_dataclass(config_class(family, data["kind"], f"{path}.kind"), data, path)
    _check_counts(cfg, path)
    return cfg


# Integer fields of a component config (prior, generator, loss) are sizes and counts: never negative, and 0 only
# where it means "none" (layers, noise width, bias volumes): those fields say so next to their default, e.g.
# `z_dim: int = field(default=64, metadata=ZERO_OK)`. Each also has an upper bound, so a typo such as
# plane_res=100000 fails here (and at --dry-run) instead of allocating terabytes in the first step.
ZERO_OK = {"zero_ok": True}
SIZE_MAX = 65536  # widths, channels, timesteps: far above any recipe
_SIZE_MAX_BY_NAME = {"log2_hashmap_size": 26, "n_levels": 64, "num_layers": 256, "mapping_layers": 256,
                     "mlp_layers": 256, "num_views": 64, "image_size": 4096}
RES_MAX = 2048  # grid / plane / volume sides (plane_res, high_res, img_resolution, ...): 2048² is 4M cells a plane
SEED_MAX = 2**32 - 1  # numpy and torch both take it; seed·1000 + rank stays inside int64


def _size_max(name: str) -> int:
    if name in _SIZE_MAX_BY_NAME:
        return _SIZE_MAX_BY_NAME[name]
    return RES_MAX if name.endswith(("_res", "resolution")) else SIZE_MAX


def check_seed(value: int, path: str) -> None:
    if not 0 <= value <= SEED_MAX:
        raise ConfigError(f"{path}: must be between 0 and {SEED_MAX} (2^32 - 1), got {shown(value)}")


def _check_counts(cfg: Any, path: str) -> None:
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            _check_counts(value, f"{path}.{f.name}")
        elif isinstance(value, int) and not isinstance(value, bool):
            if f.name == "seed":
                check_seed(value, f"{path}.seed")
                continue
            low, high = (0 if f.metadata.get("zero_ok") else 1), _size_max(f.name)
            if not low <= value <= high:
                raise ConfigError(f"{path}.{f.name}: must be between {low} and {high:,}, got {shown(value)}")


def to_plain(obj: Any) -> Any:
    """Plain YAML data (dicts, lists, numbers, strings) for a config tree; reloads to an equal object."""
    if isinstance(obj, (Schedule, NamedSchedule)):
        return obj.to_plain()
    if dataclasses.is_dataclass(obj):
        return {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_plain(v) for k, v in obj.items()}
    return obj
