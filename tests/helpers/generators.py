"""Tiny generators of every kind, shared by tests/generators/test_generators.py and the contract tests."""

import torch

from asdcli.conditioning import TextEmbeddings
from asdcli.generators.conv3d import Conv3DConfig, Conv3DNet
from asdcli.generators.hashgrid import HashGridConfig
from asdcli.generators.hyper_ingp import HyperINGP, HyperINGPConfig
from asdcli.generators.nerf import NeRF, NeRFConfig
from asdcli.generators.triplane import TriplaneConfig, TriplaneGenerator
from asdcli.generators.triplane_transformer import TriplaneTransformer, TriplaneTransformerConfig

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


def inputs(gen, p=2):
    """(text, noise) for p prompts: TextEmbeddings [p, 7, D] / pooled [p, D], noise [p, noise_dim] or None."""
    g = torch.Generator().manual_seed(1)
    text = TextEmbeddings(torch.randn(p, 7, D, generator=g), torch.randn(p, D, generator=g))
    noise = torch.randn(p, gen.noise_dim, generator=g) if gen.noise_dim else None
    return text, noise
