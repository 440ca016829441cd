"""Generator, hash-grid and renderer throughput: a table and bench/results/generators.json.

    python bench/bench_generators.py [--quick] [--threads 1] [--gpu] [--res 32] [--samples 32] [--out ...]

Measures, per generator (small CPU configs; paper configs with --gpu): one training step's forward (generator +
differentiable render with analytic normals) + backward, divided by the P·V prompt-views it rendered; the hash
grid's points/s at the paper config (pure PyTorch on CPU; tcnn with --gpu when importable), forward and
forward+backward; and rendering rays/s (training path with gradients, and the chunked no-grad evaluation path).
Figures are the best of --repeats runs after one warm-up (throughput: the least-disturbed run).
"""

from __future__ import annotations

import common
import torch

from asdcli.conditioning import TextEmbeddings
from asdcli.config import RenderConfig
from asdcli.generators.conv3d import Conv3DConfig, Conv3DNet
from asdcli.generators.hashgrid import HashGrid, HashGridConfig
from asdcli.generators.hyper_ingp import HyperINGP, HyperINGPConfig
from asdcli.generators.nerf import NeRF, NeRFConfig
from asdcli.generators.triplane import TriplaneConfig, TriplaneGenerator
from asdcli.generators.triplane_transformer import TriplaneTransformer, TriplaneTransformerConfig
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


def best_time(fn, repeats: int, device: str) -> float:
    """Least seconds of `repeats` calls after a warm-up, on the primary clock (CPU time on CPU: the least
    disturbed by other jobs on the shared cores)."""
    fn()
    return min(common.time_calls(fn, 1, device)[common.clock(device)] for _ in range(repeats))


def text_for(gen, prompts: int, device: str) -> TextEmbeddings:
    dim = getattr(gen.cfg, "text_dim", D)
    return TextEmbeddings(torch.randn(prompts, 16, dim, device=device), torch.randn(prompts, dim, device=device))


def bench_generator(make, prompts: int, views: int, res: int, samples: int, repeats: int, device: str) -> dict:
    torch.manual_seed(0)
    gen = make().to(device)
    cfg = RenderConfig(samples_per_ray=samples, background="solid", radius=gen.cfg.radius)
    bg = Background("solid").to(device)
    text = text_for(gen, prompts, device)
    cams = orbit_cameras(prompts * views, 15.0, 2.5 * gen.cfg.radius, 50.0).to(device)
    g = torch.Generator().manual_seed(0)

    def step():
        noise = torch.randn(prompts, gen.noise_dim, device=device) if gen.noise_dim else None
        out = render(gen, gen(text, noise), cams, res, res, cfg, bg, prompts, g)
        loss = out.rgb.mean() + ((out.sdf_grad.norm(dim=-1) - 1) ** 2).mean()
        gen.zero_grad(set_to_none=True)
        loss.backward()

    t = best_time(step, repeats, device)
    return {"params": sum(p.numel() for p in gen.parameters()), "step_s": t,
            "s_per_prompt_view": t / (prompts * views)}


def bench_hashgrid(n: int, repeats: int, device: str) -> dict:
    grid = HashGrid(HashGridConfig(backend="auto" if device == "cuda" else "torch")).to(device)
    x = torch.rand(n, 3, device=device)

    def fwd():
        with torch.no_grad():
            grid(x)

    def fwd_bwd():
        grid.zero_grad(set_to_none=True)
        grid(x).float().sum().backward()

    return {"points": n, "backend": getattr(grid, "backend", "torch"),
            "forward_points_per_s": n / best_time(fwd, repeats, device),
            "forward_backward_points_per_s": n / best_time(fwd_bwd, repeats, device)}


def bench_rays(res: int, samples: int, repeats: int, device: str) -> dict:
    torch.manual_seed(0)
    gen = SMALL["triplane"]().to(device)
    text = text_for(gen, 1, device)
    cfg = RenderConfig(samples_per_ray=samples, background="solid", chunk_rays=4096)
    cams = orbit_cameras(4, 15.0, 2.5, 50.0).to(device)
    bg = Background("solid").to(device)
    rays = 4 * res * res

    def train():
        out = render(gen, gen(text), cams, res, res, cfg, bg, 1, torch.Generator().manual_seed(0))
        out.rgb.mean().backward()

    def evaluate():
        with torch.no_grad():
            render_chunked(gen, gen(text), cams, res, res, cfg, bg, 1)

    return {"samples_per_ray": samples, "train_rays_per_s": rays / best_time(train, repeats, device),
            "eval_rays_per_s": rays / best_time(evaluate, repeats, device)}


def main(argv: list[str] | None = None) -> dict:
    ap = common.parser(__doc__.splitlines()[0], "generators")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--res", type=int, default=None, help="render side (default 32; 64 with --gpu)")
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--prompts", type=int, default=2)
    ap.add_argument("--views", type=int, default=2)
    args = ap.parse_args(argv)
    device = common.setup(args)
    if args.quick:
        args.repeats = 1
    args.res = args.res or (64 if args.gpu else 32)
    makers = dict(SMALL)
    if args.gpu:
        import paper

        makers = {**paper.paper_generators(), "nerf": lambda: NeRF(NeRFConfig())}
    gens = {k: bench_generator(m, args.prompts, args.views, args.res, args.samples, args.repeats, device)
            for k, m in makers.items()}
    tables = [common.table(
        f"forward+backward per prompt-view ({args.prompts} prompts x {args.views} views, {args.res}^2, "
        f"{args.samples} samples/ray, analytic normals, {device}, {args.threads} thread(s); best of "
        f"{args.repeats}, {common.clock(device)} clock)",
        ["generator", "params", "step s", "s / prompt-view"],
        [[k, r["params"], r["step_s"], r["s_per_prompt_view"]] for k, r in gens.items()])]
    grid = bench_hashgrid(1 << (20 if args.gpu else 16), args.repeats, device)
    rays = bench_rays(args.res, args.samples, args.repeats, device)
    tables.append(common.table(
        f"hash grid (paper config) and renderer (small triplane) throughput ({common.clock(device)} clock)",
        ["what", "per second"],
        [[f"hash grid forward, points ({grid['backend']})", grid["forward_points_per_s"]],
         [f"hash grid forward+backward, points ({grid['backend']})", grid["forward_backward_points_per_s"]],
         [f"render rays, training (normals + backward, {args.samples} samples)", rays["train_rays_per_s"]],
         [f"render rays, evaluation (chunked, no grad, {args.samples} samples)", rays["eval_rays_per_s"]]]))
    result = {"device": device, "generators": gens, "hashgrid": grid, "render": rays, "tables": tables}
    common.write_result(args.out, "generators", args, result)
    return result


if __name__ == "__main__":
    main()
