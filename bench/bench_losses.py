"""Per-step cost of the score-distillation losses against the prior's unavoidable work.

    python bench/bench_losses.py [--quick] [--device auto|cpu|cuda] [--out bench/results/losses.json]

A tiny-but-real diffusers UNet2DConditionModel serves as a pixel-space prior (no VAE: `encode` resizes the
render and maps it to [−1, 1]). A fixed random "render" [B, 3, R, R] that requires grad stands in for the
generator. Each timed step is encode → loss forward → backward to the render. "prior work" is the floor ASD
cannot go below: encode, ONE batched no-grad UNet call over 3B rows (ASD's batch) and the backward through
encode. Methods are interleaved within each round (so drifting machine load hits them all alike) and the
median over rounds is reported. Prints a table plus the VSD/ASD and ASD/prior-work ratios and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
import zlib
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from asdcli.config import build_dataclass  # noqa: E402
from asdcli.losses.asd import ASDConfig, AsynchronousScoreDistillation  # noqa: E402
from asdcli.losses.csd import ClassifierScoreDistillation, CSDConfig  # noqa: E402
from asdcli.losses.sds import ScoreDistillationSampling, SDSConfig  # noqa: E402
from asdcli.losses.vsd import VariationalScoreDistillation, VSDConfig  # noqa: E402
from asdcli.priors.base import Conditioning, Prior, TextEmbeddings  # noqa: E402

TEXT_LEN, TEXT_DIM = 8, 32


class TinyPixelPrior(Prior):
    """Pixel-space prior around a small random UNet, with SD's scaled-linear noise schedule (T = 1000)."""

    def __init__(self, image_size: int, width: int) -> None:
        from diffusers import UNet2DConditionModel

        super().__init__()
        self.image_size = image_size
        self.unet = UNet2DConditionModel(
            sample_size=image_size, in_channels=3, out_channels=3, block_out_channels=(width, 2 * width),
            layers_per_block=1, cross_attention_dim=TEXT_DIM, norm_num_groups=8, attention_head_dim=8,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))
        betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
        self.register_buffer("alphas_cumprod", torch.cumprod(1 - betas, 0).float())
        self.freeze()

    def encode(self, images: Tensor) -> Tensor:
        """images [B, 3, H, W] in [0, 1] → z [B, 3, s, s] in [−1, 1] (differentiable)."""
        size = (self.image_size, self.image_size)
        return F.interpolate(images, size=size, mode="bilinear", align_corners=False) * 2 - 1

    def encode_text(self, prompts: list[str]) -> TextEmbeddings:
        """A fixed pseudo-embedding per prompt (seeded by its CRC32), standing in for a text encoder."""
        gens = [torch.Generator().manual_seed(zlib.crc32(p.encode())) for p in prompts]
        tokens = torch.stack([torch.randn(TEXT_LEN, TEXT_DIM, generator=g) for g in gens])
        tokens = tokens.to(self.alphas_cumprod.device)
        return TextEmbeddings(tokens, tokens[:, -1])

    def conditioning(self, prompts: list[str], elevation: Tensor, azimuth: Tensor,
                     c2w: Tensor) -> Conditioning:
        """Plain prompt + empty negative; cameras = flattened c2w (used by VSD's camera MLP only)."""
        uncond = self.encode_text([""] * len(prompts)).tokens
        return Conditioning(cond=self.encode_text(prompts).tokens, uncond=uncond,
                            cameras=c2w.reshape(len(prompts), 16).to(self.alphas_cumprod.device))

    def unet_forward(self, unet: nn.Module, z_t: Tensor, t: Tensor, text: Tensor,
                     cameras: Tensor | None) -> Tensor:
        return unet(z_t, t, encoder_hidden_states=text).sample.float()

    def predict_noise(self, z_t: Tensor, t: Tensor, text: Tensor, cameras: Tensor | None = None) -> Tensor:
        with torch.no_grad():
            return self.unet_forward(self.unet, z_t, t, text, cameras)


def build_losses(prior: Prior) -> dict[str, nn.Module]:
    def cfg(cls: type, kind: str, **extra) -> object:
        return build_dataclass(cls, {"kind": kind, **extra}, "loss")

    return {"asd": AsynchronousScoreDistillation(cfg(ASDConfig, "asd"), prior),
            "sds": ScoreDistillationSampling(cfg(SDSConfig, "sds"), prior),
            "csd": ClassifierScoreDistillation(cfg(CSDConfig, "csd"), prior),
            "vsd": VariationalScoreDistillation(cfg(VSDConfig, "vsd"), prior).to(prior.alphas_cumprod.device)}


def prior_work(prior: Prior, render: Tensor, cond: Conditioning, gen: torch.Generator) -> None:
    """encode + one batched 3B no-grad UNet call + backward through encode: what any ASD step must do."""
    z = prior.encode(render)
    batch = z.shape[0]
    t = torch.randint(20, 981, (batch,), generator=gen).to(z.device)
    noise = torch.randn(tuple(z.shape), generator=gen).to(z.device)
    z_t = prior.add_noise(z.detach(), noise, t)
    eps = prior.predict_noise(torch.cat([z_t, z_t, z_t]), torch.cat([t, t, t]),
                              torch.cat([cond.cond, cond.uncond, cond.cond]))
    z.backward(eps[:batch])


def timed(fn, device: torch.device, iters: int) -> float:
    """Mean seconds per call of fn over `iters` calls (synchronising CUDA around the timed region)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - start) / iters


def run(args: argparse.Namespace) -> dict:
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    torch.manual_seed(0)
    prior = TinyPixelPrior(args.image_size, args.width).to(device)
    losses = build_losses(prior)
    render = torch.rand(args.batch, 3, args.render_size, args.render_size, device=device, requires_grad=True)
    c2w = torch.eye(4).repeat(args.batch, 1, 1)
    cond = prior.conditioning(["a DSLR photo of a corgi"] * args.batch, torch.zeros(args.batch),
                              torch.zeros(args.batch), c2w)
    gen = torch.Generator().manual_seed(0)
    step = {"n": 0}

    def loss_step(loss: nn.Module) -> None:
        out = loss(prior.encode(render), cond, step["n"], 1000, gen)
        out.loss.backward()
        step["n"] += 1
        render.grad = None

    def prior_step() -> None:
        prior_work(prior, render, cond, gen)
        render.grad = None

    methods = {"prior work": prior_step, **{k: (lambda loss=v: loss_step(loss)) for k, v in losses.items()}}
    for fn in methods.values():  # warm-up: allocator, kernels, Adam state of VSD
        timed(fn, device, args.warmup)
    samples: dict[str, list[float]] = {k: [] for k in methods}
    for _ in range(args.rounds):
        for name, fn in methods.items():
            samples[name].append(timed(fn, device, args.iters))
    median_ms = {k: 1000 * statistics.median(v) for k, v in samples.items()}
    return {
        "device": str(device), "torch": torch.__version__, "threads": torch.get_num_threads(),
        "machine": platform.machine(), "batch": args.batch, "render_size": args.render_size,
        "image_size": args.image_size, "unet_width": args.width,
        "unet_params": sum(p.numel() for p in prior.unet.parameters()),
        "vsd_trainable_params": sum(p.numel() for p in losses["vsd"].parameters()),
        "rounds": args.rounds, "iters": args.iters, "median_ms_per_step": median_ms,
        "ratios": {"vsd/asd": median_ms["vsd"] / median_ms["asd"],
                   "asd/prior_work": median_ms["asd"] / median_ms["prior work"],
                   "sds/asd": median_ms["sds"] / median_ms["asd"]},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few rounds, small sizes (a smoke run)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "losses.json"))
    args = parser.parse_args()
    if args.quick:
        sizes = dict(batch=2, render_size=32, image_size=16, width=16, rounds=3, iters=2, warmup=1)
    else:
        sizes = dict(batch=4, render_size=64, image_size=32, width=32, rounds=7, iters=3, warmup=2)
    for key, value in sizes.items():
        setattr(args, key, value)
    if args.threads:
        torch.set_num_threads(args.threads)
    result = run(args)
    print(f"device {result['device']}, {result['threads']} threads, B={result['batch']}, "
          f"UNet {result['unet_params'] / 1e6:.2f} M params at {result['image_size']}², "
          f"median of {result['rounds']} rounds × {result['iters']} steps")
    print(f"{'method':<12}{'ms/step':>10}")
    for name, ms in result["median_ms_per_step"].items():
        print(f"{name:<12}{ms:>10.2f}")
    for name, ratio in result["ratios"].items():
        print(f"{name:<16}{ratio:>6.2f}x")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
