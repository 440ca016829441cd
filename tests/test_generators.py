"""Every generator at a tiny size: per-prompt outputs, batch consistency, gradients; paper sizes."""

import dataclasses

import pytest
import torch

from asdcli.conditioning import TextEmbeddings
from asdcli.generators.conv3d import Conv3DConfig, Conv3DNet
from asdcli.generators.hashgrid import HashGridConfig
from asdcli.generators.hyper_ingp import HyperINGP, HyperINGPConfig
from asdcli.generators.nerf import NeRF, NeRFConfig
from asdcli.generators.triplane import TriplaneConfig, TriplaneGenerator
from asdcli.generators.triplane_transformer import TriplaneTransformer, TriplaneTransformerConfig
from asdcli.render.background import Background

D = 16
TINY_GRID = HashGridConfig(n_levels=4, n_features_per_level=2, log2_hashmap_size=10, base_resolution=4,
                           per_level_scale=2.0, backend="torch")
TINY = {
    "triplane": (TriplaneGenerator, TriplaneConfig(text_dim=D, plane_res=8, width=32)),
    "hyper-ingp": (HyperINGP, HyperINGPConfig(text_dim=D, grid=TINY_GRID, mlp_hidden=16, radius=1.0)),
    "3dconv-net": (Conv3DNet, Conv3DConfig(text_dim=D, z_dim=8, w_dim=16, img_resolution=16, img_channels=4,
                                           channel_base=128, channel_max=16, bias_volume_max_res=8,
                                           noise_mode="const", mlp_hidden=16, radius=1.0)),
    "triplane-transformer": (TriplaneTransformer, TriplaneTransformerConfig(
        text_dim=D, inner_dim=32, num_layers=1, num_heads=2, low_res=4, high_res=8, triplane_dim=4,
        mlp_hidden=16, radius=1.0)),
    "nerf": (NeRF, NeRFConfig(grid=TINY_GRID, mlp_hidden=16)),
}


def build(kind):
    torch.manual_seed(0)
    cls, cfg = TINY[kind]
    return cls(cfg)


def inputs(gen, p=2):
    g = torch.Generator().manual_seed(1)
    text = TextEmbeddings(torch.randn(p, 7, D, generator=g), torch.randn(p, D, generator=g))
    noise = torch.randn(p, gen.noise_dim, generator=g) if gen.noise_dim else None
    return text, noise


@pytest.mark.parametrize("kind", sorted(TINY))
def test_config_and_kind(kind):
    cls, cfg = TINY[kind]
    assert cls.Config is type(cfg) and cfg.kind == kind
    assert dataclasses.fields(cfg) and cls.Config.__dataclass_params__.frozen


@pytest.mark.parametrize("kind", sorted(TINY))
def test_prompts_get_their_own_fields(kind):
    gen = build(kind)
    text, noise = inputs(gen)
    pts = (torch.rand(1, 200, 3) * 1.6 - 0.8).expand(2, -1, -1)
    out = gen.query(gen(text, noise), pts)
    assert out.value.shape == (2, 200) and out.features.shape[:2] == (2, 200)
    assert torch.isfinite(out.value).all() and torch.isfinite(out.features).all()
    differs = not torch.allclose(out.features[0], out.features[1], atol=1e-6)
    assert differs == (kind != "nerf")  # the single-prompt NeRF ignores the text by design
    # Batch consistency: prompt 1 queried inside a batch of 2 == prompt 1 alone (catches reshape mix-ups).
    single = gen.query(gen(text.index([1]), None if noise is None else noise[1:]), pts[1:])
    torch.testing.assert_close(out.value[1:], single.value, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out.features[1:], single.features, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("kind", sorted(TINY))
def test_gradients_reach_every_parameter(kind):
    gen = build(kind)
    if kind == "3dconv-net":
        gen = Conv3DNet(dataclasses.replace(TINY[kind][1], noise_mode="random"))
    text, noise = inputs(gen)
    pts = (torch.rand(2, 300, 3) * 1.6 - 0.8).requires_grad_(True)
    out = gen.query(gen(text, noise), pts)
    (grad,) = torch.autograd.grad(out.value.sum(), pts, create_graph=True)
    loss = out.value.mean() + gen.rgb(out.features).mean() + ((grad.norm(dim=-1) - 1) ** 2).mean()
    loss.backward()
    for name, p in gen.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    groups = gen.param_groups(1e-3)
    assert sum(len(g["params"]) for g in groups) == len(list(gen.parameters()))


@pytest.mark.parametrize("kind", ["triplane", "hyper-ingp"])
def test_initial_sdf_is_near_the_sphere(kind):
    gen = build(kind)
    text, noise = inputs(gen)
    pts = torch.rand(2, 500, 3) * 2 - 1
    value = gen.query(gen(text, noise), pts).value
    radius = gen.cfg.sdf_bias_radius
    assert (value - (pts.norm(dim=-1) - radius)).abs().max() < 0.05


def test_nerf_blob_and_param_groups():
    gen = build("nerf")
    value = gen.query(gen(None), torch.tensor([[[0.0, 0.0, 0.0], [0.9, 0.0, 0.0]]])).value
    assert value[0, 0] > 9.0 and value[0, 1] < -5.0  # 10·(1 − |x|/0.5) plus a small MLP term
    names = {g["name"]: g["lr"] for g in gen.param_groups(1e-3)}
    assert names == {"encoding": pytest.approx(1e-2), "generator": 1e-3}


def param_count(module_fn):
    with torch.device("meta"):
        return sum(p.numel() for p in module_fn().parameters())


@pytest.mark.parametrize("name, make, target", [
    ("hyper-ingp + text env map", lambda: torch.nn.ModuleList([
        HyperINGP(HyperINGPConfig(grid=HashGridConfig(backend="torch"))),
        Background("text-env-mlp", text_dim=1024)]), 13.3e6),
    ("3dconv-net cm1", lambda: Conv3DNet(Conv3DConfig()), 88.7e6),
    ("3dconv-net cm2", lambda: Conv3DNet(Conv3DConfig(channel_multiplier=2)), 144.8e6),
    ("triplane-transformer", lambda: TriplaneTransformer(TriplaneTransformerConfig()), 120.6e6),
])
def test_paper_parameter_counts(name, make, target):
    n = param_count(make)
    assert abs(n - target) / target < 0.05, (name, n)


@pytest.mark.parametrize("kind", sorted(TINY))
def test_query_value_equals_query(kind):
    gen = build(kind)
    text, noise = inputs(gen)
    with torch.no_grad():
        state = gen(text, noise)
        points = torch.rand(2, 64, 3) * 2 - 1
        torch.testing.assert_close(gen.query_value(state, points), gen.query(state, points).value)
