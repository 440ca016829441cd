"""Text-embedding cache benchmark: build throughput, lookup latency and resident memory, 1k vs 10k vs 100k prompts.

    python bench/bench_text_cache.py [--quick] [--threads 1] [--gpu] [--sizes 1000 10000 100000] [--out ...]

Each measurement runs in a fresh subprocess so resident memory is not inherited. The encoder is the tiny random
CLIP text model (L = 16, D = 32; on CUDA with --gpu); throughput therefore measures the cache (hashing, writing
shards, indexing) plus a cheap encoder, and memory shows whether anything grows with the corpus. RSS is split into
anonymous memory (what the process really holds) and file-backed pages (memory-mapped shard pages, reclaimable).
bench_corpus.py measures the cache through the training engine.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time

import common


def run_build(cache_dir: str, n: int, device: str) -> dict:
    import torch

    from asdcli.priors.text_cache import TextEmbeddingCache
    from asdcli.priors.tiny import TinyRandomPriorConfig, build_tiny_text

    encoder = build_tiny_text(TinyRandomPriorConfig(seed=0), device)
    prompts = common.synthetic_prompts(n)
    before = common.memory()
    cache = TextEmbeddingCache(cache_dir, encoder.encoder_id, shard_size=4096)
    start = time.perf_counter()
    cache.build(prompts, encoder.encode_uncached, batch_size=512, dtype=torch.float16, progress=False)
    seconds = time.perf_counter() - start
    after = common.memory()  # before the encoder-only timing below, which allocates on its own
    start = time.perf_counter()
    encoder.encode_uncached(prompts[: min(n, 5000)], batch_size=512)
    encode_only = min(n, 5000) / (time.perf_counter() - start)
    disk = sum(p.stat().st_size for p in cache.dir.rglob("*") if p.is_file())
    return {"build_s": seconds, "build_prompts_per_s": n / seconds,
            "encoder_only_prompts_per_s": encode_only, "disk_mib": disk / 2**20,
            "rss_before_build": before, "rss_after_build": after}


def run_read(cache_dir: str, n: int, lookups: int = 10_000, batch: int = 64) -> dict:
    import random

    from asdcli.priors.text_cache import TextEmbeddingCache
    from asdcli.priors.tiny import TinyRandomPriorConfig, tiny_encoder_id

    rng = random.Random(0)
    cache = TextEmbeddingCache(cache_dir, tiny_encoder_id(TinyRandomPriorConfig(seed=0)), shard_size=4096)
    before = common.memory()
    ids = [rng.randrange(n) for _ in range(lookups)]
    names = [common.synthetic_prompt(i) for i in ids]
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
            "rss_open": before, "rss_after_lookups": common.memory()}


def _child(mode: str, cache_dir: str, n: int, args) -> dict:
    cmd = [sys.executable, __file__, "--threads", str(args.threads), "--child", mode, cache_dir, str(n)]
    cmd += ["--gpu"] if args.gpu else []
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=common.ROOT, env=common.child_env(args.threads))
    if done.returncode != 0:
        raise RuntimeError(f"text cache {mode} child failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def report(results: dict) -> str:
    rows = []
    for n, r in results.items():
        build_anon, read_anon = r["rss_after_build"]["RssAnon"], r["rss_after_lookups"]["RssAnon"]
        rows.append([n, r["build_prompts_per_s"], r["encoder_only_prompts_per_s"], r["disk_mib"],
                     r["lookup_us_single"], r["lookup_us_batch64"],
                     f"{build_anon:.0f} (+{build_anon - r['rss_before_build']['RssAnon']:.0f})",
                     f"{read_anon:.0f} (+{read_anon - r['rss_open']['RssAnon']:.0f})",
                     r["rss_after_lookups"]["RssFile"]])
    return common.table(
        "text-embedding cache (tiny encoder L=16 D=32, fp16, 4096 items/shard)",
        ["prompts", "build prompts/s", "encoder-only /s", "disk MiB", "lookup us (1)", "lookup us (64)",
         "build RSS anon MiB", "reader RSS anon MiB", "reader RSS file MiB"], rows)


def main(argv: list[str] | None = None) -> dict | None:
    parser = common.parser(__doc__.splitlines()[0], "text_cache")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10_000, 100_000])
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    device = common.setup(args)
    if args.child:
        mode, cache_dir, n = args.child
        print(json.dumps(run_build(cache_dir, int(n), device) if mode == "build" else run_read(cache_dir, int(n))))
        return None
    if args.quick:
        args.sizes = [n for n in args.sizes if n <= 10_000]
    results = {}
    for n in args.sizes:
        with tempfile.TemporaryDirectory(prefix="asd-text-cache-") as tmp:
            results[n] = {**_child("build", tmp, n, args), **_child("read", tmp, n, args)}
    text = report(results)
    result = {"device": device, "sizes": {str(k): v for k, v in results.items()}, "tables": [text]}
    common.write_result(args.out, "text_cache", args, result)
    return result


if __name__ == "__main__":
    main()
