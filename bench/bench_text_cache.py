"""Text-embedding cache benchmark: build throughput, lookup latency and resident memory, 1k vs 100k prompts.

Each measurement runs in a fresh subprocess so resident memory is not inherited. The encoder is the tiny random
CLIP text model (L = 16, D = 32); throughput therefore measures the cache (hashing, writing shards, indexing)
plus a cheap encoder, and memory shows whether anything grows with the corpus. RSS is split into anonymous
memory (what the process really holds) and file-backed pages (memory-mapped shard pages, reclaimable).

    python bench/bench_text_cache.py [--sizes 1000 100000] [--out bench/results/text_cache.json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COLORS = "red green blue yellow white black orange purple pink brown".split()
THINGS = "cube sphere cone cylinder torus pyramid chair table lamp teapot".split()


def synthetic_prompt(i: int) -> str:
    """Distinct prompt number i, like "a red cube next to a blue torus, no. 123"."""
    return (f"a {COLORS[i % 10]} {THINGS[(i // 10) % 10]} next to a {COLORS[(i // 100) % 10]} "
            f"{THINGS[(i // 1000) % 10]}, no. {i}")


def synthetic_prompts(n: int) -> list[str]:
    return [synthetic_prompt(i) for i in range(n)]


def memory() -> dict[str, float]:
    """Current and peak resident memory of this process, MiB (Linux /proc)."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
            out[key] = int(value.split()[0]) / 1024
    return out


def run_build(cache_dir: str, n: int) -> dict:
    import torch

    from asdcli.priors.text_cache import TextEmbeddingCache
    from asdcli.priors.tiny import TinyRandomPriorConfig, build_tiny_text

    torch.set_num_threads(1)
    encoder = build_tiny_text(TinyRandomPriorConfig(seed=0))
    prompts = synthetic_prompts(n)
    before = memory()
    cache = TextEmbeddingCache(cache_dir, encoder.encoder_id, shard_size=4096)
    start = time.perf_counter()
    cache.build(prompts, encoder.encode_uncached, batch_size=512, dtype=torch.float16, progress=False)
    seconds = time.perf_counter() - start
    after = memory()  # before the encoder-only timing below, which allocates on its own
    start = time.perf_counter()
    encoder.encode_uncached(prompts[: min(n, 5000)], batch_size=512)
    encode_only = min(n, 5000) / (time.perf_counter() - start)
    disk = sum(p.stat().st_size for p in cache.dir.rglob("*") if p.is_file())
    return {"build_s": seconds, "build_prompts_per_s": n / seconds,
            "encoder_only_prompts_per_s": encode_only, "disk_mib": disk / 2**20,
            "rss_before_build": before, "rss_after_build": after}


def run_read(cache_dir: str, n: int, lookups: int = 10_000, batch: int = 64) -> dict:
    import random

    import torch

    from asdcli.priors.text_cache import TextEmbeddingCache
    from asdcli.priors.tiny import TinyRandomPriorConfig, tiny_encoder_id

    torch.set_num_threads(1)
    rng = random.Random(0)
    cache = TextEmbeddingCache(cache_dir, tiny_encoder_id(TinyRandomPriorConfig(seed=0)), shard_size=4096)
    before = memory()
    ids = [rng.randrange(n) for _ in range(lookups)]
    names = [synthetic_prompt(i) for i in ids]
    cache.get(names[:1])  # open the index once
    start = time.perf_counter()
    for name in names:
        cache.get([name])
    single = (time.perf_counter() - start) / lookups * 1e6
    start = time.perf_counter()
    for i in range(0, lookups, batch):
        cache.get(names[i:i + batch])
    batched = (time.perf_counter() - start) / lookups * 1e6
    return {"items": len(cache), "lookup_us_single": single, f"lookup_us_batch{batch}": batched,
            "rss_open": before, "rss_after_lookups": memory()}


def _child(mode: str, cache_dir: str, n: int) -> dict:
    cmd = [sys.executable, __file__, "--child", mode, cache_dir, str(n)]
    done = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10_000, 100_000])
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "text_cache.json"))
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        mode, cache_dir, n = args.child
        print(json.dumps((run_build if mode == "build" else run_read)(cache_dir, int(n))))
        return
    results = {}
    for n in args.sizes:
        with tempfile.TemporaryDirectory(prefix="asd-text-cache-") as tmp:
            results[n] = {**_child("build", tmp, n), **_child("read", tmp, n)}
    _report(results)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({str(k): v for k, v in results.items()}, indent=1), encoding="utf-8")
    print(f"wrote {out}")


def _report(results: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="text-embedding cache (tiny encoder L=16 D=32, fp16, 4096 items/shard)")
    for col in ("prompts", "build prompts/s", "encoder-only /s", "disk MiB", "lookup µs (1)", "lookup µs (64)",
                "build RSS anon MiB", "reader RSS anon MiB", "reader RSS file MiB"):
        table.add_column(col, justify="right")
    for n, r in results.items():
        build_anon = r["rss_after_build"]["RssAnon"]
        read_anon = r["rss_after_lookups"]["RssAnon"]
        table.add_row(f"{n:,}", f"{r['build_prompts_per_s']:,.0f}", f"{r['encoder_only_prompts_per_s']:,.0f}",
                      f"{r['disk_mib']:.1f}", f"{r['lookup_us_single']:.1f}", f"{r['lookup_us_batch64']:.2f}",
                      f"{build_anon:.0f} (+{build_anon - r['rss_before_build']['RssAnon']:.0f})",
                      f"{read_anon:.0f} (+{read_anon - r['rss_open']['RssAnon']:.0f})",
                      f"{r['rss_after_lookups']['RssFile']:.0f}")
    Console(width=180).print(table)


if __name__ == "__main__":
    main()
