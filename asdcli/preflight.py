"""Fail fast, offline first: find every weight a command needs before diffusers/transformers are imported or
anything is built, and explain a missing one in ONE line (what, which file, how to download it, which recipe
key to point elsewhere).

A weight is a local file or folder, `bundled:NAME`, or a hub id. A hub id is looked up in the local Hugging
Face cache without any network. When it is not there: with HF_HUB_OFFLINE=1 that is the error; otherwise one
short request asks the hub whether the file exists (no retries). An unreachable hub is remembered for a minute
(a small file under ~/.cache/asd), so the next command fails at once instead of waiting again. When every hub
id was found in the cache, the command runs with the hub offline (`offline_first`), so no loader waits on the
network or prints retry warnings.

Imports no torch, diffusers or transformers (huggingface_hub only when a hub id is named).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from asdcli.atomic import write_bytes_atomic
from asdcli.bundled import resolve_bundled
from asdcli.errors import UserError

UNREACHABLE_TTL_S = 60.0  # how long an unreachable hub is not asked again
PROBE_TIMEOUT_S = 2.0  # one request, no retries: well inside the 5 s a missing weight may cost

# What a diffusers folder must hold for each use. Each need is a tuple of alternatives (relative paths); the
# first alternative names the need in messages.
_TEXT = (("text_encoder/config.json",),
         ("text_encoder/model.safetensors", "text_encoder/model.safetensors.index.json",
          "text_encoder/pytorch_model.bin"),
         ("tokenizer/vocab.json", "tokenizer/tokenizer.json"))
_UNET = (("unet/config.json",),
         ("unet/diffusion_pytorch_model.safetensors", "unet/diffusion_pytorch_model.safetensors.index.json",
          "unet/diffusion_pytorch_model.bin"),
         ("scheduler/scheduler_config.json",))
_VAE = (("vae/config.json",),
        ("vae/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.bin"))
_CLIP = (("config.json",), ("model.safetensors", "pytorch_model.bin"), ("tokenizer.json", "vocab.json"))


@dataclass(frozen=True)
class Weight:
    """One weight a command needs. `needs` are relative paths (with alternatives) inside a folder or a hub
    snapshot; `needs == ()` with `file` set means a single file of a hub repo (the MVDream checkpoint)."""

    key: str  # the recipe key or flag that points it elsewhere: prior.model, prior.text_model, --clip-model
    source: str  # as written: a path, bundled:NAME or a hub id
    needs: tuple[tuple[str, ...], ...] = ()
    file: str | None = None  # the one file to fetch from hub repo `source` (instead of a folder)
    revision: str | None = None
    layout: str = "a diffusers folder"  # what a local override must be, for messages
    include: tuple[str, ...] = ()  # `hf download --include` patterns for a folder


def looks_like_path(source: str) -> bool:
    """Hub ids are "name" or "owner/name"; anything else (absolute, ./, ~, deeper paths) means a local path."""
    return source.startswith(("/", ".", "~")) or "\\" in source or source.count("/") > 1


def _sd_folder(key: str, source: str, revision: str | None, text_only: bool) -> Weight:
    needs = _TEXT if text_only else _TEXT + _UNET
    subs = ("text_encoder", "tokenizer") if text_only else ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
    return Weight(key, source, needs, revision=revision,
                  include=tuple(f"{s}/*" for s in subs) + (() if text_only else ("model_index.json",)))


# Prior kinds whose prior.model is a diffusers folder or hub id (registry names; shapesworld is the SD path).
SD_FOLDER_KINDS = ("stable-diffusion", "shapesworld")


def _get(prior: Any, key: str) -> str | None:
    """A string value of a prior section: a validated config (defaults filled in) or the raw recipe mapping
    (only what the recipe wrote; anything else is left to the check after validation)."""
    value = prior.get(key) if isinstance(prior, dict) else getattr(prior, key, None)
    return value if isinstance(value, str) and value else None


def training_weights(prior: Any) -> list[Weight]:
    """The weights `asd train` / `asd distill` load for the recipe's `prior` section (a config or raw mapping)."""
    kind = _get(prior, "kind")
    model = _get(prior, "model")
    if kind in SD_FOLDER_KINDS and model:
        return [_sd_folder("prior.model", model, _get(prior, "revision"), text_only=False)]
    if kind == "mvdream":
        return _mvdream_weights(prior)
    return []  # tiny-random and other in-process priors load nothing


def _mvdream_weights(prior: Any) -> list[Weight]:
    out = []
    model, file = _get(prior, "model"), _get(prior, "checkpoint_file")
    if model and (file or looks_like_path(model) or model.startswith("bundled:")):
        out.append(Weight("prior.model", model, file=file, revision=_get(prior, "revision"),
                          layout="the .pt/.safetensors checkpoint or a diffusers MVDream folder"))
    text_model = _get(prior, "text_model")  # None: the checkpoint's own text encoder
    if text_model:
        out.append(_sd_folder("prior.text_model", text_model, None, text_only=True))
    return out


def text_weights(prior: Any) -> list[Weight]:
    """The weights `asd generate` / `export` / `eval` load: the prior's text side only."""
    kind, model = _get(prior, "kind"), _get(prior, "model")
    if kind in SD_FOLDER_KINDS and model:
        return [_sd_folder("prior.model", model, _get(prior, "revision"), text_only=True)]
    if kind == "mvdream":
        weights = _mvdream_weights(prior)
        return [w for w in weights if w.key == "prior.text_model"] or weights  # else the checkpoint's own
    return []


def clip_weight(source: str) -> Weight:
    return Weight("--clip-model", source, _CLIP, layout="a transformers CLIPModel folder",
                  include=("*.json", "*.txt", "model.safetensors"))


# ------------------------------------------------------------------------------------------- resolving
def _missing_in(folder: Path, needs: tuple[tuple[str, ...], ...]) -> str | None:
    """The first need with no alternative present in `folder` (its first alternative), or None."""
    for alternatives in needs:
        if not any((folder / rel).exists() for rel in alternatives):
            return alternatives[0]
    if any(n[0] == "unet/config.json" for n in needs):  # a latent UNet needs the VAE (else: pixel space)
        try:
            latent = json.loads((folder / "unet" / "config.json").read_text(encoding="utf-8")).get("in_channels")
        except (OSError, ValueError):
            latent = None
        if latent not in (None, 3):
            return _missing_in(folder, _VAE)
    return None


def _local(w: Weight) -> Path | None:
    """The local path `w.source` names (bundled:NAME, a file or folder), None for a hub id; UserError when a
    local path is missing or incomplete."""
    path = resolve_bundled(w.source)
    if path is None and not (looks_like_path(w.source) or Path(w.source).expanduser().exists()):
        return None
    path = path if path is not None else Path(w.source).expanduser()
    if not path.exists():
        sep = " " if w.key.startswith("--") else "="
        raise UserError(f"{w.key}: {w.source!r} not found: the path does not exist; set {w.key}{sep}PATH to "
                        f"{w.layout} or to a hub id")
    if w.needs and path.is_dir():
        lacking = _missing_in(path, w.needs)
        if lacking:
            sub = Path(lacking).parent
            what = f"{sub}/ subfolder" if sub.parts and not (path / sub).is_dir() else lacking
            raise UserError(f"{w.key}: {w.source!r} has no {what}; {w.key} must be {w.layout}")
    elif w.needs:
        raise UserError(f"{w.key}: {w.source!r} is a file; {w.key} must be {w.layout}")
    return path


def _hub_cache() -> Path:
    # lazy: huggingface_hub only for hub ids: a local folder resolves without it
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def _cached(w: Weight) -> tuple[Path | None, str]:
    """(local path in the Hugging Face cache or None, the file that is missing)."""
    # lazy: huggingface_hub only for hub ids: a local folder resolves without it
    from huggingface_hub import try_to_load_from_cache

    first = w.file or w.needs[0][0]
    try:
        found = try_to_load_from_cache(w.source, first, cache_dir=_hub_cache(), revision=w.revision)
    except ValueError as exc:  # a malformed repo id or file name
        raise UserError(f"{w.key}: {w.source!r} is neither a local path nor a hub id ({exc})") from None
    if not isinstance(found, str):
        return None, first
    if w.file:
        return Path(found), first
    snapshot = Path(found).parents[len(Path(first).parts) - 1]
    lacking = _missing_in(snapshot, w.needs)
    return (None, lacking) if lacking else (snapshot, "")


def _download_command(w: Weight) -> str:
    rev = f" --revision {w.revision}" if w.revision else ""
    if w.file:
        return f"hf download {w.source} {w.file}{rev}"
    include = " ".join(f'"{p}"' for p in w.include)
    return f'hf download {w.source}{rev} --include {include} --exclude "*fp16*" "*non_ema*" "*.bin"'


def _override_hint(w: Weight) -> str:
    leaf = w.file or w.source.rsplit("/", 1)[-1]
    sep = " " if w.key.startswith("--") else "="
    return f"{w.key}{sep}/path/to/{leaf} ({w.layout})"


# ------------------------------------------------------------------------------------------- the hub
def hub_offline() -> bool:
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
               for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _memo_file() -> Path:
    root = os.environ.get("ASD_CACHE_DIR") or os.path.join(os.environ.get("XDG_CACHE_HOME") or "~/.cache", "asd")
    return Path(root).expanduser() / "hub_unreachable.json"


def _unreachable_since(endpoint: str) -> float | None:
    """Seconds since `endpoint` was found unreachable, if that was less than UNREACHABLE_TTL_S ago."""
    try:
        when = float(json.loads(_memo_file().read_text(encoding="utf-8")).get(endpoint, 0.0))
    except (OSError, ValueError, TypeError, AttributeError):
        return None
    age = time.time() - when
    return age if 0 <= age < UNREACHABLE_TTL_S else None


def _remember_unreachable(endpoint: str) -> None:
    path = _memo_file()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(path, json.dumps({endpoint: time.time()}).encode())
    except (OSError, UserError):  # a read-only home only costs the next command one more probe
        pass


def _probe(w: Weight) -> tuple[str, str]:
    """Ask the hub once whether `w`'s first file exists: ("ok" | "missing" | "unreachable", reason)."""
    # lazy: network code and huggingface_hub only for the one hub probe
    import urllib.error
    import urllib.request
    from urllib.parse import quote

    from huggingface_hub import constants, get_token

    endpoint = constants.ENDPOINT.rstrip("/")
    age = _unreachable_since(endpoint)
    if age is not None:
        return "unreachable", (f"was unreachable {age:.0f} s ago (not asked again for {UNREACHABLE_TTL_S:.0f} s; "
                               f"delete {_memo_file()} to retry now)")
    first = w.file or w.needs[0][0]
    url = f"{endpoint}/{w.source}/resolve/{quote(w.revision or 'main', safe='')}/{quote(first)}"
    headers = {"User-Agent": "asdcli"}
    token = get_token()
    if token:
        headers["Authorization"] = f"Bearer {token}"

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):  # a redirect to the file store already says it exists
            return None

    try:
        with urllib.request.build_opener(NoRedirect).open(
                urllib.request.Request(url, method="HEAD", headers=headers), timeout=PROBE_TIMEOUT_S):
            return "ok", ""
    except urllib.error.HTTPError as exc:
        if exc.code < 400:
            return "ok", ""
        if exc.code in (401, 403, 404):
            return "missing", f"the hub answers HTTP {exc.code} (no such repo or file, or it needs `hf auth login`)"
        _remember_unreachable(endpoint)
        return "unreachable", f"answers HTTP {exc.code}"
    except (urllib.error.URLError, OSError) as exc:  # refused, DNS, timeout
        _remember_unreachable(endpoint)
        return "unreachable", f"is unreachable ({getattr(exc, 'reason', exc)})"


def _not_cached(w: Weight, lacking: str, why: str) -> str:
    return (f"{w.key}: {w.source} ({lacking}) is not in the local Hugging Face cache ({_hub_cache()}) and {why}; "
            f"download it with `{_download_command(w)}`, or set {_override_hint(w)}")


def _check_downloadable(problems: list[tuple[Weight, str]]) -> None:
    """Raise one line for the first weight that cannot be downloaded now; return when the hub can serve all."""
    # lazy: huggingface_hub only for hub ids: a local folder resolves without it
    from huggingface_hub import constants

    also = "; also not cached: " + ", ".join(f"{w.key} ({w.source})" for w, _ in problems[1:]) if problems[1:] else ""
    if hub_offline():
        w, lacking = problems[0]
        raise UserError(_not_cached(w, lacking, "HF_HUB_OFFLINE=1 forbids downloading it") + also)
    for w, lacking in problems:
        status, reason = _probe(w)
        if status == "unreachable":
            raise UserError(_not_cached(w, lacking, f"the hub ({constants.ENDPOINT}) {reason}") + also)
        if status == "missing":
            raise UserError(_not_cached(w, lacking, f"{reason}; check the id") + also)


@dataclass(frozen=True)
class Resolved:
    path: Path | None  # the local file/folder; None = not cached, the loader downloads it
    hub: bool  # named by a hub id


def resolve(weights: list[Weight]) -> list[Resolved]:
    """Where each weight is on this machine. A missing one that cannot be downloaded now is ONE UserError."""
    found: list[Resolved] = []
    problems: list[tuple[Weight, str]] = []
    for w in weights:
        local = _local(w)
        if local is not None:
            found.append(Resolved(local, hub=False))
            continue
        path, lacking = _cached(w)
        found.append(Resolved(path, hub=True))
        if path is None:
            problems.append((w, lacking))
    if any(r.hub for r in found) and "HF_HUB_VERBOSITY" not in os.environ:
        # the hub client logs every retry of a failed request as a warning: noise around our one-line errors
        logging.getLogger("huggingface_hub").setLevel(logging.ERROR)
    if problems:
        _check_downloadable(problems)
    return found


@contextmanager
def offline_first(weights: list[Weight]) -> Iterator[list[Resolved]]:
    """Resolve `weights` (one-line UserError when one is missing); when each hub id was found in the cache, run
    the body with the hub offline, so the loaders read the cache and never wait on the network."""
    found = resolve(weights)
    if not any(r.hub for r in found) or any(r.path is None for r in found):
        yield found
        return
    # lazy: huggingface_hub only when a weight comes from the hub
    import huggingface_hub.constants as constants

    saved_env, saved_const = os.environ.get("HF_HUB_OFFLINE"), constants.HF_HUB_OFFLINE
    os.environ["HF_HUB_OFFLINE"], constants.HF_HUB_OFFLINE = "1", True
    try:
        yield found
    finally:
        constants.HF_HUB_OFFLINE = saved_const
        if saved_env is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = saved_env


def local_clip(source: str) -> str:
    """`--clip-model` as a path the loader can open without the network when it is cached; else unchanged."""
    found = resolve([clip_weight(source)])[0]
    return str(found.path) if found.path is not None else source
