"""`asd generate` time split (text encoding / generator / field query / isosurface / colours / cleanup / writing)
and total, per generator and isosurface resolution (64, 128, 256).

    python bench/bench_generate.py [--quick] [--threads 1] [--gpu] [--resolutions 64 128 256] [--out ...]

Generators (CPU): the tiny recipe's triplane trained 2 steps and loaded from its run directory through
`load_model` (the path `asd generate --checkpoint` takes; its load time is reported once), and small configs of
Hyper-iNGP, 3DConv-Net and Triplane-Transformer built in-process with random weights (their sphere SDF bias gives
a surface; random weights give busier surfaces than trained ones, so query/isosurface times are on the high
side). --gpu: the paper configs on CUDA with the SD 2.1-shaped text encoder. Each repeat uses a new prompt, so
the text encoder runs every time as in a fresh `asd generate`; the figure is the median over repeats.
"""

from __future__ import annotations

import itertools
import json
import statistics
import tempfile
import time
from pathlib import Path

import common
import torch

PROMPTS = ("a red cube", "a blue sphere", "a green cone", "a yellow torus", "a purple cylinder")
_TURN = itertools.count()
STAGES = ("text", "generator", "query", "isosurface", "colors", "cleanup", "write")


def trained_tiny(tmp: Path):
    """The tiny recipe trained 2 steps, loaded the way `asd generate --checkpoint RUN` loads it."""
    from asdcli.engine.inference import load_model
    from asdcli.engine.trainer import fit

    cfg = common.tiny_config(["train.checkpoint_every=2"], run_dir=tmp / "tiny-run", steps=2)
    fit(cfg, list(cfg.prompts.items), list(cfg.prompts.items), quiet=True)
    start = time.perf_counter()
    model = load_model(tmp / "tiny-run", "cpu")
    return model, time.perf_counter() - start


def in_process(make, text_encoder, device: str, overrides: list[str]):
    """A LoadedModel around a freshly built generator (random weights) and the given text encoder."""
    from asdcli.config import to_plain
    from asdcli.engine.components import build_background
    from asdcli.engine.inference import LoadedModel

    torch.manual_seed(0)
    generator = make().to(device).eval()
    gen_cfg = to_plain(generator.cfg)
    cfg = common.tiny_config([*overrides, "generator=" + json.dumps(gen_cfg),
                              f"render.radius={generator.cfg.radius}"])
    background = build_background(cfg, text_encoder.dim, torch.device(device)).eval()
    return LoadedModel(cfg, generator, background, text_encoder.encode, Path("<in-process>"), torch.device(device))


def models(args, tmp: Path) -> dict:
    """name → (LoadedModel, load seconds or None)."""
    if args.gpu:
        import paper

        from asdcli.priors.text import load_clip_text

        folder = paper.write_random_sd(common.SCRATCH / "sd21-random")
        text = load_clip_text(folder, "sd21-random", torch.device("cuda"))
        prior = [f"prior={{kind: stable-diffusion, model: {folder}}}", "train.device=cuda"]
        return {name: (in_process(make, text, "cuda", prior), None) for name, make in paper.paper_generators().items()}
    from bench_generators import SMALL

    from asdcli.priors.tiny import TinyRandomPriorConfig, build_tiny_text

    text = build_tiny_text(TinyRandomPriorConfig(seed=0))
    out = {"triplane (tiny recipe, 2 steps)": trained_tiny(tmp)}
    for name in ("hyper-ingp", "3dconv-net", "triplane-transformer"):
        out[f"{name} (small, random)"] = (in_process(SMALL[name], text, "cpu", []), None)
    return out


def generate_once(model, prompt: str, resolution: int, out: Path) -> tuple[dict[str, float], int]:
    """One `asd generate` after loading: generate_mesh (text → mesh, its own time split) + writing the GLB."""
    from asdcli.generate import generate_mesh
    from asdcli.mesh.export import write_mesh

    cpu = time.process_time()
    mesh, timings = generate_mesh(model, prompt, resolution)
    common.sync(model.device.type)
    start = time.perf_counter()
    write_mesh(mesh, out)
    timings.add("write", time.perf_counter() - start)
    # The stages are wall time (generate_mesh's own clock); the CPU-time total shows how much of it was the
    # process waiting for a core on the shared machine.
    return {**timings.parts, "cpu_total": time.process_time() - cpu}, mesh.num_faces


def bench_model(model, resolutions: list[int], repeats: dict[int, int], tmp: Path) -> list[dict]:
    rows = []
    for res in resolutions:
        runs = []
        for _ in range(repeats[res]):
            turn = next(_TURN)
            prompt = f"{PROMPTS[turn % len(PROMPTS)]} {turn}"  # a new prompt: the text encoder runs each time
            runs.append(generate_once(model, prompt, res, tmp / f"mesh-{res}.glb"))
        split = {k: 1000 * statistics.median(r[0].get(k, 0.0) for r in runs) for k in STAGES}
        totals = [1000 * sum(v for k, v in r[0].items() if k in STAGES) for r in runs]
        rows.append({"resolution": res, "repeats": len(runs), "ms": split, "total_ms": statistics.median(totals),
                     "cpu_total_ms": 1000 * statistics.median(r[0]["cpu_total"] for r in runs),
                     "faces": runs[-1][1]})
    return rows


def main(argv: list[str] | None = None) -> dict:
    ap = common.parser(__doc__.splitlines()[0], "generate")
    ap.add_argument("--resolutions", type=int, nargs="+", default=[64, 128, 256])
    args = ap.parse_args(argv)
    common.setup(args)
    if args.quick:
        args.resolutions = [r for r in args.resolutions if r <= 128]
    repeats = {r: 1 if args.quick or r >= 256 else (3 if r <= 64 else 2) for r in args.resolutions}
    results = {}
    with tempfile.TemporaryDirectory(prefix="asd-bench-generate-") as name:
        tmp = Path(name)
        for i, (gen_name, (model, load_s)) in enumerate(models(args, tmp).items()):
            if i == 0:  # first use imports the mesh/export stack: a one-off cost of the process, not of a mesh
                generate_once(model, "warm up", 32, tmp / "warmup.glb")
            params = sum(p.numel() for p in model.generator.parameters())
            results[gen_name] = {"params": params, "load_s": load_s,
                                 "runs": bench_model(model, args.resolutions, repeats, tmp)}
    text = common.table(
        "asd generate time split, wall ms (median over repeats; load excluded, reported once); CPU total = the "
        "same generate on process CPU time",
        ["generator", "params", "res", *STAGES, "total", "CPU total", "faces"],
        [[name, r["params"], run["resolution"], *(run["ms"][k] for k in STAGES), run["total_ms"],
          run["cpu_total_ms"], run["faces"]] for name, r in results.items() for run in r["runs"]])
    loads = {k: v["load_s"] for k, v in results.items() if v["load_s"] is not None}
    for name, seconds in loads.items():
        print(f"load_model of {name}: {seconds * 1000:.0f} ms (once per `asd generate` process)")
    result = {"generators": results, "tables": [text]}
    common.write_result(args.out, "generate", args, result)
    return result


if __name__ == "__main__":
    main()
