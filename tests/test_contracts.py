"""Contracts: every kind registered in asdcli.registry, built tiny through the real registry/loader path, does
what callers use it for. A prior kind is checked on every member Prior (priors/base.py) declares; generators
on forward/query shapes and gradients; losses on their output and the gradient reaching the render. A registry
kind (or family) without a case here fails `test_every_registered_kind_has_a_contract_case`."""

import dataclasses
from pathlib import Path

import pytest
import torch
from test_generators import TINY as GENERATORS
from test_generators import inputs as generator_inputs
from test_mvdream import CTX as MV_TEXT_DIM
from test_mvdream import _unet as mvdream_unet

from asdcli.conditioning import Conditioning, TextEmbeddings
from asdcli.config import build_dataclass
from asdcli.engine.distributed import DistInfo
from asdcli.engine.trainer import attach_text_cache
from asdcli.generators.base import FieldOutput, Generator
from asdcli.losses.base import LossOutput, ScoreDistillation
from asdcli.priors.base import Prior
from asdcli.priors.tiny import save_tiny_sd_folder
from asdcli.registry import REGISTRY, build, resolve
from asdcli.render.cameras import orbit_cameras

# Two copies of the same text weights (a prior's own and build_text_encoder's) may run different kernels or, for
# the ShapesWorld kind, the plain-torch path against transformers: ~1e-6 apart; states are O(1).
SAME = dict(atol=1e-5, rtol=0)
# The on-disk text cache stores float16: relative error ≤ 2^-11 per value.
FP16 = dict(atol=1e-3, rtol=1e-3)


def _sd(root: Path) -> dict:
    return {"kind": "stable-diffusion", "model": str(save_tiny_sd_folder(root / "sd", seed=0))}


def _mvdream(root: Path) -> dict:
    mvdream_unet().save_pretrained(str(root / "mv" / "unet"))
    text = save_tiny_sd_folder(root / "mv_text", seed=0, with_vae=True, text_dim=MV_TEXT_DIM)
    return {"kind": "mvdream", "model": str(root / "mv"), "text_model": str(text), "image_size": 16}


PRIORS = {
    "stable-diffusion": _sd,
    "tiny-random": lambda root: {"kind": "tiny-random", "seed": 0},
    "mvdream": _mvdream,
    # the bundled prior (32² pixel space, a 64-wide text model): small, and the folder the kind exists for
    "shapesworld": lambda root: {"kind": "shapesworld", "model": "bundled:shapes-prior"},
}
LOSSES = ("asd", "sds", "csd", "vsd")
CASES = {"prior": set(PRIORS), "generator": set(GENERATORS), "loss": set(LOSSES)}


def test_every_registered_kind_has_a_contract_case():
    assert set(REGISTRY) == set(CASES), "a registry family without contract cases"
    for family, table in REGISTRY.items():
        assert set(table) == CASES[family], f"{family}: kinds without a contract case or cases without a kind"


@pytest.fixture(scope="module")
def prior_of(tmp_path_factory):
    built = {}

    def load(kind: str):
        if kind not in built:
            raw = PRIORS[kind](tmp_path_factory.mktemp(kind))
            cfg = build_dataclass(resolve("prior", kind, "prior.kind").Config, raw, "prior")
            built[kind] = (cfg, build("prior", cfg, device=torch.device("cpu")))
        return built[kind]

    return load


def _views(prior: Prior):
    """B images' cameras, B a whole number of view groups: elevation/azimuth [B], c2w [B, 4, 4]."""
    cams = orbit_cameras(4 * prior.num_views, 15.0, 1.5, 40.0)
    return cams.elevation, cams.azimuth, cams.c2w


@pytest.mark.parametrize("kind", sorted(PRIORS))
def test_prior_contract(kind, prior_of):
    cfg, prior = prior_of(kind)
    assert isinstance(prior, Prior) and type(prior).Config is type(cfg) and cfg.kind == kind
    assert dataclasses.is_dataclass(cfg) and type(cfg).__dataclass_params__.frozen
    T = prior.num_train_timesteps
    assert prior.alphas_cumprod.shape == (T,) and prior.alphas_cumprod.dtype == torch.float32
    assert bool((prior.alphas_cumprod.diff() < 0).all()) and isinstance(prior.shared_timestep, bool)
    assert isinstance(prior.negative_prompt, str) and isinstance(prior.view_dependent, bool)
    assert not any(p.requires_grad for p in prior.parameters())
    assert isinstance(prior.caption("a red cube", 30.0), str)

    elevation, azimuth, c2w = _views(prior)
    B = len(azimuth)
    images = torch.rand(B, 3, prior.image_size + 4, prior.image_size + 4, requires_grad=True)
    z = prior.encode(images)
    assert z.dim() == 4 and z.shape[0] == B and z.dtype == torch.float32
    z.square().sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0  # the render's gradient flows

    cond = prior.conditioning(["a red cube"] * B, elevation, azimuth, c2w)
    assert isinstance(cond, Conditioning) and cond.cond.dim() == 3 and cond.cond.shape[0] == B
    assert cond.uncond.shape == cond.cond.shape
    assert cond.cameras is None or cond.cameras.shape == (B, 16)
    t = torch.full((B,), T // 2) if prior.shared_timestep else torch.linspace(10, T - 10, B).long()
    z_t = prior.add_noise(z.detach(), torch.randn_like(z), t)
    eps = prior.predict_noise(z_t, t, cond.cond, cond.cameras)
    assert eps.shape == z.shape and eps.dtype == torch.float32 and torch.isfinite(eps).all()
    assert not eps.requires_grad
    with torch.no_grad():
        torch.testing.assert_close(prior.unet_forward(prior.unet, z_t, t, cond.cond, cond.cameras), eps, **SAME)


@pytest.mark.parametrize("kind", sorted(PRIORS))
def test_prior_text_side_contract(kind, prior_of, tmp_path):
    cfg, prior = prior_of(kind)
    prompts = ["a red cube", "a blue sphere next to a green cone"]
    emb = prior.encode_text(prompts)
    assert isinstance(emb, TextEmbeddings) and emb.tokens.dim() == 3 and emb.tokens.shape[0] == 2
    assert emb.pooled.shape == (2, emb.tokens.shape[-1]) and emb.tokens.dtype == emb.pooled.dtype == torch.float32
    assert isinstance(prior.text.encoder_id, str) and prior.text.encoder_id
    fresh = prior.text.encode_uncached(prompts)
    torch.testing.assert_close(fresh.tokens, emb.tokens, **SAME)
    torch.testing.assert_close(fresh.pooled, emb.pooled, **SAME)

    alone = type(prior).build_text_encoder(cfg, torch.device("cpu"))  # what `asd generate` loads
    assert alone.encoder_id == prior.text.encoder_id
    torch.testing.assert_close(alone.encode(prompts).tokens, emb.tokens, **SAME)

    # Text cache round trip through the trainer's own call: prompts × view suffixes + the negative prompt.
    corpus = ["a yellow torus", "a small white box"]
    attach_text_cache(prior, str(tmp_path / "cache"), corpus, DistInfo(), quiet=True)
    suffix = ", front view" if prior.view_dependent else ""
    texts = [p + suffix for p in corpus] + [prior.negative_prompt]
    cached = alone.encode_uncached(texts)
    got = prior.text.encode(texts)  # not in memory yet: read from the attached disk cache
    torch.testing.assert_close(got.tokens, cached.tokens, **FP16)
    torch.testing.assert_close(got.pooled, cached.pooled, **FP16)
    assert not torch.equal(got.tokens, cached.tokens)  # float16-rounded: read from disk, not encoded again


@pytest.mark.parametrize("kind", sorted(GENERATORS))
def test_generator_contract(kind):
    _, tiny_cfg = GENERATORS[kind]
    torch.manual_seed(0)
    gen = build("generator", tiny_cfg)  # the registry path recipes take
    assert isinstance(gen, Generator) and type(gen).Config is type(tiny_cfg)
    text, noise = generator_inputs(gen)
    P, N = text.pooled.shape[0], 50
    points = (torch.rand(P, N, 3) * 1.6 - 0.8).requires_grad_(True)
    out = gen.query(gen(text, noise), points)
    assert isinstance(out, FieldOutput) and out.value.shape == (P, N) and out.features.shape[:2] == (P, N)
    rgb = gen.rgb(out.features)
    assert rgb.shape == (P, N, 3) and float(rgb.detach().min()) >= 0 and float(rgb.detach().max()) <= 1
    (out.value.sum() + rgb.sum()).backward()
    assert points.grad is not None and torch.isfinite(points.grad).all()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in gen.parameters())
    assert sum(len(g["params"]) for g in gen.param_groups(1e-3)) == len(list(gen.parameters()))


@pytest.mark.parametrize("kind", LOSSES)
def test_loss_contract(kind, prior_of):
    _, prior = prior_of("tiny-random")
    cfg = build_dataclass(resolve("loss", kind, "loss.kind").Config, {"kind": kind}, "loss")
    loss = build("loss", cfg, prior=prior)
    assert isinstance(loss, ScoreDistillation) and loss.prior is prior
    assert not any(name.startswith("_prior") for name, _ in loss.named_parameters())  # the prior stays out
    elevation, azimuth, c2w = _views(prior)
    images = torch.rand(len(azimuth), 3, prior.image_size, prior.image_size, requires_grad=True)
    cond = prior.conditioning(["a red cube"] * len(azimuth), elevation, azimuth, c2w)
    out = loss(prior.encode(images), cond, 0, 10, torch.Generator().manual_seed(0))
    assert isinstance(out, LossOutput) and out.loss.dim() == 0 and torch.isfinite(out.loss)
    assert {"loss", "grad_norm", "t"} <= set(out.logs)
    out.loss.backward()
    assert images.grad is not None and torch.isfinite(images.grad).all() and images.grad.abs().sum() > 0
