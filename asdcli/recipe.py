"""Reading recipes: YAML files, `base:` inheritance, `key.path=value` overrides, dump and reload.

Order of precedence (fixed and tested): dataclass defaults < `base:` recipe < the recipe < `key.path=value`
overrides < named flags (`--steps`, `--out`, `--device`). Everything is validated (config.build_dataclass)
before any model loads.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from asdcli.config import SCHEMA_VERSION, RunConfig, build_dataclass, check_seed, is_device_name, to_plain
from asdcli.errors import ConfigError, UserError, shown
from asdcli.safeio import RECIPE_MAX_BYTES, check_path, decode_text, read_bounded, safe_yaml
from asdcli.schedule import FORMS as SCHEDULE_FORMS


def read_yaml_mapping(path: str | os.PathLike) -> dict:
    """A YAML file that must hold a mapping; every failure is one ConfigError line. The file is read only up to
    RECIPE_MAX_BYTES and its YAML bounded (see asdcli.safeio) before any value is built."""
    p = check_path(path, "recipe path")
    if p.is_dir():
        raise ConfigError(f"{p}: is a directory; pass a recipe YAML file such as {p}/tiny_cpu.yaml")
    try:
        data = read_bounded(p, RECIPE_MAX_BYTES, "recipe file")
    except UserError as exc:
        msg = str(exc).replace("recipe file not found", "recipe file not found; check the path (recipes live "
                                                         "in recipes/*.yaml)")
        raise ConfigError(msg) from None
    text = decode_text(data, p, "save the recipe as UTF-8 YAML").replace("not UTF-8 (", "not UTF-8 text (")
    return _yaml_mapping(text, p)


def _yaml_mapping(text: str, p: Path) -> dict:
    try:
        data = safe_yaml(text, str(p))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"{p}: malformed YAML{where}: {problem}") from None
    except RecursionError:
        raise ConfigError(f"{p}: malformed YAML: nested too deeply; a recipe is a few levels of key: value") from None
    if data is None:
        raise ConfigError(f"{p}: the recipe is empty; it needs at least name, prior, generator and loss")
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: a recipe is a YAML mapping (key: value), got a {type(data).__name__}")
    return data


def _schedule_form(value) -> str | None:
    """"linear", "piecewise" or "keyframes" for a schedule mapping ({form: {...}}), else None."""
    if isinstance(value, dict) and len(value) == 1 and next(iter(value)) in SCHEDULE_FORMS:
        return next(iter(value))
    return None


def merge(base: dict, child: dict) -> dict:
    """Deep merge; a section whose `kind` changes is replaced, not merged (its keys would not fit), and so is a
    schedule ({piecewise: ...} over {linear: ...} is one value, not two)."""
    out = dict(base)
    for key, val in child.items():
        old = out.get(key)
        same_kind = not (isinstance(val, dict) and "kind" in val and isinstance(old, dict)
                         and old.get("kind") != val["kind"]) and not _schedule_form(val)
        if isinstance(val, dict) and isinstance(old, dict) and same_kind:
            out[key] = merge(old, val)
        else:
            out[key] = val
    return out


def load_raw(path: str | os.PathLike, _seen: tuple = ()) -> dict:
    """The recipe as plain data with its `base:` chain merged in (base first)."""
    try:
        p = check_path(path, "base").resolve()
    except (OSError, RuntimeError):  # a symlink loop (RuntimeError before Python 3.13)
        raise ConfigError(f"{path}: cannot read (a symlink loop); point at the recipe file itself") from None
    if p in _seen:
        raise ConfigError(f"{p}: `base:` chain loops back to this file")
    data = read_yaml_mapping(path)
    base = data.pop("base", None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise ConfigError(f"{path}: base: expected a recipe path (string), got {shown(base)}")
    check_path(base, f"{path}: base")
    base_path = (Path(path).parent / base) if not Path(base).is_absolute() else Path(base)
    return merge(load_raw(base_path, _seen + (p,)), data)


def parse_override(text: str) -> tuple[list[str], Any]:
    """'train.steps=10' → (['train', 'steps'], 10); the value is typed by YAML."""
    if "=" not in text:
        raise ConfigError(f"override {shown(text)}: expected key.path=value, e.g. train.steps=100")
    key, _, raw = text.partition("=")
    parts = key.strip().split(".")
    if not key.strip() or any(not p for p in parts):
        raise ConfigError(f"override {shown(text)}: empty key; expected key.path=value, e.g. train.steps=100")
    try:
        value = safe_yaml(raw, f"override {key.strip()}") if raw.strip() else ""
    except (yaml.YAMLError, RecursionError):
        value = raw
    return parts, value


def apply_override(data: dict, parts: list[str], value: Any) -> dict:
    out = dict(data)
    node = out
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = {}
        elif not isinstance(child, dict):
            raise ConfigError(f"override {'.'.join(parts)}: {'.'.join(parts[:i + 1])} is not a section")
        node[part] = dict(child)
        node = node[part]
    leaf = parts[-1]
    if isinstance(value, dict) and isinstance(node.get(leaf), dict) and "kind" not in value \
            and not _schedule_form(value):
        node[leaf] = {**node[leaf], **value}
    else:
        node[leaf] = value
    return out


def load_recipe(path: str | os.PathLike | None = None, overrides: list[str] = (), flags: dict | None = None,
                raw: dict | None = None) -> RunConfig:
    """defaults < base < recipe < overrides < flags, validated into a frozen RunConfig."""
    cfg = build_dataclass(RunConfig, merged_recipe(path, overrides, flags, raw), "")
    validate(cfg)
    return cfg


def merged_recipe(path: str | os.PathLike | None = None, overrides: list[str] = (), flags: dict | None = None,
                  raw: dict | None = None) -> dict:
    """base < recipe < overrides < flags as plain data, not validated yet (so no component module, and no
    torch, is imported: the weight preflight reads it)."""
    data = load_raw(path) if raw is None else dict(raw)
    data.pop("schema_version", None) if data.get("schema_version") == SCHEMA_VERSION else None
    if "schema_version" in data:
        raise ConfigError(f"schema_version: this asd reads version {SCHEMA_VERSION}, the recipe has "
                          f"{shown(data['schema_version'])}; use the asd release that wrote it")
    for item in overrides:
        data = apply_override(data, *parse_override(item))
    for dotted, value in (flags or {}).items():  # named flags: the caller drops the ones not given
        data = apply_override(data, dotted.split("."), value)
    return data


# Upper bounds of the run's own counts: what one step allocates grows with them, so a typo (samples_per_ray=1e8)
# must fail at load (and --dry-run), not as an out-of-memory kill minutes later.
_COUNT_MAX = {"train.grad_accum": 4096, "train.keep_last": 100_000, "train.val_views": 360,
              "render.prompts_per_step": 4096, "render.views_per_prompt": 256, "render.samples_per_ray": 4096,
              "render.importance_samples": 4096, "render.chunk_rays": 1 << 24, "prompts.num_val": 100_000}
SAMPLES_PER_STEP_MAX = 1 << 33  # P·V·resolution²·samples: ~8.6e9 points a step is beyond any GPU's memory


def validate(cfg: RunConfig) -> None:
    """Cross-field checks that types alone cannot express."""
    positive = {
        "train.steps": cfg.train.steps, "train.grad_accum": cfg.train.grad_accum,
        "train.checkpoint_every": cfg.train.checkpoint_every, "train.keep_last": cfg.train.keep_last,
        "train.log_every": cfg.train.log_every, "train.max_nonfinite": cfg.train.max_nonfinite,
        "render.prompts_per_step": cfg.render.prompts_per_step,
        "render.views_per_prompt": cfg.render.views_per_prompt,
        "render.samples_per_ray": cfg.render.samples_per_ray, "train.val_views": cfg.train.val_views,
    }
    for key, val in positive.items():
        if val < 1:
            raise ConfigError(f"{key}: must be >= 1, got {val}")
    if cfg.train.val_every < 0:
        raise ConfigError(f"train.val_every: must be >= 0 (0 = only at the end), got {cfg.train.val_every}")
    non_negative = {"prompts.num_val": cfg.prompts.num_val, "render.importance_samples": cfg.render.importance_samples,
                    "train.weight_decay": cfg.train.weight_decay,
                    "train.lr_background": cfg.train.lr_background.lowest()}
    for key, val in non_negative.items():
        if val < 0:
            raise ConfigError(f"{key}: must be >= 0, got {val}")
    if not cfg.train.eps > 0:  # Adam divides by sqrt(v) + eps: 0 turns a zero gradient into NaN weights
        raise ConfigError(f"train.eps: must be > 0 (Adam's denominator term, e.g. 1e-8), got {cfg.train.eps:g}")
    check_seed(cfg.seed, "seed")
    lrs = cfg.train.lr.values()
    if min(lrs) < 0 or max(lrs) <= 0:
        raise ConfigError(f"train.lr: must be >= 0 at every step and > 0 somewhere, got {cfg.train.lr.to_plain()}")
    if not all(0.0 <= b < 1.0 for b in cfg.train.betas):
        raise ConfigError(f"train.betas: each must be in [0, 1), got {list(cfg.train.betas)}")
    _check_render(cfg.render)
    _check_upper_bounds(cfg)
    dev = cfg.train.device
    if not is_device_name(dev):
        raise ConfigError(f"train.device: expected auto, cpu, cuda or cuda:N, got {shown(dev)}")
    if cfg.prompts.library is None and not cfg.prompts.items:
        raise ConfigError("prompts: give prompts.library (a JSON or text file) or prompts.items (a list)")
    if not cfg.name or "/" in cfg.name or cfg.name in (".", ".."):
        raise ConfigError(f"name: expected a plain run name without '/', got {shown(cfg.name)}")


def _check_upper_bounds(cfg: RunConfig) -> None:
    for key, high in _COUNT_MAX.items():
        section, _, name = key.partition(".")
        val = getattr(getattr(cfg, section), name)
        if val > high:
            raise ConfigError(f"{key}: at most {high:,}, got {val:,}; lower it (it sets what one step allocates)")
    r = cfg.render
    points = (r.prompts_per_step * r.views_per_prompt * max(r.resolution.values()) ** 2
              * (r.samples_per_ray + r.importance_samples))
    if points > SAMPLES_PER_STEP_MAX:
        raise ConfigError(f"render: prompts_per_step · views_per_prompt · resolution² · samples = {points:.3g} "
                          f"points a step, over {SAMPLES_PER_STEP_MAX:.3g}; lower one of them")


def _check_render(render) -> None:
    """Sizes and camera ranges that would crash (or exhaust memory) in the first step instead of failing here."""
    for res in render.resolution.values():
        if not 1 <= res <= 4096:
            raise ConfigError(f"render.resolution: must be between 1 and 4096 pixels, got {res:g}")
    for key, val in (("render.chunk_rays", render.chunk_rays), ("render.radius", render.radius),
                     ("render.inv_std", render.inv_std), ("render.camera.eval_distance", render.camera.eval_distance)):
        if val <= 0:
            raise ConfigError(f"{key}: must be > 0, got {val}")
    cam = render.camera
    for key, (lo, hi) in (("render.camera.fovy", cam.fovy), ("render.camera.distance", cam.distance)):
        if not 0 < lo <= hi or (key.endswith("fovy") and hi >= 180):
            raise ConfigError(f"{key}: need 0 < low <= high{' < 180' if key.endswith('fovy') else ''}, "
                              f"got [{lo:g}, {hi:g}]")
    if not 0 < cam.eval_fovy < 180:
        raise ConfigError(f"render.camera.eval_fovy: must be in (0, 180) degrees, got {cam.eval_fovy:g}")
    prob = render.background_random_prob
    if prob is not None and not 0.0 <= prob <= 1.0:
        raise ConfigError(f"render.background_random_prob: must be in [0, 1], got {prob:g}")


def dump_recipe(cfg: RunConfig) -> str:
    """The resolved recipe as plain YAML (no Python tags), with schema_version."""
    return yaml.safe_dump(to_plain(cfg), sort_keys=False, allow_unicode=True)


def load_dumped(text: str) -> RunConfig:
    try:
        data = safe_yaml(text, "recipe.yaml")
    except (yaml.YAMLError, RecursionError):
        raise ConfigError("recipe.yaml: malformed YAML; the run directory is damaged") from None
    if not isinstance(data, dict):
        raise ConfigError("recipe.yaml: not a mapping; the run directory is damaged")
    return load_recipe(raw=data)


def flag_overrides(steps: int | None, out: str | os.PathLike | None, device: str | None) -> dict:
    """The recipe keys set by the commands' --steps, --out/--run-dir and --device (None: not given), as the
    `flags` of load_recipe/merged_recipe. Public for scripts (bench/) that mirror `asd train`."""
    if steps is not None and steps < 1:
        raise UserError(f"--steps: must be >= 1, got {steps}")
    given = {"train.steps": steps, "output.dir": str(out) if out is not None else None, "train.device": device}
    return {k: v for k, v in given.items() if v is not None}
