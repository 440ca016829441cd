"""Building blocks shared by the generators: bias-free MLPs, attention blocks, triplane sampling."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from asdcli.generators.sampling import grid_sample


class VanillaMLP(nn.Module):
    """in → hidden (ReLU) ×n_hidden_layers → out, without biases (the reference's decoder heads).

    `out_scale` multiplies the last layer's initial weights: a small value makes the head start near zero so a
    generator's initial SDF is its analytic sphere bias.
    """

    def __init__(self, dim_in: int, hidden: int, dim_out: int, n_hidden_layers: int = 1, bias: bool = False,
                 out_scale: float = 1.0):
        super().__init__()
        dims = [dim_in] + [hidden] * n_hidden_layers + [dim_out]
        pairs = zip(dims[:-1], dims[1:], strict=True)
        self.layers = nn.ModuleList(nn.Linear(a, b, bias=bias) for a, b in pairs)
        if out_scale != 1.0:
            with torch.no_grad():
                self.layers[-1].weight.mul_(out_scale)

    def forward(self, x: Tensor) -> Tensor:
        """x [..., dim_in] → [..., dim_out]."""
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x


class Attention(nn.Module):
    """Multi-head attention: q/k/v without bias, output projection with bias (the reference's layout).

    Uses torch's scaled_dot_product_attention (flash / memory-efficient kernels on CUDA).
    """

    def __init__(self, dim: int, num_heads: int, context_dim: int | None = None):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"attention width {dim} is not divisible by {num_heads} heads")
        context_dim = context_dim or dim
        self.num_heads = num_heads
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(context_dim, dim, bias=False)
        self.to_v = nn.Linear(context_dim, dim, bias=False)
        self.to_out = nn.Linear(dim, dim)

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """x [B, N, dim], context [B, L, context_dim] (None = self-attention) → [B, N, dim]."""
        context = x if context is None else context
        b, n, d = x.shape
        h = self.num_heads

        def split(t: Tensor) -> Tensor:
            return t.view(b, -1, h, d // h).transpose(1, 2)

        out = F.scaled_dot_product_attention(split(self.to_q(x)), split(self.to_k(context)),
                                             split(self.to_v(context)))
        return self.to_out(out.transpose(1, 2).reshape(b, n, d))


class ConditionBlock(nn.Module):
    """x += CrossAttn(LN(x), text); x += SelfAttn(LN(x)); x += MLP(LN(x)) (the reference's
    ConditionModulationBlock with local text tokens; no adaLN)."""

    def __init__(self, dim: int, context_dim: int, num_heads: int, mlp_ratio: float = 4.0, eps: float = 1e-6):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.cross_attn = Attention(dim, num_heads, context_dim)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.self_attn = Attention(dim, num_heads)
        self.norm3 = nn.LayerNorm(dim, eps=eps)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        """x [B, N, dim], context [B, L, context_dim] → [B, N, dim]."""
        x = x + self.cross_attn(self.norm1(x), context)
        x = x + self.self_attn(self.norm2(x))
        return x + self.mlp(self.norm3(x))


def sample_triplanes(planes: Tensor, points: Tensor, radius: float) -> Tensor:
    """Bilinear features of 3 axis-aligned planes at points, concatenated.

    planes [P, 3, C, R, R] (xy, xz, zy: EG3D's planes with the corrected third axis order); points [P, N, 3]
    in world units inside [-radius, radius]^3 → [P, N, 3·C]. Zero padding, align_corners=False.
    """
    p, _, c, r, _ = planes.shape
    x = points / radius
    coords = torch.stack([x[..., [0, 1]], x[..., [0, 2]], x[..., [2, 1]]], dim=1)  # [P, 3, N, 2]
    feats = grid_sample(planes.reshape(p * 3, c, r, r), coords.reshape(p * 3, 1, -1, 2))  # [P·3, C, 1, N]
    return feats.view(p, 3, c, -1).permute(0, 3, 1, 2).reshape(p, -1, 3 * c)


def triplane_cells(planes: Tensor) -> list[Tensor]:
    """Each cell's bilinear coefficients, for lookups with one gather per point and plane.

    planes [P, 3, C, R, R] → a, b, c, d, each [P·3, C, (R+1)²]: over the planes zero-padded by one texel (zero
    padding, as grid_sample's), cell (j, i) has f(u, v) = a + b·u + c·v + d·u·v for the fractions u, v ∈ [0, 1)
    inside the cell (u along the plane's width). Four tables, not one stacked: a stacked gather's backward
    would concatenate four full-size gradients."""
    p, _, c, r, _ = planes.shape
    padded = F.pad(planes, (1, 1, 1, 1))
    f00, f10 = padded[..., :-1, :-1], padded[..., :-1, 1:]
    f01, f11 = padded[..., 1:, :-1], padded[..., 1:, 1:]
    return [t.reshape(p * 3, c, (r + 1) ** 2) for t in (f00, f10 - f00, f01 - f00, f11 - f10 - f01 + f00)]


def sample_triplanes_with_slopes(planes: Tensor, points: Tensor, radius: float) -> tuple[Tensor, Tensor, Tensor]:
    """`sample_triplanes` (same values to float rounding), channel-major, and the features' slopes.

    planes [P, 3, C, R, R], points [P, N, 3] inside [-radius, radius]³ (renderers clamp their samples) →
    features [P, 3·C, N]; slope_u, slope_v [P, 3, C, N]: d feature / d (plane axis) in texels (times
    R / (2·radius) for world units). Channel-major so every elementwise step runs along N, contiguous."""
    p, n, _ = points.shape
    c, r = planes.shape[2], planes.shape[-1]
    uv = (points.detach() / radius)[..., [0, 1, 0, 2, 2, 1]].view(p, n, 3, 2).permute(0, 2, 3, 1)  # [P, 3, 2, N]
    pix = ((uv + 1) * r - 1) / 2  # align_corners=False
    low = pix.floor()
    frac = (pix - low).to(planes.dtype)
    low = low.long().clamp(-1, r - 1) + 1  # cell of the padded plane
    cell = (low[:, :, 1] * (r + 1) + low[:, :, 0]).reshape(p * 3, 1, n)
    index = cell.expand(-1, c, -1)
    a, b, cc, d = (table.gather(2, index).view(p, 3, c, n) for table in triplane_cells(planes))
    fu, fv = frac[:, :, 0:1], frac[:, :, 1:2]  # [P, 3, 1, N]
    slope_v = cc + fu * d
    feats = a + fu * b + fv * slope_v
    return feats.view(p, 3 * c, n), b + fv * d, slope_v


def triplane_gradient(d_feats: Tensor, slope_u: Tensor, slope_v: Tensor, scale: float) -> Tensor:
    """Chain rule from d value / d features [P, 3·C, N] and the plane slopes [P, 3, C, N] (times `scale`, texels
    per world unit) to d value / d point [P, N, 3]: x is read by planes xy and xz (their u), y by xy and zy
    (their v), z by xz (v) and zy (u)."""
    g = d_feats.view(slope_u.shape)
    su, sv = (g * slope_u).sum(2), (g * slope_v).sum(2)  # [P, 3, N]
    grad = torch.stack([su[:, 0] + su[:, 1], sv[:, 0] + sv[:, 2], sv[:, 1] + su[:, 2]], dim=-1)
    return grad * scale


def mlp_channel_major(mlp: VanillaMLP, x: Tensor, input_grad: bool = False) -> tuple[Tensor, Tensor | None]:
    """A VanillaMLP on channel-major inputs x [P, dim_in, N] → [P, dim_out, N]; with input_grad (one output)
    also d out / d x [P, dim_in, N], by the chain rule written out (differentiable wrt the weights, so a loss
    on it needs one backward, not autograd's double backward)."""
    pre = []
    for i, layer in enumerate(mlp.layers):
        x = torch.bmm(layer.weight.expand(x.shape[0], -1, -1), x)  # (matmul would copy x to rows)
        if layer.bias is not None:
            x = x + layer.bias[:, None]
        if i < len(mlp.layers) - 1:
            pre.append(x)
            x = F.relu(x)
    if not input_grad:
        return x, None
    # ReLU's derivative is 0 at 0, as autograd's. The last layer's weight row is folded into the matrix before
    # it (a [dim, hidden] product) so no [P, hidden, N] tensor is scaled by it.
    last, hidden = mlp.layers[-1].weight[0], mlp.layers[:-1]
    if not hidden:  # a linear map: its gradient is its weight row
        return x, last[None, :, None].expand(x.shape[0], -1, x.shape[-1])
    masks = [(h > 0).to(h.dtype) for h in pre]
    grad = torch.bmm((hidden[-1].weight.t() * last).expand(x.shape[0], -1, -1), masks[-1])
    for layer, mask in zip(reversed(hidden[:-1]), reversed(masks[:-1]), strict=True):
        grad = torch.bmm(layer.weight.t().expand(x.shape[0], -1, -1), grad * mask)
    return x, grad


def sphere_sdf_grad(points: Tensor) -> Tensor:
    """d sphere_sdf / d points [..., 3] (the same epsilon)."""
    return points / (points.square().sum(-1, keepdim=True) + 1e-12).sqrt()


def sphere_sdf(points: Tensor, radius: float) -> Tensor:
    """|x| − r: the analytic sphere every SDF generator is biased towards. points [..., 3] → [...].

    The tiny epsilon keeps the gradient (and the eikonal loss's second derivative) finite at the origin."""
    return (points.square().sum(-1) + 1e-12).sqrt() - radius


class HyperNetwork(nn.Module):
    """Pooled text → the flat weights of a per-prompt MLP (the reference's LinearHyperNetwork).

    Linear(c_dim → hidden, no bias) → LayerNorm → SiLU → Linear(hidden → out_dim); xavier-normal weights, zero
    biases, no output activation.
    """

    def __init__(self, c_dim: int, out_dim: int, hidden: int = 64):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(c_dim, hidden, bias=False), nn.LayerNorm(hidden), nn.SiLU(),
                                 nn.Linear(hidden, out_dim))
        for m in self.net:
            if isinstance(m, nn.Linear):
                nn.init.xavier_normal_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, pooled: Tensor) -> Tensor:
        """pooled [P, c_dim] → [P, out_dim]."""
        return self.net(pooled)


def split_weights(flat: Tensor, shapes: list[tuple[int, int]]) -> list[Tensor]:
    """Flat per-prompt weights [P, Σ a·b] → matrices [P, a, b] in order."""
    out, start = [], 0
    for a, b in shapes:
        out.append(flat[:, start:start + a * b].view(-1, a, b))
        start += a * b
    return out


def batched_mlp(x: Tensor, weights: list[Tensor]) -> Tensor:
    """Per-prompt bias-free MLP with ReLU between layers: x [P, N, in], weights [P, in, h], …, [P, h, out] →
    [P, N, out] (one batched matmul per layer)."""
    for i, w in enumerate(weights):
        x = torch.bmm(x, w)
        if i < len(weights) - 1:
            x = F.relu(x)
    return x
