"""Per-step cost of the score-distillation losses against the prior's unavoidable work.

    python bench/bench_losses.py [--quick] [--threads 1] [--gpu] [--out bench/results/losses.json]

A tiny-but-real diffusers UNet2DConditionModel serves as a pixel-space prior (no VAE: `encode` resizes the
render and maps it to [−1, 1]). A fixed random "render" [B, 3, R, R] that requires grad stands in for the
generator. Each timed step is encode → loss forward → backward to the render. "prior work" is the floor ASD
cannot go below: encode, ONE batched no-grad UNet call over 3B rows (ASD's batch) and the backward through
encode. Methods are interleaved within each round (order rotated per round, so drifting machine load hits them all
alike); times are medians over rounds and ratios medians of per-round ratios. This isolates the loss;
bench_engine.py measures the same comparison through the whole training step. --gpu: CUDA and larger sizes.
"""

from __future__ import annotations

import argparse
import zlib

import common
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from asdcli.conditioning import Conditioning, TextEmbeddings
from asdcli.config import build_dataclass
from asdcli.losses.asd import ASDConfig, AsynchronousScoreDistillation
from asdcli.losses.csd import ClassifierScoreDistillation, CSDConfig
from asdcli.losses.sds import ScoreDistillationSampling, SDSConfig
from asdcli.losses.vsd import VariationalScoreDistillation, VSDConfig
from asdcli.priors.base import Prior

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


def run(args: argparse.Namespace, device: str) -> dict:
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
    samples = common.interleaved(methods, args.rounds, args.iters, args.warmup, device)
    return {
        "device": device, "batch": args.batch, "render_size": args.render_size, "image_size": args.image_size,
        "unet_width": args.width, "unet_params": sum(p.numel() for p in prior.unet.parameters()),
        "vsd_trainable_params": sum(p.numel() for p in losses["vsd"].parameters()),
        "rounds": args.rounds, "iters": args.iters,
        **common.summarise(samples, device, {"vsd/asd": ("vsd", "asd"), "asd/prior_work": ("asd", "prior work"),
                                             "sds/asd": ("sds", "asd"), "csd/asd": ("csd", "asd")}),
        "samples_s": samples,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = common.parser(__doc__.splitlines()[0], "losses")
    args = parser.parse_args(argv)
    device = common.setup(args)
    if args.gpu:
        sizes = dict(batch=8, render_size=128, image_size=64, width=128, rounds=7, iters=5, warmup=3)
    elif args.quick:
        sizes = dict(batch=2, render_size=32, image_size=16, width=16, rounds=3, iters=2, warmup=1)
    else:
        sizes = dict(batch=4, render_size=64, image_size=32, width=32, rounds=5, iters=2, warmup=1)
    for key, value in sizes.items():
        setattr(args, key, value)
    result = run(args, device)
    ms = result["ms"]
    tables = [common.table(
        f"loss step alone (encode -> loss -> backward to a fixed render), {device}, B={result['batch']}, "
        f"UNet {result['unet_params'] / 1e6:.2f} M params at {result['image_size']}^2, "
        f"{result['rounds']} rounds x {result['iters']} steps, {result['clock']} clock",
        ["method", "ms/step", "ratio"],
        [["prior work", ms["prior work"], ""], ["asd", ms["asd"], f"{result['ratios']['asd/prior_work']:.2f} x prior"],
         *[[k, ms[k], f"{result['ratios'][f'{k}/asd']:.2f} x asd"] for k in ("sds", "csd", "vsd")]])]
    result["tables"] = tables
    common.write_result(args.out, "losses", args, result)
    return result


if __name__ == "__main__":
    main()
