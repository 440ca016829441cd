"""Shared helpers of the bench/ suite: the uniform CLI, thread setup, machine description, interleaved timing with
paired ratios, resident memory, tables and JSON results.

Why interleaved and paired: the benchmark machines are shared (other jobs run on the same cores), so load drifts
during a run. Every comparison runs its candidates round-robin inside each round (the order rotated from round to
round) and a ratio is the median over rounds of the per-round ratio, so a slow minute hits both sides alike.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
TINY_RECIPE = ROOT / "recipes" / "tiny_cpu.yaml"
SCRATCH = Path(tempfile.gettempdir()) / "asd-bench"  # large reusable inputs (the --gpu random SD 2.1 folder)
REAL_PROMPTS = "instant3d_17000"  # the paper's DL17k, shipped in the package: a prompts.library name

if str(ROOT) not in sys.path:  # `python bench/x.py` from a checkout without `pip install -e .`
    sys.path.insert(0, str(ROOT))

COLORS = "red green blue yellow white black orange purple pink brown".split()
THINGS = "cube sphere cone cylinder torus pyramid chair table lamp teapot".split()


# ------------------------------------------------------------------------------------------- CLI and setup
def parser(description: str, name: str) -> argparse.ArgumentParser:
    """The options every benchmark takes: --quick, --threads, --gpu, --out."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--quick", action="store_true", help="fewer rounds and sizes (a smoke run, noisier)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads (default 1: the 2-core benchmark machine is shared)")
    ap.add_argument("--gpu", action="store_true", help="paper sizes on CUDA (fp16 prior, tcnn); needs a GPU")
    ap.add_argument("--out", default=str(RESULTS / f"{name}{{suffix}}.json"),
                    help="JSON result file (default bench/results/NAME.json, NAME_gpu.json with --gpu)")
    return ap


def setup(args: argparse.Namespace) -> str:
    """Threads and device for this process; returns "cuda" or "cpu". --gpu without CUDA exits 2 with one line."""
    import torch

    torch.set_num_threads(max(1, args.threads))
    for key, value in child_env(args.threads).items():  # read at import by tokenizers/diffusers; children inherit
        os.environ.setdefault(key, value)
    args.out = args.out.replace("{suffix}", "_gpu" if args.gpu else "")
    if args.gpu and not torch.cuda.is_available():
        print(f"error: --gpu needs a CUDA device, and torch {torch.__version__} sees none; run without --gpu "
              f"for the CPU suite", file=sys.stderr)
        raise SystemExit(2)
    return "cuda" if args.gpu else "cpu"


def child_env(threads: int) -> dict[str, str]:
    """Environment for benchmark subprocesses: fixed thread counts, unbuffered output, no hub access."""
    return {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
            "RAYON_NUM_THREADS": str(threads),  # the Rust tokenizer's batch encoding
            "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore",
            "HF_HUB_DISABLE_PROGRESS_BARS": "1", "DIFFUSERS_VERBOSITY": "error", "TRANSFORMERS_VERBOSITY": "error"}


# ------------------------------------------------------------------------------------------- machine
def machine() -> dict[str, Any]:
    """What the figures were measured on: CPU, cores, torch, load average now (other jobs share the cores)."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "cpu": cpu,
            "nproc": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version(),
            "torch_threads": torch.get_num_threads(), "loadavg": list(os.getloadavg())}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def memory() -> dict[str, float]:
    """Resident memory of this process in MiB (Linux): VmRSS (now), VmHWM (peak), RssAnon, RssFile."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
            out[key] = int(value.split()[0]) / 1024
    return out


# ------------------------------------------------------------------------------------------- timing
def sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def clock(device: str) -> str:
    """The clock comparisons use: process CPU time on CPU, wall time on CUDA (kernels run asynchronously).

    Why CPU time on CPU: the benchmark machines' cores are shared with other jobs, so wall time also counts the
    time this process waited for a core. With one torch thread, process CPU time is what the wall time would be
    on an idle machine (page-cache reads of memory-mapped files count, as system time); wall time is recorded next
    to it. With several threads CPU time sums them, so the suite runs with --threads 1 by default.
    """
    return "wall" if device == "cuda" else "cpu"


def time_calls(fn: Callable[[], Any], iters: int, device: str = "cpu") -> dict[str, float]:
    """Mean seconds per call of fn over `iters` back-to-back calls: {"wall": …, "cpu": …}."""
    sync(device)
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(iters):
        fn()
    sync(device)
    return {"wall": (time.perf_counter() - wall) / iters, "cpu": (time.process_time() - cpu) / iters}


def interleaved(fns: dict[str, Callable[[], Any]], rounds: int, iters: int, warmup: int = 1,
                device: str = "cpu") -> dict[str, dict[str, list[float]]]:
    """Seconds per call of each fn, one sample per round, on both clocks: {"wall"|"cpu": {name: [per round]}}.
    Within a round every fn runs `iters` times, in an order rotated each round so no candidate always follows
    the same neighbour."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    names = list(fns)
    samples: dict[str, dict[str, list[float]]] = {"wall": {k: [] for k in names}, "cpu": {k: [] for k in names}}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            for key, value in time_calls(fns[name], iters, device).items():
                samples[key][name].append(value)
    return samples


def paired_ratio(num: Sequence[float], den: Sequence[float]) -> float:
    """Median over rounds of num[r] / den[r] (samples taken side by side in the same round)."""
    return statistics.median(a / b for a, b in zip(num, den, strict=True))


def spread(samples: Sequence[float]) -> float:
    """Relative spread of the samples: (max − min) / median, a noise indicator printed next to figures."""
    return (max(samples) - min(samples)) / statistics.median(samples)


def ms(samples: Sequence[float]) -> float:
    return 1000 * statistics.median(samples)


def summarise(samples: dict[str, dict[str, list[float]]], device: str, pairs: dict[str, tuple[str, str]]) -> dict:
    """Median ms, paired ratios (name → (numerator, denominator)) and spreads on both clocks; "ms" and "ratios"
    are those of the primary clock (`clock(device)`), which the tables show."""
    out: dict[str, Any] = {"clock": clock(device)}
    for key, per in samples.items():
        out[f"ms_{key}"] = {k: ms(v) for k, v in per.items()}
        out[f"ratios_{key}"] = {name: paired_ratio(per[a], per[b]) for name, (a, b) in pairs.items()}
        out[f"spread_{key}"] = {k: spread(v) for k, v in per.items()}
    out["ms"], out["ratios"] = out[f"ms_{out['clock']}"], out[f"ratios_{out['clock']}"]
    return out


# ------------------------------------------------------------------------------------------- prompts and recipes
def synthetic_prompt(i: int) -> str:
    """Distinct prompt number i, like "a red cube next to a blue torus, no. 123"."""
    return (f"a {COLORS[i % 10]} {THINGS[(i // 10) % 10]} next to a {COLORS[(i // 100) % 10]} "
            f"{THINGS[(i // 1000) % 10]}, no. {i}")


def synthetic_prompts(n: int) -> list[str]:
    return [synthetic_prompt(i) for i in range(n)]


def tiny_config(overrides: Sequence[str] = (), run_dir: str | Path | None = None, steps: int = 1000,
                recipe: str | Path = TINY_RECIPE, **flags: Any):
    """A RunConfig from a recipe (the tiny CPU one by default) with dotted overrides, writing to run_dir."""
    from asdcli.recipe import load_recipe

    given = {"train.steps": steps, **{k.replace("__", "."): v for k, v in flags.items()}}
    if run_dir is not None:
        given["output.dir"] = str(run_dir)
    return load_recipe(recipe, list(overrides), given)


# ------------------------------------------------------------------------------------------- output
def table(title: str, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> dict:
    """Print a plain-text table (right-aligned columns; the first left-aligned) that reads the same in logs, and
    return it as {"title", "header", "rows"} of formatted strings (report.py turns those into Markdown)."""
    cells = [[str(c) for c in header]] + [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = [title]
    for j, row in enumerate(cells):
        lines.append("  ".join(c.ljust(widths[i]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(row)))
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    print("\n".join(lines), flush=True)
    return {"title": title, "header": cells[0], "rows": cells[1:]}


def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:,.3g}" if abs(value) < 100 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def write_result(path: str | Path, name: str, args: argparse.Namespace, result: dict) -> Path:
    """bench/results/NAME.json: the machine, the settings and the figures."""
    settings = {k: v for k, v in vars(args).items() if k != "out"}
    payload = {"benchmark": name, "machine": machine(), "settings": settings, **result}
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=1, default=str) + "\n", encoding="utf-8")
    print(f"wrote {out}", flush=True)
    return out
