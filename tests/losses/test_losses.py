"""Score-distillation losses against their formulas, with an analytic mock prior (a tiny real UNet for VSD).

The mock records every predict_noise call, so the tests recover t, t⁺ and the noise ε from what the prior
actually saw and recompute the gradient independently.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

from asdcli.conditioning import Conditioning
from asdcli.config import build_dataclass
from asdcli.errors import ConfigError
from asdcli.losses.asd import ASDConfig, AsynchronousScoreDistillation
from asdcli.losses.base import ScoreDistillationConfig
from asdcli.losses.csd import ClassifierScoreDistillation, CSDConfig
from asdcli.losses.sds import ScoreDistillationSampling, SDSConfig
from asdcli.losses.timesteps import TimestepWindow, shifted_timesteps, timestep_window
from asdcli.priors.base import Prior
from asdcli.schedule import Schedule

T = 1000
B, C, H = 3, 4, 6
L, D = 5, 7


def analytic_noise(z_t: Tensor, t: Tensor, text: Tensor, cameras: Tensor | None, scale: Tensor) -> Tensor:
    """A non-linear, text-, t- and camera-dependent ε̂ so that every input of the call matters."""
    out = scale * torch.sin(z_t) * (1.0 + t.float() / T).view(-1, 1, 1, 1)
    out = out + text.mean(dim=(1, 2)).view(-1, 1, 1, 1) + 0.3 * text[:, 0, :C].reshape(-1, C, 1, 1)
    if cameras is not None:
        out = out + 0.05 * cameras.sum(-1).view(-1, 1, 1, 1)
    return out


class PixelPriorForLosses(Prior):
    """A pixel-space prior as the losses see it: encode is the identity; text and conditioning are never used."""

    def encode(self, images: Tensor) -> Tensor:
        return images

    def encode_text(self, prompts: list[str]):
        raise AssertionError("not used by the losses")

    def conditioning(self, prompts, elevation, azimuth, c2w) -> Conditioning:
        raise AssertionError("not used by the losses")


class MockPrior(PixelPriorForLosses):
    """Deterministic analytic prior; keeps `scale` trainable so a leak of gradient into it would show."""

    def __init__(self, shared_timestep: bool = False, bad_values: bool = False) -> None:
        super().__init__()
        self.register_buffer("alphas_cumprod", torch.linspace(0.9999, 0.005, T))
        self.scale = nn.Parameter(torch.tensor(0.7))
        self.shared_timestep = shared_timestep
        self.bad_values = bad_values
        self.calls: list[dict[str, Tensor | None]] = []

    def predict_noise(self, z_t: Tensor, t: Tensor, text: Tensor, cameras: Tensor | None = None) -> Tensor:
        # No torch.no_grad here on purpose: the loss must provide it.
        self.calls.append({"z_t": z_t.clone(), "t": t.clone(), "text": text.clone(),
                           "cameras": None if cameras is None else cameras.clone()})
        out = analytic_noise(z_t, t, text, cameras, self.scale)
        if self.bad_values:
            out = out.clone()
            out[0, 0, 0, 0], out[0, 0, 0, 1], out[-1, 1, 2, 3] = float("nan"), float("inf"), float("-inf")
        return out


def make_cond(batch: int = B, cameras: bool = True, perp_neg: int = 0, seed: int = 1) -> Conditioning:
    g = torch.Generator().manual_seed(seed)
    cond = Conditioning(cond=torch.randn(batch, L, D, generator=g),
                        uncond=torch.randn(batch, L, D, generator=g))
    if cameras:
        cond.cameras = torch.randn(batch, 16, generator=g)
    if perp_neg:
        cond.perp_neg = torch.randn(batch, perp_neg, L, D, generator=g)
        cond.perp_neg_weights = -0.5 * torch.rand(batch, perp_neg, generator=g) - 0.2
    return cond


def make_loss(kind: str, prior: Prior, **options):
    classes = {"asd": (ASDConfig, AsynchronousScoreDistillation),
               "sds": (SDSConfig, ScoreDistillationSampling),
               "csd": (CSDConfig, ClassifierScoreDistillation)}
    cfg_cls, cls = classes[kind]
    return cls(build_dataclass(cfg_cls, {"kind": kind, **options}, "loss"), prior)


def run(loss, z0: Tensor, cond: Conditioning, step: int = 3, total: int = 10, seed: int = 0):
    z = z0.clone().requires_grad_(True)
    out = loss(z, cond, step, total, torch.Generator().manual_seed(seed))
    out.loss.backward()
    return out, z.grad


def alpha(prior: Prior, t: Tensor) -> Tensor:
    return prior.alphas_cumprod[t].view(-1, 1, 1, 1)


def recover_noise(prior: Prior, z: Tensor, z_t: Tensor, t: Tensor) -> Tensor:
    a = alpha(prior, t)
    return (z_t - a.sqrt() * z) / (1 - a).sqrt()


def perp_reference(x: Tensor, y: Tensor) -> Tensor:
    xf, yf = x.flatten(1), y.flatten(1)
    return (xf - (xf * yf).sum(1, keepdim=True) / (yf * yf).sum(1, keepdim=True) * yf).view_as(x)


def guided_reference(prior: MockPrior, z_t: Tensor, t: Tensor, cond: Conditioning, s: float) -> Tensor:
    cams = cond.cameras
    eps_c = analytic_noise(z_t, t, cond.cond, cams, prior.scale.detach())
    eps_u = analytic_noise(z_t, t, cond.uncond, cams, prior.scale.detach())
    delta = eps_c - eps_u
    for k in range(0 if cond.perp_neg is None else cond.perp_neg.shape[1]):
        eps_k = analytic_noise(z_t, t, cond.perp_neg[:, k], cams, prior.scale.detach())
        w_k = cond.perp_neg_weights[:, k].view(-1, 1, 1, 1)
        delta = delta + w_k * perp_reference(eps_k - eps_u, eps_c - eps_u)
    return eps_u + s * delta


@pytest.fixture
def z0() -> Tensor:
    return torch.randn(B, C, H, H, generator=torch.Generator().manual_seed(7))


# ------------------------------------------------------------------------------------------------ ASD
def test_a_scheduled_guidance_scale_is_the_constant_one_of_its_step(z0):
    """guidance_scale: {piecewise: {0: 7.5, 5: 1.5}} gives, at each step, the gradient of that step's constant
    scale (same seed), and logs the value it used."""
    cond = make_cond()
    scheduled = make_loss("asd", MockPrior(), guidance_scale={"piecewise": {0: 7.5, 5: 1.5}})
    for step, scale in ((4, 7.5), (5, 1.5)):
        out, grad = run(scheduled, z0, cond, step=step)
        _, expected = run(make_loss("asd", MockPrior(), guidance_scale=scale), z0, cond, step=step)
        assert out.logs["guidance_scale"] == scale
        assert torch.allclose(grad, expected)
    _, at_high = run(make_loss("asd", MockPrior(), guidance_scale=7.5), z0, cond, step=5)
    assert not torch.allclose(grad, at_high)  # the switch changes the gradient


def test_a_guidance_schedule_below_zero_at_any_step_is_refused():
    ramp = {"linear": {"from": 7.5, "to": -1.0, "start": 0, "end": 10}}
    with pytest.raises(ConfigError, match=r"loss\.guidance_scale: must be >= 0 at every step, got -1"):
        make_loss("asd", MockPrior(), guidance_scale=ramp)


@pytest.mark.parametrize("perp_neg", [0, 2])
def test_asd_gradient_matches_formula_with_shared_noise(z0, perp_neg):
    prior = MockPrior()
    cond = make_cond(perp_neg=perp_neg)
    loss = make_loss("asd", prior, guidance_scale=5.0)
    out, grad = run(loss, z0, cond)
    assert len(prior.calls) == 1
    call = prior.calls[0]
    n_t = (2 + perp_neg) * B
    assert call["z_t"].shape[0] == n_t + B  # [cond, uncond, negatives]@t + cond@t⁺ in one batch
    t, t_plus = call["t"][:B], call["t"][n_t:]
    assert all(torch.equal(call["t"][i * B:(i + 1) * B], t) for i in range(2 + perp_neg))
    texts = [cond.cond, cond.uncond, *[cond.perp_neg[:, k] for k in range(perp_neg)], cond.cond]
    assert torch.equal(call["text"], torch.cat(texts))
    assert torch.equal(call["cameras"], cond.cameras.repeat(3 + perp_neg, 1))
    # Shared noise: ε recovered from the z_t rows reproduces the z_{t⁺} rows.
    eps = recover_noise(prior, z0, call["z_t"][:B], t)
    assert abs(float(eps.mean())) < 0.2 and 0.8 < float(eps.std()) < 1.2
    a_plus = alpha(prior, t_plus)
    torch.testing.assert_close(call["z_t"][n_t:], a_plus.sqrt() * z0 + (1 - a_plus).sqrt() * eps)
    for i in range(1, 2 + perp_neg):
        assert torch.equal(call["z_t"][i * B:(i + 1) * B], call["z_t"][:B])
    z_t, z_tp = call["z_t"][:B], call["z_t"][n_t:]
    shifted = analytic_noise(z_tp, t_plus, cond.cond, cond.cameras, prior.scale.detach())
    expected = (1 - alpha(prior, t)) * (guided_reference(prior, z_t, t, cond, 5.0) - shifted)
    torch.testing.assert_close(grad, expected / B, rtol=1e-5, atol=1e-6)
    assert out.logs["grad_norm"] == pytest.approx(float(expected.norm()), rel=1e-5)
    assert out.logs["loss"] == pytest.approx(0.5 * float((expected**2).sum()) / B, rel=1e-5)
    assert out.logs["t_plus"] == pytest.approx(float(t_plus.float().mean()))
    assert prior.scale.grad is None  # the prior call ran without gradient


def test_asd_delta_t_bounds_in_forward(z0):
    prior = MockPrior()
    cond = make_cond(batch=16, cameras=False)
    z = torch.randn(16, C, H, H)
    loss = make_loss("asd", prior, shift_ratio=0.1)
    for step in range(0, 100, 7):
        loss(z, cond, step, 100, torch.Generator().manual_seed(step))
        window = timestep_window(T, loss.cfg.t_min, loss.cfg.t_max, step, 100)
        t, t_plus = prior.calls[-1]["t"][:16], prior.calls[-1]["t"][32:]
        assert bool(((t >= window.min_step) & (t <= window.max_step)).all())
        dt = t_plus - t
        assert bool((dt >= 0).all()) and bool((t_plus <= T - 1).all())
        assert bool((dt <= torch.floor(0.1 * (t - window.min_step).double())).all())


def test_shift_random_is_uniform_and_deterministic_without_u():
    window = TimestepWindow(min_step=20, max_step=500, num_train_timesteps=T)
    t = torch.full((20000,), 500, dtype=torch.long)
    t_plus, dt = shifted_timesteps(t, window, 0.1, True, False, torch.Generator().manual_seed(0))
    assert torch.equal(t_plus, t + dt)
    assert int(dt.min()) == 0 and int(dt.max()) == 47  # ⌊u·48⌋ covers 0..47
    assert float(dt.float().mean()) == pytest.approx(23.5, abs=0.5)  # half the deterministic 48 (minus ½)
    counts = torch.bincount(dt, minlength=48).float()
    assert float(counts.min()) > 0.7 * 20000 / 48 and float(counts.max()) < 1.3 * 20000 / 48
    t = torch.arange(20, 1000)
    window = TimestepWindow(min_step=20, max_step=999, num_train_timesteps=T)
    t_plus, dt = shifted_timesteps(t, window, 0.1, False, False, torch.Generator().manual_seed(0))
    expected = [math.floor(min(0.1 * (v - 20), T - 1 - v)) for v in t.tolist()]
    assert dt.tolist() == expected
    assert int(t_plus.max()) == T - 1 and int(dt[-1]) == 0  # near T the T−1−t bound wins


def test_shift_random_false_forward_gives_deterministic_shift(z0):
    prior = MockPrior()
    loss = make_loss("asd", prior, shift_random=False, shift_ratio=0.2)
    run(loss, z0, make_cond())
    window = timestep_window(T, loss.cfg.t_min, loss.cfg.t_max, 3, 10)
    t, t_plus = prior.calls[0]["t"][:B], prior.calls[0]["t"][2 * B:]
    expected = [min(v + math.floor(0.2 * (v - window.min_step)), T - 1) for v in t.tolist()]
    assert t_plus.tolist() == expected and t_plus.tolist() != t.tolist()


def test_timesteps_per_image_or_shared():
    cond = make_cond(batch=16)
    z = torch.randn(16, C, H, H)
    per_image, shared = MockPrior(), MockPrior(shared_timestep=True)
    make_loss("asd", per_image)(z, cond, 0, 10, torch.Generator().manual_seed(0))
    make_loss("asd", shared)(z, cond, 0, 10, torch.Generator().manual_seed(0))
    assert per_image.calls[0]["t"][:16].unique().numel() > 1
    assert per_image.calls[0]["t"][32:].unique().numel() > 1
    assert shared.calls[0]["t"][:16].unique().numel() == 1
    assert shared.calls[0]["t"][32:].unique().numel() == 1


def test_default_timestep_window_slides_over_the_run():
    cfg = ScoreDistillationConfig(kind="asd")
    start = timestep_window(T, cfg.t_min, cfg.t_max, 0, 5000)
    end = timestep_window(T, cfg.t_min, cfg.t_max, 5000, 5000)
    assert (start.min_step, start.max_step) == (500, 980)
    assert (end.min_step, end.max_step) == (20, 500)
    crossed = timestep_window(T, Schedule.constant(0.9), Schedule.constant(1.0), 0, 1)
    assert crossed.max_step == T - 1 and crossed.min_step == 900


def test_prior_parameters_bit_identical_after_asd_steps(z0):
    prior = MockPrior(shared_timestep=False)
    before = {k: v.clone() for k, v in prior.state_dict().items()}
    loss = make_loss("asd", prior)
    z = z0.clone().requires_grad_(True)
    opt = torch.optim.Adam([z, *prior.parameters()], lr=0.05)
    gen = torch.Generator().manual_seed(0)
    for step in range(6):
        opt.zero_grad()
        loss(z, make_cond(), step, 6, gen).loss.backward()
        opt.step()
    assert len(prior.calls) == 6 and prior.scale.grad is None
    assert all(torch.equal(before[k], v) for k, v in prior.state_dict().items())
    assert not torch.equal(z.detach(), z0)  # the render side did move
    assert list(loss.state_dict()) == [] and list(loss.parameters()) == []


# --------------------------------------------------------------------------------- shared behaviour
@pytest.mark.parametrize("kind,rows", [("asd", 3), ("sds", 2), ("csd", 2)])
def test_prior_called_once_per_forward(z0, kind, rows):
    prior = MockPrior()
    loss = make_loss(kind, prior)
    gen = torch.Generator().manual_seed(0)
    for step in range(3):
        loss(z0.clone().requires_grad_(True), make_cond(), step, 3, gen)
        assert len(prior.calls) == step + 1
    assert prior.calls[0]["z_t"].shape[0] == rows * B


@pytest.mark.parametrize("perp_neg", [0, 2])
def test_sds_gradient_matches_formula(z0, perp_neg):
    prior = MockPrior()
    cond = make_cond(perp_neg=perp_neg)
    _, grad = run(make_loss("sds", prior), z0, cond)
    call = prior.calls[0]
    assert call["z_t"].shape[0] == (2 + perp_neg) * B
    t, z_t = call["t"][:B], call["z_t"][:B]
    eps = recover_noise(prior, z0, z_t, t)
    expected = (1 - alpha(prior, t)) * (guided_reference(prior, z_t, t, cond, 7.5) - eps)
    torch.testing.assert_close(grad, expected / B, rtol=1e-5, atol=1e-5)


def test_csd_gradient_matches_formula(z0):
    prior = MockPrior()
    cond = make_cond()
    _, grad = run(make_loss("csd", prior, guidance_scale=100.0), z0, cond)
    t, z_t = prior.calls[0]["t"][:B], prior.calls[0]["z_t"][:B]
    eps_c = analytic_noise(z_t, t, cond.cond, cond.cameras, prior.scale.detach())
    eps_u = analytic_noise(z_t, t, cond.uncond, cond.cameras, prior.scale.detach())
    torch.testing.assert_close(grad, (1 - alpha(prior, t)) * (eps_c - eps_u) / B, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["asd", "sds", "csd"])
def test_weighting_variants_scale_the_same_direction(z0, kind):
    grads, ts = {}, {}
    for weighting in ("uniform", "sds", "fantasia3d"):
        prior = MockPrior()
        _, grads[weighting] = run(make_loss(kind, prior, weighting=weighting), z0, make_cond())
        ts[weighting] = prior.calls[0]["t"][:B]
    assert torch.equal(ts["uniform"], ts["sds"]) and torch.equal(ts["sds"], ts["fantasia3d"])
    a = alpha(MockPrior(), ts["sds"])
    torch.testing.assert_close(grads["sds"], (1 - a) * grads["uniform"], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(grads["fantasia3d"], a.sqrt() * (1 - a) * grads["uniform"],
                               rtol=1e-5, atol=1e-7)
    assert not torch.allclose(grads["sds"], grads["uniform"])


def test_a_switched_weighting_applies_from_its_step(z0):
    switched = make_loss("asd", MockPrior(), weighting={"piecewise": {0: "sds", 5: "uniform"}})
    for step, name in ((4, "sds"), (5, "uniform"), (9, "uniform")):
        _, grad = run(switched, z0, make_cond(), step=step)
        _, same = run(make_loss("asd", MockPrior(), weighting=name), z0, make_cond(), step=step)
        _, other = run(make_loss("asd", MockPrior(), weighting="uniform" if name == "sds" else "sds"), z0,
                       make_cond(), step=step)
        assert torch.equal(grad, same) and not torch.allclose(grad, other)


def test_nan_to_num_and_scheduled_grad_clip(z0):
    raw = {step: run(make_loss("asd", MockPrior(bad_values=True)), z0, make_cond(), step=step)[1]
           for step in (0, 7)}
    assert bool(torch.isfinite(raw[0]).all())
    assert float(raw[0][0, 0, 0, 0]) == 0.0  # the NaN the prior put there became 0
    assert float(raw[0].abs().max()) > 1e30  # ±inf became the largest finite float, so clipping matters
    big = float(raw[7][raw[7].abs() < 1e30].abs().max()) * B
    clip = {"piecewise": {0: 1e-3, 5: big / 2}}  # the schedule is evaluated at the step
    for step, bound in ((0, 1e-3), (7, big / 2)):
        loss = make_loss("asd", MockPrior(bad_values=True), grad_clip=clip)
        _, clipped = run(loss, z0, make_cond(), step=step)
        assert float(clipped.abs().max()) * B == pytest.approx(bound, rel=1e-5)
        torch.testing.assert_close(clipped * B, (raw[step] * B).clamp(-bound, bound), rtol=1e-5, atol=1e-8)


def test_runs_are_reproducible_from_the_generator(z0):
    loss = make_loss("asd", MockPrior())
    _, g1 = run(loss, z0, make_cond(), seed=3)
    _, g2 = run(loss, z0, make_cond(), seed=3)
    _, g3 = run(loss, z0, make_cond(), seed=4)
    assert torch.equal(g1, g2) and not torch.equal(g1, g3)


def test_config_validation():
    clip = {"linear": {"from": 1.0, "to": 0.1, "start": 0, "end": 1.0, "unit": "fraction"}}
    data = {"kind": "asd", "t_min": 0.1, "grad_clip": clip, "weights": {"sparsity": 20}}
    cfg = build_dataclass(ASDConfig, data, "loss")
    assert cfg.t_min == Schedule.constant(0.1) and cfg.grad_clip.at(5, 10) == pytest.approx(0.55)
    assert cfg.weights.distill.at(0, 1) == 1.0 and cfg.weights.sparsity.at(0, 1) == 20.0
    with pytest.raises(ConfigError, match="shift_ratio"):
        build_dataclass(ASDConfig, {"kind": "asd", "shift_ratio": -0.1}, "loss")
    with pytest.raises(ConfigError, match="weighting"):
        build_dataclass(ASDConfig, {"kind": "asd", "weighting": "sdss"}, "loss")
    with pytest.raises(ConfigError, match="shift_ratio"):
        build_dataclass(SDSConfig, {"kind": "sds", "shift_ratio": 0.1}, "loss")


# ------------------------------------------------------------------------------------------------ VSD
class TinyUNetPrior(PixelPriorForLosses):
    """Pixel-space prior around a tiny real diffusers UNet, exposing `unet` and `unet_forward` like the SD
    prior; counts and records predict_noise calls."""

    def __init__(self) -> None:
        from diffusers import UNet2DConditionModel

        super().__init__()
        torch.manual_seed(0)
        self.unet = UNet2DConditionModel(
            sample_size=8, in_channels=C, out_channels=C, block_out_channels=(8, 16), layers_per_block=1,
            cross_attention_dim=16, norm_num_groups=4, attention_head_dim=2,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))
        self.register_buffer("alphas_cumprod", torch.linspace(0.9999, 0.005, T))
        self.calls: list[tuple[Tensor, Tensor]] = []
        self.freeze()

    def unet_forward(self, unet: nn.Module, z_t: Tensor, t: Tensor, text: Tensor,
                     cameras: Tensor | None) -> Tensor:
        return unet(z_t, t, encoder_hidden_states=text).sample.float()

    def predict_noise(self, z_t: Tensor, t: Tensor, text: Tensor, cameras: Tensor | None = None) -> Tensor:
        self.calls.append((z_t.clone(), t.clone()))
        with torch.no_grad():
            return self.unet_forward(self.unet, z_t, t, text, cameras)


def vsd_setup(**options):
    from asdcli.losses.vsd import VariationalScoreDistillation, VSDConfig

    prior = TinyUNetPrior()
    cfg = build_dataclass(VSDConfig, {"kind": "vsd", "lora_lr": 1e-2, **options}, "loss")
    g = torch.Generator().manual_seed(2)
    cond = Conditioning(cond=torch.randn(2, L, 16, generator=g), uncond=torch.randn(2, L, 16, generator=g),
                        cameras=torch.randn(2, 16, generator=g))
    z0 = torch.randn(2, C, 8, 8, generator=g)
    return prior, VariationalScoreDistillation(cfg, prior), cond, z0


def test_vsd_trains_only_its_lora_and_matches_formula():
    prior, loss, cond, z0 = vsd_setup()
    prior_before = {k: v.clone() for k, v in prior.state_dict().items()}
    keys = list(loss.state_dict())
    assert keys and all(k.startswith(("lora.", "camera_mlp.")) for k in keys)
    z_t, t = torch.randn(2, C, 8, 8), torch.tensor([100, 700])
    # Zero-initialised LoRA B and camera layer: the LoRA model starts as the prior exactly.
    with torch.no_grad():
        eps_lora = loss.lora_noise(z_t, t, cond.cond, cond.cameras)
        # The copy is another module instance: kernels may round differently (~1e-6 on some CPUs).
        torch.testing.assert_close(eps_lora, prior.predict_noise(z_t, t, cond.cond), rtol=0, atol=1e-5)
    prior.calls.clear()
    gen = torch.Generator().manual_seed(0)
    for step in range(3):
        snapshot = {k: v.clone() for k, v in loss.state_dict().items()}
        z = z0.clone().requires_grad_(True)
        out = loss(z, cond, step, 3, gen)
        out.loss.backward()
    assert len(prior.calls) == 3 and prior.calls[-1][0].shape[0] == 4  # one [cond, uncond]@t call per step
    assert all(torch.equal(prior_before[k], v) for k, v in prior.state_dict().items())
    base = {k.replace(".base_layer", ""): v
            for k, v in loss.lora_unet.state_dict().items() if "lora_" not in k}
    assert base.keys() == prior.unet.state_dict().keys()
    assert all(torch.equal(v, prior.unet.state_dict()[k]) for k, v in base.items())  # copy's base untouched
    changed = [k for k, v in loss.state_dict().items() if not torch.equal(v, snapshot[k])]
    assert any(".B." in k for k in changed) and any(k.startswith("camera_mlp.") for k in changed)
    assert out.logs["lora_loss"] > 0
    # Gradient of the last step: w(t)·(ε̂_cfg − ε_lora) with the LoRA as it was before that step's update.
    z_in, t_in = prior.calls[-1]
    loss.load_state_dict(snapshot)
    with torch.no_grad():
        eps = prior.unet_forward(prior.unet, z_in, t_in, torch.cat([cond.cond, cond.uncond]), None)
        eps_lora = loss.lora_noise(z_in[:2], t_in[:2], cond.cond, cond.cameras)
    expected = (1 - alpha(prior, t_in[:2])) * (eps[2:] + 7.5 * (eps[:2] - eps[2:]) - eps_lora)
    torch.testing.assert_close(z.grad, expected / 2, rtol=1e-4, atol=1e-6)


def test_vsd_checkpoint_round_trip_continues_identically():
    prior, loss, cond, z0 = vsd_setup()
    gen = torch.Generator().manual_seed(0)
    for step in range(2):
        loss(z0.clone().requires_grad_(True), cond, step, 4, gen)
    from asdcli.losses.vsd import VariationalScoreDistillation

    resumed = VariationalScoreDistillation(loss.cfg, prior)
    resumed.load_state_dict(loss.state_dict())
    resumed.load_optimizer_state_dict(loss.optimizer_state_dict())
    assert loss.optimizer_state_dict()["state"]  # Adam moments exist and were carried over
    gen_state = gen.get_state()
    a = loss(z0.clone().requires_grad_(True), cond, 2, 4, gen)
    b = resumed(z0.clone().requires_grad_(True), cond, 2, 4, torch.Generator().set_state(gen_state))
    assert a.logs == b.logs
    diff = [k for k, v in loss.state_dict().items() if not torch.equal(v, resumed.state_dict()[k])]
    assert not diff, diff


def test_vsd_camera_condition_needs_cameras():
    prior, loss, cond, z0 = vsd_setup()
    no_cams = Conditioning(cond=cond.cond, uncond=cond.uncond)
    with pytest.raises(ValueError, match="cameras"):
        loss(z0.clone().requires_grad_(True), no_cams, 0, 1, torch.Generator().manual_seed(0))
    _, plain, _, _ = vsd_setup(camera_condition=False)
    out = plain(z0.clone().requires_grad_(True), no_cams, 0, 1, torch.Generator().manual_seed(0))
    assert math.isfinite(out.logs["lora_loss"])
    assert not any(k.startswith("camera") for k in plain.state_dict())
