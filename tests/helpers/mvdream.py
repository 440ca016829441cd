"""A tiny MVDream UNet (diffusers blocks, 4 views), shared by tests/priors/test_mvdream.py and the contract tests."""

import torch

from asdcli.priors.mvdream_unet import build_mvdream_unet, mvdream_unet_config

MC, MULT, NRB, ATTN, CTX, CAM, HEAD = 32, (1, 1, 2), 1, (True, True, False), 32, 16, 16
TINY = mvdream_unet_config(block_out_channels=tuple(MC * m for m in MULT), layers_per_block=NRB,
                           attention=ATTN, head_channels=HEAD, cross_attention_dim=CTX, camera_dim=CAM,
                           in_channels=4, sample_size=8)


def unet(num_frames=4, seed=0):
    """The tiny UNet with seeded random weights, in eval mode."""
    torch.manual_seed(seed)
    return build_mvdream_unet(TINY, num_frames).eval()
