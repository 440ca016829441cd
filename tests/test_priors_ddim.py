"""DDIM sampling (asdcli.priors.ddim) against the exact denoiser of a point mass, whose sample is known."""

from __future__ import annotations

import torch

from asdcli.priors.ddim import ddim_sample


class PointMassPrior:
    """The data distribution is one image per text: x0 = text[:, 0, 0] in every pixel (in [−1, 1]). Its exact
    noise prediction is ε = (x_t − √ᾱ_t·x0) / √(1 − ᾱ_t), so DDIM (η = 0) must land on x0 from any noise."""

    def __init__(self, size: int = 4, steps: int = 1000):
        self.alphas_cumprod = torch.cumprod(1 - torch.linspace(1e-4, 0.02, steps), dim=0)
        self.image_size = size
        self.calls = 0

    def predict_noise(self, z_t: torch.Tensor, t: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        a = self.alphas_cumprod[t].view(-1, 1, 1, 1)
        x0 = text[:, 0, 0].view(-1, 1, 1, 1).expand_as(z_t)
        return (z_t - a.sqrt() * x0) / (1 - a).sqrt()


def _text(values: list[float]) -> torch.Tensor:
    """[B, 2, 3] text states whose [:, 0, 0] entry names the target pixel value."""
    out = torch.zeros(len(values), 2, 3)
    out[:, 0, 0] = torch.tensor(values)
    return out


def test_ddim_reaches_the_point_mass_and_guidance_interpolates():
    prior = PointMassPrior()
    cond, uncond = _text([0.6, -0.2]), _text([-0.6, -0.6])
    gen = torch.Generator().manual_seed(0)
    imgs = ddim_sample(prior, cond, uncond, 1.0, 20, gen)
    assert imgs.shape == (2, 3, 4, 4) and prior.calls == 20  # one [uncond; cond] call per step
    want = torch.tensor([0.8, 0.4]).view(2, 1, 1, 1).expand_as(imgs)  # (x0 + 1) / 2
    assert torch.allclose(imgs, want, atol=1e-4)
    # ε is affine in x0, so guidance scale s samples x0_u + s·(x0_c − x0_u), clipped to [−1, 1]
    half = ddim_sample(prior, cond, uncond, 0.5, 20, torch.Generator().manual_seed(1))
    assert torch.allclose(half, ((torch.tensor([0.0, -0.4]) + 1) / 2).view(2, 1, 1, 1).expand_as(half), atol=1e-4)
    strong = ddim_sample(prior, cond, uncond, 7.5, 20, torch.Generator().manual_seed(2))
    assert torch.allclose(strong[0], torch.ones_like(strong[0]), atol=1e-4)  # −0.6 + 7.5·1.2 clipped to 1


def test_ddim_is_a_function_of_the_generator():
    prior = PointMassPrior()
    prior.predict_noise = lambda z, t, text: torch.zeros_like(z)  # ε̂ = 0: x̂0 = x_t / √ᾱ_t keeps the noise
    cond = uncond = _text([0.0, 0.0])
    a = ddim_sample(prior, cond, uncond, 3.0, 5, torch.Generator().manual_seed(7))
    b = ddim_sample(prior, cond, uncond, 3.0, 5, torch.Generator().manual_seed(7))
    c = ddim_sample(prior, cond, uncond, 3.0, 5, torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.allclose(a, c, atol=1e-3)
    assert a.min() >= 0 and a.max() <= 1
