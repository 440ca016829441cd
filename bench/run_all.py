"""Run the whole bench/ suite, each benchmark in its own fresh process, and summarise.

    python bench/run_all.py [--quick] [--threads 1] [--gpu] [--only engine corpus ...]

Writes bench/results/NAME.json per benchmark (NAME_gpu.json with --gpu), bench/results/summary.json (machine,
wall time and exit status of each) and bench/results/REPORT.md (every table, in Markdown, for BENCHMARKS.md).
Default mode is sized to finish in well under 20 minutes on a shared 2-core CPU. --gpu refuses cleanly (exit 2)
without CUDA. Exit status: 0 when every benchmark succeeded, 1 otherwise.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import common

# The order: engine overhead and losses, corpus scaling, amortization, generate split, throughput; then the
# loss-only and cache-only micro-benchmarks.
SUITE = ("engine", "corpus", "amortization", "generate", "generators", "losses", "text_cache", "shapes_step")


def run_one(name: str, args) -> dict:
    cmd = [sys.executable, str(common.ROOT / "bench" / f"bench_{name}.py"), "--threads", str(args.threads)]
    cmd += ["--quick"] if args.quick else []
    cmd += ["--gpu"] if args.gpu else []
    print(f"\n=== bench_{name} ({' '.join(cmd[2:]) or 'default'})", flush=True)
    start = time.perf_counter()
    done = subprocess.run(cmd, env=common.child_env(args.threads), cwd=common.ROOT)
    seconds = time.perf_counter() - start
    print(f"=== bench_{name}: exit {done.returncode} after {seconds:.0f} s", flush=True)
    return {"exit": done.returncode, "seconds": seconds}


def main(argv: list[str] | None = None) -> int:
    ap = common.parser(__doc__.splitlines()[0], "summary")
    ap.add_argument("--only", nargs="+", choices=SUITE, help="run these benchmarks only")
    args = ap.parse_args(argv)
    common.setup(args)  # refuses --gpu without CUDA before anything runs
    started = common.machine()
    runs = {}
    for name in args.only or SUITE:
        runs[name] = run_one(name, args)
        if runs[name]["exit"] == 2 and args.gpu:
            break  # a refusal (no CUDA) is the same for every benchmark
    summary = {"machine_at_start": started, "machine_at_end": common.machine(), "quick": args.quick,
               "gpu": args.gpu, "threads": args.threads, "runs": runs,
               "total_seconds": sum(r["seconds"] for r in runs.values())}
    common.RESULTS.mkdir(parents=True, exist_ok=True)
    (common.RESULTS / f"summary{'_gpu' if args.gpu else ''}.json").write_text(json.dumps(summary, indent=1) + "\n")
    import report

    report.write(gpu=args.gpu)
    common.table("suite", ["benchmark", "exit", "seconds"],
                 [[k, r["exit"], r["seconds"]] for k, r in runs.items()] + [["total", "", summary["total_seconds"]]])
    return 0 if all(r["exit"] == 0 for r in runs.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
