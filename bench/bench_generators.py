"""Generator and renderer throughput on CPU (small sizes): a table and bench/results/generators.json.

Measures, per generator at a small config: one training step's forward (generator + differentiable render
with analytic normals) + backward, divided by the P·V prompt-views it rendered; the pure-PyTorch hash grid's
points/s at the paper config (forward, and forward+backward); and rendering rays/s (training path with
gradients, and the chunked no-grad evaluation path).

Usage: python bench/bench_generators.py [--threads 1] [--repeats 3] [--res 32] [--samples 32]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from asdcli.config import RenderConfig
from asdcli.generators.conv3d import Conv3DConfig, Conv3DNet
from asdcli.generators.hashgrid import HashGrid, HashGridConfig
from asdcli.generators.hyper_ingp import HyperINGP, HyperINGPConfig
from asdcli.generators.nerf import NeRF, NeRFConfig
from asdcli.generators.triplane import TriplaneConfig, TriplaneGenerator
from asdcli.generators.triplane_transformer import TriplaneTransformer, TriplaneTransformerConfig
from asdcli.priors.base import TextEmbeddings
from asdcli.render.background import Background
from asdcli.render.cameras import orbit_cameras
from asdcli.render.volume import render, render_chunked

D = 32
SMALL_GRID = HashGridConfig(n_levels=8, log2_hashmap_size=14, base_resolution=8, per_level_scale=1.5,
                            backend="torch")
SMALL = {
    "triplane": lambda: TriplaneGenerator(TriplaneConfig(text_dim=D)),
    "hyper-ingp": lambda: HyperINGP(HyperINGPConfig(text_dim=D, grid=SMALL_GRID, radius=1.0)),
    "3dconv-net": lambda: Conv3DNet(Conv3DConfig(text_dim=D, img_resolution=32, channel_base=512,
                                                 channel_max=64, img_channels=16, radius=1.0)),
    "triplane-transformer": lambda: TriplaneTransformer(TriplaneTransformerConfig(
        text_dim=D, inner_dim=64, num_layers=2, num_heads=4, low_res=8, high_res=16, triplane_dim=8,
        radius=1.0)),
    "nerf": lambda: NeRF(NeRFConfig(grid=SMALL_GRID)),
}


def best_time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def bench_generator(make, prompts: int, views: int, res: int, samples: int, repeats: int) -> dict:
    torch.manual_seed(0)
    gen = make()
    cfg = RenderConfig(samples_per_ray=samples, background="solid")
    bg = Background("solid")
    text = TextEmbeddings(torch.randn(prompts, 16, D), torch.randn(prompts, D))
    cams = orbit_cameras(prompts * views, 15.0, 2.5, 50.0)
    g = torch.Generator().manual_seed(0)

    def step():
        noise = torch.randn(prompts, gen.noise_dim) if gen.noise_dim else None
        out = render(gen, gen(text, noise), cams, res, res, cfg, bg, prompts, g)
        loss = out.rgb.mean() + ((out.sdf_grad.norm(dim=-1) - 1) ** 2).mean()
        gen.zero_grad(set_to_none=True)
        loss.backward()

    t = best_time(step, repeats)
    return {"params": sum(p.numel() for p in gen.parameters()), "step_s": t,
            "s_per_prompt_view": t / (prompts * views)}


def bench_hashgrid(n: int, repeats: int) -> dict:
    grid = HashGrid(HashGridConfig(backend="torch"))
    x = torch.rand(n, 3)

    def fwd():
        with torch.no_grad():
            grid(x)

    def fwd_bwd():
        grid.zero_grad(set_to_none=True)
        grid(x).sum().backward()

    return {"points": n, "forward_points_per_s": n / best_time(fwd, repeats),
            "forward_backward_points_per_s": n / best_time(fwd_bwd, repeats)}


def bench_rays(res: int, samples: int, repeats: int) -> dict:
    torch.manual_seed(0)
    gen = SMALL["triplane"]()
    text = TextEmbeddings(torch.randn(1, 16, D), torch.randn(1, D))
    cfg = RenderConfig(samples_per_ray=samples, background="solid", chunk_rays=4096)
    cams = orbit_cameras(4, 15.0, 2.5, 50.0)
    bg = Background("solid")
    rays = 4 * res * res

    def train():
        out = render(gen, gen(text), cams, res, res, cfg, bg, 1, torch.Generator().manual_seed(0))
        out.rgb.mean().backward()

    def evaluate():
        with torch.no_grad():
            render_chunked(gen, gen(text), cams, res, res, cfg, bg, 1)

    return {"samples_per_ray": samples, "train_rays_per_s": rays / best_time(train, repeats),
            "eval_rays_per_s": rays / best_time(evaluate, repeats)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--res", type=int, default=32)
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--prompts", type=int, default=2)
    ap.add_argument("--views", type=int, default=2)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "generators.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    gens = {k: bench_generator(m, args.prompts, args.views, args.res, args.samples, args.repeats)
            for k, m in SMALL.items()}
    print(f"forward+backward per prompt-view ({args.prompts} prompts × {args.views} views, {args.res}², "
          f"{args.samples} samples/ray, analytic normals, {args.threads} thread(s))")
    print(f"{'generator':<22}{'params':>10}{'step s':>10}{'s / prompt-view':>18}")
    for k, r in gens.items():
        print(f"{k:<22}{r['params']:>10,}{r['step_s']:>10.3f}{r['s_per_prompt_view']:>18.3f}")
    grid = bench_hashgrid(1 << 16, args.repeats)
    print(f"hash grid (paper config, torch): {grid['forward_points_per_s']:,.0f} points/s forward, "
          f"{grid['forward_backward_points_per_s']:,.0f} points/s forward+backward")
    rays = bench_rays(args.res, args.samples, args.repeats)
    print(f"rendering (small triplane, {args.samples} samples/ray): {rays['train_rays_per_s']:,.0f} rays/s "
          f"training (with normals + backward), {rays['eval_rays_per_s']:,.0f} rays/s evaluation")
    settings = {k: v for k, v in vars(args).items() if k != "out"}
    result = {"settings": settings, "torch": torch.__version__, "machine": platform.processor() or
              platform.machine(), "generators": gens, "hashgrid": grid, "render": rays}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
