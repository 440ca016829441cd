"""Contracts: every kind registered in asdcli.registry, built tiny through the real registry/loader path, does
what callers use it for. A prior kind is checked on every member Prior (priors/base.py) declares; generators
on forward/query shapes and gradients; losses on their output and the gradient reaching the render. A registry
kind (or family) without a case here fails `test_every_registered_kind_has_a_contract_case`.

The other named tables a recipe chooses from (backgrounds, schedule forms, optimizers, timestep weightings) get
the same treatment: each name the package accepts, read from the package itself, has a contract case below, or
`test_every_named_choice_has_a_contract_case` fails."""

import dataclasses
import typing
from pathlib import Path

import pytest
import torch

from asdcli.conditioning import Conditioning, TextEmbeddings
from asdcli.config import RenderConfig, TrainConfig, build_dataclass
from asdcli.engine.distributed import DistInfo
from asdcli.engine.optim import build_optimizer
from asdcli.engine.trainer import attach_text_cache
from asdcli.generators.base import FieldOutput, Generator
from asdcli.losses.base import LossOutput, ScoreDistillation
from asdcli.losses.timesteps import Weighting, loss_weight
from asdcli.priors.base import Prior
from asdcli.priors.tiny import save_tiny_sd_folder
from asdcli.registry import REGISTRY, build, resolve
from asdcli.render import background
from asdcli.render.cameras import orbit_cameras
from asdcli.schedule import Schedule, parse_schedule
from tests.helpers.generators import TINY as GENERATORS
from tests.helpers.generators import inputs as generator_inputs
from tests.helpers.mvdream import CTX as MV_TEXT_DIM
from tests.helpers.mvdream import unet as mvdream_unet

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


# ------------------------------------------------------------------- named tables besides the registry
BACKGROUNDS = ("solid", "random", "env-mlp", "text-env-mlp")
# A recipe value of each form → (step, value) pairs of a 10-step run.
SCHEDULES = {
    "constant": (0.5, [(0, 0.5), (10, 0.5)]),
    "linear": ({"linear": {"from": 1.0, "to": 0.0, "start": 0, "end": 10}}, [(0, 1.0), (5, 0.5), (10, 0.0)]),
    "piecewise": ({"piecewise": {0: 1.0, 5: 0.0}}, [(0, 1.0), (4, 1.0), (5, 0.0)]),
    "keyframes": ({"keyframes": {0: 1.0, 10: 0.0}}, [(0, 1.0), (5, 0.5), (10, 0.0)]),
}
OPTIMIZERS = {"adam": (0.9, 0.99), "adamw": (0.9, 0.99), "adan": (0.98, 0.92, 0.99)}
WEIGHTINGS = ("sds", "uniform", "fantasia3d")


def _literal(cls, field: str) -> set[str]:
    return set(typing.get_args(typing.get_type_hints(cls)[field]))


def test_every_named_choice_has_a_contract_case():
    tables = {  # where the package lists the names (a config Literal and the module's own table must agree)
        "render.background (config)": (_literal(RenderConfig, "background"), BACKGROUNDS),
        "render.background (render/background.py)": (set(background.KINDS), BACKGROUNDS),
        "schedule kinds": (_literal(Schedule, "kind"), SCHEDULES),
        "train.optimizer": (_literal(TrainConfig, "optimizer"), OPTIMIZERS),
        "loss.weighting": (set(typing.get_args(Weighting)), WEIGHTINGS),
    }
    for table, (names, cases) in tables.items():
        assert names == set(cases), f"{table}: names without a contract case or cases without a name"


@pytest.mark.parametrize("kind", BACKGROUNDS)
def test_background_contract(kind):
    """forward(dirs [B, R, 3]) → colours [B, R, 3] in [0, 1], the same at evaluation every time; a trainable
    kind gets gradients into its own parameters only through param_groups."""
    torch.manual_seed(0)
    cfg = RenderConfig(background=kind, background_color=(0.2, 0.4, 0.6))
    bg = background.build_background(cfg, text_dim=8)  # the trainer's path
    dirs = torch.nn.functional.normalize(torch.randn(4, 5, 3, generator=torch.Generator().manual_seed(1)), dim=-1)
    text = torch.randn(2, 8, generator=torch.Generator().manual_seed(2))  # 2 prompts × 2 images
    for training in (True, False):
        out = bg(dirs, training, torch.Generator().manual_seed(3), text=text).detach()
        assert out.shape == (4, 5, 3) and torch.isfinite(out).all() and 0 <= float(out.min()) <= float(out.max()) <= 1
    assert torch.equal(bg(dirs, False, text=text).detach(), out)
    if kind in ("solid", "random"):  # evaluation colour: the configured one
        torch.testing.assert_close(out, torch.tensor([0.2, 0.4, 0.6]).expand(4, 5, 3), atol=0, rtol=0)
        assert bg.param_groups(1e-3) == []
    else:
        bg(dirs, False, text=text).sum().backward()
        (group,) = bg.param_groups(1e-3)
        assert len(group["params"]) == len(list(bg.parameters()))
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in group["params"])


@pytest.mark.parametrize("kind", sorted(SCHEDULES))
def test_schedule_contract(kind):
    value, points = SCHEDULES[kind]
    schedule = parse_schedule(value, "x")
    assert schedule.kind == kind
    for step, expected in points:
        assert schedule.at(step, 10) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_optimizer_contract(name):
    """build_optimizer by name, 30 steps on |w − target|²: the loss falls by at least half, every group kept."""
    torch.manual_seed(0)
    w, target = torch.nn.Parameter(torch.zeros(8)), torch.linspace(-1, 1, 8)
    extra = torch.nn.Parameter(torch.zeros(2))
    opt = build_optimizer(TrainConfig(optimizer=name, betas=OPTIMIZERS[name]),
                          [{"params": [w], "lr": 0.05}, {"params": [extra], "lr": 0.01}, {"params": []}])
    assert [g["lr"] for g in opt.param_groups] == [0.05, 0.01]  # an empty group is dropped, not an error
    first = float(((w - target) ** 2).sum().detach())
    for _ in range(30):
        opt.zero_grad()
        ((w - target) ** 2).sum().backward()
        opt.step()
    assert float(((w - target) ** 2).sum().detach()) < 0.5 * first


@pytest.mark.parametrize("weighting", WEIGHTINGS)
def test_weighting_contract(weighting):
    """w(t) [B]: finite and non-negative for every t of a 1000-step schedule, indexed by t."""
    alphas = torch.linspace(0.9999, 0.0047, 1000)  # SD's ᾱ range
    t = torch.tensor([0, 20, 500, 999])
    w = loss_weight(alphas, t, weighting)
    assert w.shape == (4,) and w.dtype == torch.float32 and torch.isfinite(w).all() and (w >= 0).all()
    torch.testing.assert_close(loss_weight(alphas, t[2:3], weighting), w[2:3], atol=0, rtol=0)

