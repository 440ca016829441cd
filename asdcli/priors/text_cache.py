"""On-disk text-embedding cache for large prompt corpora (100k+ prompts).

Layout under `root/<encoder slug>/`:
- `meta.json`: encoder id, corpus hash, item count, shard size, dtype, token shape.
- `shards/shard-NNNNN.safetensors`: tokens [n, L, D], pooled [n, D] (fp16 or fp32) and keys [n] int64.
- `index.npy`: uint64 [2, N]: row 0 = sorted item keys, row 1 = shard << 32 | row. Memory-mapped.

An item is (prompt, view suffix); its key is a 64-bit BLAKE2b hash of (encoder id, prompt, suffix), so the
process never holds the corpus's strings: the index costs 16 bytes an item on disk and only the pages a lookup
touches in memory (odds of a collision among 10⁶ items ≈ 3·10⁻⁸). Reads go through safetensors' memory map
and copy out just the requested rows. Building is resumable (a shard is written under a temporary name and
renamed; finished shards are skipped) and shardable: rank r of n builds shards r, r + n, ...; the index is
written once every shard exists (by whichever call sees that first).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from asdcli.atomic import atomic_output, write_text_atomic
from asdcli.conditioning import TextEmbeddings
from asdcli.errors import UserError

VERSION = 1
_MASK32 = (1 << 32) - 1


class TextCacheMiss(KeyError):
    """A prompt (with its suffix) that the cache does not hold."""


def item_key(encoder_id: str, prompt: str, suffix: str = "") -> int:
    """64-bit key of (encoder, prompt, view suffix)."""
    data = "\x1f".join((encoder_id, prompt, suffix)).encode("utf-8")
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


def _slug(encoder_id: str) -> str:
    short = hashlib.blake2b(encoder_id.encode("utf-8"), digest_size=4).hexdigest()
    return f"{re.sub(r'[^A-Za-z0-9._-]+', '_', encoder_id)[-60:]}-{short}"


class TextEmbeddingCache:
    """Sharded, memory-mapped embeddings for one text encoder. `get` returns float32 TextEmbeddings."""

    def __init__(self, root: str | Path, encoder_id: str, shard_size: int = 1024, max_open: int = 32) -> None:
        self.encoder_id = encoder_id
        self.dir = Path(root) / _slug(encoder_id)
        self.shard_size = shard_size
        self.max_open = max_open
        self._handles: OrderedDict[int, object] = OrderedDict()
        self._index: np.ndarray | None = None

    # ------------------------------------------------------------------------------------------ paths
    def shard_path(self, shard: int) -> Path:
        return self.dir / "shards" / f"shard-{shard:05d}.safetensors"

    @property
    def meta(self) -> dict:
        path = self.dir / "meta.json"
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}

    # ------------------------------------------------------------------------------------------ building
    def _plan(self, prompts: Sequence[str], suffixes: Sequence[str]) -> tuple[np.ndarray, np.ndarray, str]:
        """Unique items in first-seen order as flat positions p (prompt p // S, suffix p % S), their keys, and
        a hash of the ordered corpus (a cache directory serves exactly one corpus)."""
        n_suf = len(suffixes)
        keys = np.fromiter((item_key(self.encoder_id, p, s) for p in prompts for s in suffixes),
                           dtype=np.uint64, count=len(prompts) * n_suf)
        _, first = np.unique(keys, return_index=True)
        positions = np.sort(first)
        digest = hashlib.blake2b(keys[positions].tobytes(), digest_size=16).hexdigest()
        return positions, keys[positions], digest

    def _check_meta(self, digest: str, n_items: int, dtype: torch.dtype) -> dict:
        want = {"version": VERSION, "encoder_id": self.encoder_id, "corpus": digest, "items": int(n_items),
                "shard_size": self.shard_size, "dtype": str(dtype).removeprefix("torch.")}
        have = self.meta
        if have:
            diff = [k for k in want if have.get(k) != want[k]]
            if diff:
                raise UserError(f"text cache {self.dir} was built with a different {', '.join(diff)}; use "
                                f"another cache directory or delete this one")
            return have
        self.dir.mkdir(parents=True, exist_ok=True)
        text = json.dumps(want, indent=1)
        write_text_atomic(self.dir / "meta.json", text)
        return want

    def build(self, prompts: Sequence[str], encode_fn: Callable[[list[str]], TextEmbeddings],
              batch_size: int = 256, rank: int = 0, world_size: int = 1, dtype: torch.dtype = torch.float16,
              suffixes: Sequence[str] = ("",), progress: bool = True) -> dict:
        """Encode every (prompt, suffix) item this rank owns and write its shards; then index if complete.

        encode_fn(texts) → TextEmbeddings (tokens [n, L, D], pooled [n, D]) for the strings prompt + suffix.
        Returns {"encoded": items encoded now, "skipped_shards": shards already on disk, "indexed": bool}."""
        if not 0 <= rank < world_size:
            raise UserError(f"text cache: rank {rank} is outside world size {world_size}")
        suffixes = list(suffixes)
        positions, keys, digest = self._plan(prompts, suffixes)
        self._check_meta(digest, len(positions), dtype)
        n_shards = -(-len(positions) // self.shard_size)
        mine = [s for s in range(rank, n_shards, world_size)]
        todo = [s for s in mine if not self.shard_path(s).is_file()]
        (self.dir / "shards").mkdir(parents=True, exist_ok=True)
        total = sum(min(self.shard_size, len(positions) - s * self.shard_size) for s in todo)
        encoded = 0
        with _progress(progress, total, f"text cache (rank {rank}/{world_size})") as advance:
            for shard in todo:
                lo, hi = shard * self.shard_size, min((shard + 1) * self.shard_size, len(positions))
                texts = [prompts[p // len(suffixes)] + suffixes[p % len(suffixes)] for p in positions[lo:hi]]
                self._write_shard(shard, texts, keys[lo:hi], encode_fn, batch_size, dtype, advance)
                encoded += hi - lo
        indexed = self.finalize(n_shards)
        return {"encoded": encoded, "skipped_shards": len(mine) - len(todo), "indexed": indexed}

    def _write_shard(self, shard: int, texts: list[str], keys: np.ndarray,
                     encode_fn: Callable[[list[str]], TextEmbeddings], batch_size: int, dtype: torch.dtype,
                     advance: Callable[[int], None]) -> None:
        tokens, pooled = [], []
        for i in range(0, len(texts), batch_size):
            emb = encode_fn(texts[i:i + batch_size])
            tokens.append(emb.tokens.detach().to("cpu", dtype))
            pooled.append(emb.pooled.detach().to("cpu", dtype))
            advance(len(texts[i:i + batch_size]))
        tensors = {"tokens": torch.cat(tokens).contiguous(), "pooled": torch.cat(pooled).contiguous(),
                   "keys": torch.from_numpy(keys.astype(np.int64))}
        meta = {"encoder_id": self.encoder_id, "shard": str(shard)}
        with atomic_output(self.shard_path(shard)) as tmp:
            save_file(tensors, str(tmp), metadata=meta)

    def finalize(self, n_shards: int | None = None) -> bool:
        """Write index.npy if every shard exists (idempotent; concurrent writers produce the same file)."""
        meta = self.meta
        if not meta:
            return False
        n_shards = n_shards if n_shards is not None else -(-meta["items"] // meta["shard_size"])
        if (self.dir / "index.npy").is_file():
            return True
        if not all(self.shard_path(s).is_file() for s in range(n_shards)):
            return False
        keys, locs = [], []
        for s in range(n_shards):
            with safe_open(str(self.shard_path(s)), framework="pt") as f:
                k = f.get_tensor("keys").numpy().astype(np.uint64)
            keys.append(k)
            locs.append((np.uint64(s) << np.uint64(32)) | np.arange(len(k), dtype=np.uint64))
        keys_all, locs_all = np.concatenate(keys), np.concatenate(locs)
        order = np.argsort(keys_all, kind="stable")
        index = np.stack([keys_all[order], locs_all[order]])
        with atomic_output(self.dir / "index.npy") as tmp, open(tmp, "wb") as fh:
            np.save(fh, index)
        return True

    # ------------------------------------------------------------------------------------------ reading
    def _load_index(self) -> np.ndarray:
        if self._index is None:
            path = self.dir / "index.npy"
            if not path.is_file() and not self.finalize():
                raise UserError(f"text cache {self.dir} is incomplete (not every shard is built); run the "
                                f"build on every rank first")
            self._index = np.load(path, mmap_mode="r")
        return self._index

    def _handle(self, shard: int) -> object:
        handle = self._handles.get(shard)
        if handle is None:
            handle = safe_open(str(self.shard_path(shard)), framework="pt")
            self._handles[shard] = handle
            if len(self._handles) > self.max_open:
                self._handles.popitem(last=False)
        self._handles.move_to_end(shard)
        return handle

    def _locate(self, prompts: Sequence[str], suffixes: Sequence[str]) -> np.ndarray:
        index = self._load_index()
        q = np.fromiter((item_key(self.encoder_id, p, s) for p, s in zip(prompts, suffixes, strict=True)),
                        dtype=np.uint64, count=len(prompts))
        pos = np.searchsorted(index[0], q)
        found = (pos < index.shape[1]) & (index[0][np.minimum(pos, index.shape[1] - 1)] == q)
        if not found.all():
            i = int(np.flatnonzero(~found)[0])
            raise TextCacheMiss(f"not in text cache {self.dir}: {prompts[i]!r} (suffix {suffixes[i]!r})")
        return np.asarray(index[1][pos])

    def get(self, prompts: Sequence[str], suffix: str | Sequence[str] = "",
            device: torch.device | str = "cpu") -> TextEmbeddings:
        """Embeddings of `prompts` (+ `suffix`, one for all or one per prompt): tokens [N, L, D] and pooled
        [N, D], float32 on `device`. Raises TextCacheMiss naming the first missing prompt."""
        suffixes = [suffix] * len(prompts) if isinstance(suffix, str) else list(suffix)
        locs = self._locate(prompts, suffixes)
        shards, rows = locs >> np.uint64(32), locs & np.uint64(_MASK32)
        tokens: torch.Tensor | None = None
        pooled: torch.Tensor | None = None
        for shard in np.unique(shards).tolist():
            sel = np.flatnonzero(shards == shard)
            handle = self._handle(shard)
            tok, pool = (_read_rows(handle, name, rows[sel].tolist()) for name in ("tokens", "pooled"))
            if tokens is None:
                tokens = tok.new_empty((len(prompts), *tok.shape[1:]))
                pooled = pool.new_empty((len(prompts), *pool.shape[1:]))
            index = torch.from_numpy(sel)
            tokens[index], pooled[index] = tok, pool
        if tokens is None:  # no prompts asked for: empty tensors of the stored shapes
            handle = self._handle(0)
            tokens = torch.empty(0, *handle.get_slice("tokens").get_shape()[1:])
            pooled = torch.empty(0, *handle.get_slice("pooled").get_shape()[1:])
        return TextEmbeddings(tokens.to(device, torch.float32), pooled.to(device, torch.float32))

    def __contains__(self, item: str | tuple[str, str]) -> bool:
        prompt, suffix = (item, "") if isinstance(item, str) else item
        try:
            self._locate([prompt], [suffix])
        except (TextCacheMiss, UserError):
            return False
        return True

    def __len__(self) -> int:
        """Items indexed (0 while the cache is missing or incomplete)."""
        try:
            return int(self._load_index().shape[1])
        except (UserError, FileNotFoundError):
            return 0


def _read_rows(handle: object, name: str, rows: list[int]) -> torch.Tensor:
    """Rows `rows` of tensor `name` of an open shard, copied out of the memory map."""
    view = handle.get_slice(name)
    try:
        return view[rows]  # one gather (safetensors ≥ 0.5 accepts a list of indices)
    except (TypeError, ValueError, IndexError):
        return torch.cat([view[r:r + 1] for r in rows])


@contextmanager
def _progress(enabled: bool, total: int, label: str) -> Iterator[Callable[[int], None]]:
    """A rich progress bar (done/total, prompts/s, ETA) yielding advance(n); a no-op when disabled."""
    if not enabled or total <= 0:
        yield lambda n: None
        return
    # lazy: rich's bar only on a terminal
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[rate]}"), TimeRemainingColumn())
    with Progress(*columns) as bar:
        task = bar.add_task(label, total=total, rate="")

        def advance(n: int) -> None:
            bar.advance(task, n)
            speed = bar.tasks[0].speed
            bar.update(task, rate=f"{speed:,.0f} prompts/s" if speed else "")

        yield advance
