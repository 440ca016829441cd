"""Corpus scaling: engine step time and resident memory at 16, 1k, 10k and 100k prompts (and the 17k real
Instant3D prompts, the bundled `instant3d_17000` library), with the on-disk text-embedding cache.

    python bench/bench_corpus.py [--quick] [--threads 1] [--gpu] [--sizes 16 1000 10000 100000] [--out ...]

Targets (DESIGN §9): step time at 100k ≤ 1.05 × at 16; resident memory growth 16 → 100k ≤ 200 MB.

How: every corpus is a prompt file read the way `asd train` reads `prompts.library`, and trains the tiny CPU recipe
with `train.text_cache=DIR`. Per corpus, a fresh "build" process builds the cache (the engine's own
attach_text_cache: every prompt × view suffix + the negative prompt), timed on its own; then one fresh "step" process
per corpus builds its Trainer (which finds the cache complete), runs warm-up steps and waits. All step processes
stay alive and the parent interleaves them: in each round every corpus runs the same number of steps, one process
at a time (so they never compete for the cores), order rotated per round. Step-time ratios are paired per round;
memory is each process's RSS after warm-up and at the end (VmRSS, and RssAnon = what it really holds, without
the memory-mapped cache pages that the kernel can drop).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common

SIZES = (16, 1000, 10_000, 100_000)


def write_corpus(tmp: Path, name: str, n: int | None) -> Path:
    """A prompt library file: n synthetic prompts (one per line), or the real Instant3D library (by name)."""
    if n is None:
        return Path(common.REAL_PROMPTS)
    path = tmp / f"{name}.txt"
    path.write_text("\n".join(common.synthetic_prompts(n)) + "\n", encoding="utf-8")
    return path


def corpus_config(library: Path, cache: Path, run_dir: Path, gpu: bool):
    overrides = [f"prompts.library={library}", f"train.text_cache={cache}", "train.val_every=0"]
    if gpu:  # the tiny recipe on CUDA: the cache path is what is measured, the prior size does not matter
        overrides.append("train.device=cuda")
    return common.tiny_config(overrides, run_dir=run_dir)


# ------------------------------------------------------------------------------------------- child processes
def child_build(library: str, cache: str, run_dir: str, gpu: bool) -> dict:
    """Build the cache exactly as the Trainer does (prior built alone, not timed)."""
    from asdcli.engine.components import resolve_device
    from asdcli.engine.distributed import DistInfo
    from asdcli.engine.trainer import attach_text_cache
    from asdcli.registry import build

    cfg = corpus_config(Path(library), Path(cache), Path(run_dir), gpu)
    prompts = _prompts(cfg)
    prior = build("prior", cfg.prior, device=resolve_device(cfg.train.device))
    start = time.perf_counter()
    attach_text_cache(prior, cache, prompts, DistInfo(), quiet=True)
    seconds = time.perf_counter() - start
    disk = sum(p.stat().st_size for p in Path(cache).rglob("*") if p.is_file())
    items = len(prior.text._disk)
    return {"prompts": len(prompts), "items": items, "build_s": seconds, "items_per_s": items / seconds,
            "disk_mib": disk / 2**20, "rss_after_build": common.memory()}


def _prompts(cfg) -> list[str]:
    from asdcli.prompts import recipe_prompts

    return recipe_prompts(cfg)[0]


def child_steps(library: str, cache: str, run_dir: str, gpu: bool, warmup: int) -> None:
    """Serve the parent: after setup and warm-up print one JSON line, then answer "steps K" / "quit" lines."""
    from asdcli.engine.trainer import Trainer

    start = time.perf_counter()
    cfg = corpus_config(Path(library), Path(cache), Path(run_dir), gpu)
    prompts, val = _prompts(cfg), []
    trainer = Trainer(cfg, prompts, val, quiet=True)
    setup_s = time.perf_counter() - start
    del prompts  # the Trainer keeps its own list; hold nothing else the engine would not
    device = "cuda" if gpu else "cpu"
    for _ in range(warmup):
        trainer.train_step()
    _reply({"setup_s": setup_s, "corpus": len(trainer.all_prompts), "rss_warm": common.memory()})
    for line in sys.stdin:
        cmd = line.split()
        if not cmd or cmd[0] == "quit":
            break
        times = [common.time_calls(trainer.train_step, 1, device) for _ in range(int(cmd[1]))]
        _reply({"wall": [t["wall"] for t in times], "cpu": [t["cpu"] for t in times], "rss": common.memory()})


def _reply(obj: dict) -> None:
    print(json.dumps(obj), flush=True)


# ------------------------------------------------------------------------------------------- parent
class StepProcess:
    """A fresh Python process holding one corpus's Trainer, driven line by line."""

    def __init__(self, library: Path, cache: Path, run_dir: Path, args, warmup: int, log: Path):
        cmd = [sys.executable, __file__, "--threads", str(args.threads), "--child", "steps", str(library),
               str(cache), str(run_dir), str(int(args.gpu)), str(warmup)]
        self.log, self.stderr = log, log.open("w")  # a file, not a pipe: nobody reads stderr while steps run
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr,
                                     text=True, env=common.child_env(args.threads), cwd=common.ROOT)
        self.ready = self.read()

    def read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"corpus step process ended early:\n{self.log.read_text()[-2000:]}")
        return json.loads(line)

    def steps(self, n: int) -> dict:
        self.proc.stdin.write(f"steps {n}\n")
        self.proc.stdin.flush()
        return self.read()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.write("quit\n")
            self.proc.stdin.close()
            self.proc.wait(timeout=60)
        self.stderr.close()


def run_build(library: Path, cache: Path, run_dir: Path, args) -> dict:
    cmd = [sys.executable, __file__, "--threads", str(args.threads), "--child", "build", str(library), str(cache),
           str(run_dir), str(int(args.gpu))]
    done = subprocess.run(cmd, capture_output=True, text=True, env=common.child_env(args.threads), cwd=common.ROOT)
    if done.returncode != 0:
        raise RuntimeError(f"cache build failed for {library}:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def interleave_steps(procs: dict[str, StepProcess], rounds: int, per_round: int) -> dict[str, dict]:
    """Round-robin: each corpus runs `per_round` steps per round, one process at a time, rotated order; per round
    the median step time of each corpus on both clocks."""
    import statistics

    names = list(procs)
    per_clock: dict[str, dict[str, list[float]]] = {"wall": {k: [] for k in names}, "cpu": {k: [] for k in names}}
    last: dict[str, dict] = {}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            last[name] = procs[name].steps(per_round)
            for key in per_clock:
                per_clock[key][name].append(statistics.median(last[name][key]))
    return {k: {"round_s": {key: per_clock[key][k] for key in per_clock}, "rss_end": last[k]["rss"]}
            for k in names}


def corpora(args) -> dict[str, int | None]:
    out: dict[str, int | None] = {f"{n:,} synthetic": n for n in args.sizes}
    if not args.quick:
        out["17k real (Instant3D)"] = None
    return out


def measure(args, tmp: Path) -> dict[str, dict]:
    rounds, per_round, warmup = (4, 1, 2) if args.quick else (30, 2, 5)
    results: dict[str, dict] = {}
    procs: dict[str, StepProcess] = {}
    try:
        for i, (name, n) in enumerate(corpora(args).items()):
            library, cache, run_dir = write_corpus(tmp, f"corpus{i}", n), tmp / f"cache{i}", tmp / f"run{i}"
            results[name] = {"build": run_build(library, cache, run_dir, args)}
            # Started one after the other so setup and warm-up never share the cores with another corpus.
            procs[name] = StepProcess(library, cache, run_dir, args, warmup, tmp / f"steps{i}.log")
            results[name]["ready"] = procs[name].ready
        for name, res in interleave_steps(procs, rounds, per_round).items():
            results[name].update(res)
    finally:
        for proc in procs.values():
            proc.close()
    return results


def summarise(results: dict[str, dict], device: str) -> dict[str, dict]:
    """Median step time, paired ratio to the smallest corpus (both clocks), and memory growth against it."""
    base = next(iter(results.values()))
    primary = common.clock(device)
    for res in results.values():
        for key, rounds in res["round_s"].items():
            res[f"step_ms_{key}"] = common.ms(rounds)
            res[f"step_ratio_{key}"] = common.paired_ratio(rounds, base["round_s"][key])
            res[f"spread_{key}"] = common.spread(rounds)
        res["step_ms"], res["step_ratio"] = res[f"step_ms_{primary}"], res[f"step_ratio_{primary}"]
        for key in ("VmRSS", "RssAnon"):
            res[f"growth_{key}_mib"] = res["rss_end"][key] - base["rss_end"][key]
    return results


def report(results: dict[str, dict]) -> str:
    base = next(iter(results))
    return common.table(
        f"corpus scaling with train.text_cache (tiny recipe; step ms and ratios on process CPU time, (wall) = "
        f"wall-time ratio; ratios and growth against {base}; targets at 100k: step <= 1.05x, growth <= 200 MB)",
        ["corpus", "cache items", "build s", "items/s", "setup s", "step ms", "step ratio", "(wall)", "VmRSS MiB",
         "growth", "RssAnon MiB", "anon growth", "RssFile MiB"],
        [[name, r["build"]["items"], r["build"]["build_s"], r["build"]["items_per_s"], r["ready"]["setup_s"],
          r["step_ms"], r["step_ratio"], r["step_ratio_wall"], r["rss_end"]["VmRSS"], r["growth_VmRSS_mib"],
          r["rss_end"]["RssAnon"], r["growth_RssAnon_mib"], r["rss_end"]["RssFile"]] for name, r in results.items()])


def main(argv: list[str] | None = None) -> dict | None:
    ap = common.parser(__doc__.splitlines()[0], "corpus")
    ap.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    device = common.setup(args)
    if args.child:
        mode, library, cache, run_dir, gpu, *rest = args.child
        if mode == "build":
            print(json.dumps(child_build(library, cache, run_dir, gpu == "1")))
        else:
            child_steps(library, cache, run_dir, gpu == "1", int(rest[0]))
        return None
    if args.quick:
        args.sizes = [n for n in args.sizes if n <= 10_000]
    with tempfile.TemporaryDirectory(prefix="asd-bench-corpus-") as name:
        results = summarise(measure(args, Path(name)), device)
    text = report(results)
    result = {"device": device, "corpora": results, "tables": [text]}
    common.write_result(args.out, "corpus", args, result)
    return result


if __name__ == "__main__":
    main()
