"""3DConv-Net: a StyleGAN2-style 3D synthesis network that turns (noise, pooled text) into a feature volume.

Mapping: z [P, 64] (2nd-moment normalised) → FC 64→256→256 (lrelu) → concat pooled text (1024)
→ FC 1280→256 = w. Synthesis (skip architecture, w shared by every layer): a learned constant 512×4³, then
per block of resolution r ∈ {8, …, 128}: modulated 3×3×3 conv (demodulated) + trilinear ×2 upsampling
(align_corners=True), a learned bias volume [C, r³] where r ≤ 64, a second modulated conv, and a toRGB
(1×1×1, not demodulated) summed into the upsampled skip output. Each layer adds per-voxel noise scaled by a
learned strength (initialised to 0), a bias, lrelu·√2 and a ±256 clamp. Channels min(8192·cm / r, 512):
512, 512, 512, 256·cm, 128·cm, 64·cm. Output: a [P, 32, 128³] feature volume. Query: trilinear grid_sample
(align_corners=False) → bias-free MLPs 32→64→1 (sdf, plus |x| − 0.8) and 32→64→3 (colour features).
cm 1 ≈ 88.7M parameters, cm 2 ≈ 144.8M. All layers are batched over prompts (grouped convolutions), and
each prompt's samples are read from its own volume.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from asdcli.conditioning import TextEmbeddings
from asdcli.config import ZERO_OK
from asdcli.generators.base import FieldOutput, Generator
from asdcli.generators.mlp import VanillaMLP, sphere_sdf
from asdcli.generators.sampling import grid_sample


@dataclass(frozen=True)
class Conv3DConfig:
    kind: Literal["3dconv-net"] = "3dconv-net"
    text_dim: int = 1024  # width of the pooled text embedding
    z_dim: int = field(default=64, metadata=ZERO_OK)  # Gaussian noise input
    w_dim: int = 256  # style vector width
    mapping_layers: int = field(default=2, metadata=ZERO_OK)  # FC layers on z before the text is concatenated
    img_resolution: int = 128  # side of the output volume (a power of two ≥ 8)
    img_channels: int = 32  # channels of the output volume
    channel_multiplier: int = 1  # cm: 1 (≈88.7M) or 2 (the wide CP100k net, ≈144.8M)
    channel_base: int = 8192  # channels at resolution r: min(channel_base·cm / r, channel_max)
    channel_max: int = 512
    # blocks up to this resolution add a learned bias volume after conv0
    bias_volume_max_res: int = field(default=64, metadata=ZERO_OK)
    # Per-voxel noise: "random" (the reference; also at evaluation), "const" (fixed per layer), "none".
    noise_mode: Literal["random", "const", "none"] = "random"
    conv_clamp: float = 256.0  # activation clamp of every layer
    mlp_hidden: int = 64  # decoder MLP width
    sdf_bias_radius: float = 0.8  # sdf = MLP + |x| − this
    radius: float = 2.0  # field box [-radius, radius]^3


class EqualLinear(nn.Module):
    """Linear layer with StyleGAN's equalised learning rate: weights N(0, 1), scaled by 1/√fan_in."""

    def __init__(self, dim_in: int, dim_out: int, bias_init: float = 0.0, activation: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(dim_out, dim_in))
        self.bias = nn.Parameter(torch.full((dim_out,), float(bias_init)))
        self.gain, self.activation = 1.0 / math.sqrt(dim_in), activation

    def forward(self, x: Tensor) -> Tensor:
        x = F.linear(x, self.weight * self.gain, self.bias)
        return F.leaky_relu(x, 0.2) * math.sqrt(2) if self.activation else x


def modulated_conv3d(x: Tensor, weight: Tensor, styles: Tensor, demodulate: bool) -> Tensor:
    """x [P, Cin, D, H, W], weight [Cout, Cin, k, k, k], styles [P, Cin] → [P, Cout, D, H, W] (same size).

    Each prompt gets its own modulated kernel; one grouped convolution runs them all."""
    p, cin = styles.shape
    w = weight[None] * styles[:, None, :, None, None, None]  # [P, Cout, Cin, k, k, k]
    if demodulate:
        w = w * torch.rsqrt(w.square().sum(dim=(2, 3, 4, 5), keepdim=True) + 1e-8)
    k = weight.shape[-1]
    out = F.conv3d(x.reshape(1, p * cin, *x.shape[2:]), w.reshape(-1, cin, k, k, k), padding=k // 2, groups=p)
    return out.view(p, -1, *out.shape[2:])


class SynthesisLayer(nn.Module):
    """Modulated 3×3×3 conv (+ optional ×2 upsampling) → noise → bias → lrelu·√2 → clamp."""

    def __init__(self, cin: int, cout: int, cfg: Conv3DConfig, resolution: int, up: bool, seed: int):
        super().__init__()
        self.affine = EqualLinear(cfg.w_dim, cin, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(cout, cin, 3, 3, 3))
        self.bias = nn.Parameter(torch.zeros(cout))
        self.noise_strength = nn.Parameter(torch.zeros(()))
        self.up, self.res, self.seed = up, resolution, seed
        self.noise_mode, self.clamp = cfg.noise_mode, cfg.conv_clamp

    def _noise(self, x: Tensor) -> Tensor | None:
        shape = (x.shape[0], 1, self.res, self.res, self.res)
        if self.noise_mode == "random":
            return torch.randn(shape, device=x.device, dtype=x.dtype)
        if self.noise_mode == "const":  # fixed per layer; regenerated, not stored (8 MB at 128³)
            g = torch.Generator().manual_seed(self.seed)
            return torch.randn((1, *shape[1:]), generator=g).to(x.device, x.dtype).expand(shape)
        return None

    def forward(self, x: Tensor, w: Tensor) -> Tensor:
        """x [P, cin, r', r', r'] (r' = r/2 when up), w [P, w_dim] → [P, cout, r, r, r]."""
        x = modulated_conv3d(x, self.weight, self.affine(w), demodulate=True)
        if self.up:  # convolving before upsampling is 8× cheaper than after
            x = F.interpolate(x, scale_factor=2, mode="trilinear", align_corners=True)
        noise = self._noise(x)
        if noise is not None:
            x = x + noise * self.noise_strength
        x = F.leaky_relu(x + self.bias.view(1, -1, 1, 1, 1), 0.2) * math.sqrt(2)
        return x.clamp(-self.clamp, self.clamp)


class ToRGB(nn.Module):
    """1×1×1 modulated conv without demodulation → [P, img_channels, r, r, r] (linear, clamped)."""

    def __init__(self, cin: int, cfg: Conv3DConfig):
        super().__init__()
        self.affine = EqualLinear(cfg.w_dim, cin, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(cfg.img_channels, cin, 1, 1, 1))
        self.bias = nn.Parameter(torch.zeros(cfg.img_channels))
        self.gain, self.clamp = 1.0 / math.sqrt(cin), cfg.conv_clamp

    def forward(self, x: Tensor, w: Tensor) -> Tensor:
        x = modulated_conv3d(x, self.weight, self.affine(w) * self.gain, demodulate=False)
        return (x + self.bias.view(1, -1, 1, 1, 1)).clamp(-self.clamp, self.clamp)


class SynthesisBlock(nn.Module):
    """One resolution: (const | conv0 ↑2 + bias volume) → conv1 → toRGB added to the upsampled skip output."""

    def __init__(self, cin: int, cout: int, res: int, cfg: Conv3DConfig):
        super().__init__()
        self.first = cin == 0
        if self.first:
            self.const = nn.Parameter(torch.randn(cout, res, res, res))
        else:
            self.conv0 = SynthesisLayer(cin, cout, cfg, res, up=True, seed=2 * res)
            if res <= cfg.bias_volume_max_res:
                self.bias_volume = nn.Parameter(torch.zeros(cout, res, res, res))
        self.conv1 = SynthesisLayer(cout, cout, cfg, res, up=False, seed=2 * res + 1)
        self.torgb = ToRGB(cout, cfg)

    def forward(self, x: Tensor | None, img: Tensor | None, w: Tensor) -> tuple[Tensor, Tensor]:
        """x [P, cin, r/2³] (None for the first block), img [P, C_img, r/2³] or None, w [P, w_dim]."""
        if self.first:
            x = self.const[None].expand(w.shape[0], -1, -1, -1, -1)
        else:
            x = self.conv0(x, w)
            if hasattr(self, "bias_volume"):
                x = x + self.bias_volume[None]
        x = self.conv1(x, w)
        y = self.torgb(x, w)
        if img is not None:
            y = y + F.interpolate(img, scale_factor=2, mode="trilinear", align_corners=True)
        return x, y


class Conv3DNet(Generator):
    """(pooled text [P, 1024], noise [P, 64]) → feature volume [P, 32, R, R, R]; trilinear queries."""

    Config = Conv3DConfig
    field_type = "sdf"
    text_input = "pooled"

    def __init__(self, cfg: Conv3DConfig):
        super().__init__()
        self.cfg = cfg
        self.noise_dim = cfg.z_dim
        dims = [cfg.z_dim] + [cfg.w_dim] * cfg.mapping_layers
        self.mapping = nn.Sequential(*(EqualLinear(a, b, activation=True) for a, b in zip(dims[:-1], dims[1:],
                                                                                        strict=True)))
        self.to_w = EqualLinear(cfg.w_dim + cfg.text_dim, cfg.w_dim)
        n_blocks = int(round(math.log2(cfg.img_resolution))) - 1
        if cfg.img_resolution != 2 ** (n_blocks + 1) or n_blocks < 2:
            raise ValueError(f"3dconv-net img_resolution must be a power of two ≥ 8, got "
                             f"{cfg.img_resolution}")
        blocks, cin = [], 0
        for i in range(n_blocks):
            res = 4 * 2**i
            cout = min(cfg.channel_base * cfg.channel_multiplier // res, cfg.channel_max)
            blocks.append(SynthesisBlock(cin, cout, res, cfg))
            cin = cout
        self.blocks = nn.ModuleList(blocks)
        self.sdf_mlp = VanillaMLP(cfg.img_channels, cfg.mlp_hidden, 1)
        self.feature_mlp = VanillaMLP(cfg.img_channels, cfg.mlp_hidden, 3)

    def style(self, pooled: Tensor, noise: Tensor) -> Tensor:
        """w [P, w_dim] from pooled text [P, D] and noise [P, z_dim]."""
        z = noise * torch.rsqrt(noise.square().mean(dim=1, keepdim=True) + 1e-8)
        return self.to_w(torch.cat([self.mapping(z), pooled], dim=1))

    def forward(self, text: TextEmbeddings, noise: Tensor | None = None) -> Tensor:
        """text.pooled [P, D], noise [P, z_dim] (None: zeros) → volume [P, C, R, R, R]."""
        pooled = text.pooled.float()
        if pooled.shape[-1] != self.cfg.text_dim:
            raise ValueError(f"3dconv-net expects pooled text width {self.cfg.text_dim}, got "
                             f"{pooled.shape[-1]}; set generator.text_dim")
        if noise is None:
            noise = torch.zeros(pooled.shape[0], self.cfg.z_dim, device=pooled.device)
        w = self.style(pooled, noise.to(pooled))
        x = img = None
        for block in self.blocks:
            x, img = block(x, img, w)
        return img

    def query(self, state: Tensor, points: Tensor) -> FieldOutput:
        """volume [P, C, R, R, R], points [P, N, 3] → sdf [P, N], features [P, N, 3].

        grid_sample reads coordinate (x, y, z) as (W, H, D), consistently for every prompt's own volume."""
        feats = self._sample(state, points)
        return FieldOutput(self._sdf(feats, points), self.feature_mlp(feats))

    def query_value(self, state: Tensor, points: Tensor) -> Tensor:
        return self._sdf(self._sample(state, points), points)

    def _sample(self, state: Tensor, points: Tensor) -> Tensor:
        """Trilinear features [P, N, C] of each prompt's own volume at its points."""
        p, n, _ = points.shape
        grid = (points / self.cfg.radius).view(p, 1, 1, n, 3).to(state.dtype)
        feats = grid_sample(state, grid)
        return feats.view(p, -1, n).transpose(1, 2)

    def _sdf(self, feats: Tensor, points: Tensor) -> Tensor:
        return self.sdf_mlp(feats).squeeze(-1) + sphere_sdf(points, self.cfg.sdf_bias_radius)
