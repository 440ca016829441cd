"""`asd generate` on the bundled model as a user runs it (a fresh process) against a bare `import torch`.

    python bench/bench_generate_cli.py [--quick] [--rounds 5] [--resolution 128] [--baseline-root DIR] [--out ...]

Each round starts `python -c "import torch"` and `python -m asdcli generate PROMPT --out X.glb` (and, with
--baseline-root, the same command from another checkout, e.g. the code before a change) as subprocesses, in an
order rotated round to round. The figures are medians over rounds of each process's CPU time (user + system,
from the children's rusage: what the process costs whatever else shares the cores) and wall time, and the
median over rounds of the per-round ratio generate / import torch. One torch thread (OMP_NUM_THREADS=1), as the
benchmark machine is shared.
"""

from __future__ import annotations

import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common

PROMPT = "a red cube on top of a blue sphere"


def run_cpu(cmd: list[str], root: Path) -> tuple[float, float]:
    """(CPU s, wall s) of one subprocess run from `root` (its asdcli is the one imported)."""
    env = {**common.child_env(1), "PYTHONPATH": str(root)}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=root, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:4])} failed ({proc.returncode}): {proc.stderr.strip()[-300:]}")
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), wall


def main() -> None:
    ap = common.parser(__doc__.splitlines()[0], "bench_generate_cli")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--resolution", type=int, default=128)
    ap.add_argument("--baseline-root", default=None, help="another checkout to time the same command from")
    args = ap.parse_args()
    rounds = 2 if args.quick else args.rounds
    with tempfile.TemporaryDirectory() as tmp:
        gen = [sys.executable, "-m", "asdcli", "generate", PROMPT, "--out", f"{tmp}/g.glb",
               "--resolution", str(args.resolution), "--quiet"]
        cands = {"import torch": ([sys.executable, "-c", "import torch"], common.ROOT),
                 "asd generate": (gen, common.ROOT)}
        if args.baseline_root:
            cands["asd generate (baseline)"] = (gen, Path(args.baseline_root).resolve())
        names = list(cands)
        samples = {n: [] for n in names}
        for r in range(rounds):
            for name in names[r % len(names):] + names[:r % len(names)]:
                samples[name].append(run_cpu(*cands[name]))
    base = samples["import torch"]
    rows, result = [], {"candidates": {}}
    for name in names:
        cpu = [s[0] for s in samples[name]]
        ratio = statistics.median(s[0] / b[0] for s, b in zip(samples[name], base, strict=True))
        result["candidates"][name] = {"cpu_s": statistics.median(cpu), "wall_s": statistics.median(
            s[1] for s in samples[name]), "cpu_vs_import_torch": ratio, "cpu_spread": common.spread(cpu)}
        rows.append([name, result["candidates"][name]["cpu_s"], result["candidates"][name]["wall_s"], ratio])
    result["tables"] = [common.table(f"asd generate (bundled model, {args.resolution}³) vs import torch, "
                                   f"medians of {rounds} rounds", ["process", "CPU s", "wall s",
                                                                   "CPU vs import torch"], rows)]
    common.write_result(args.out, "bench_generate_cli", args, result)


if __name__ == "__main__":
    main()
