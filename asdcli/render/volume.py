"""Volume rendering of P prompts × V views: VolSDF (SDF fields) and NeRF density, one field query per prompt.

Cameras are prompt-major: camera b belongs to prompt b // V. Each ray is clipped to the scene box
|x| ≤ cfg.radius, sampled (stratified, plus optional importance samples from the coarse weights), and the
field of prompt p is queried once at the samples of all its V views (points [P, V·R·S, 3]).

Densities: VolSDF σ = inv_std·Ψ(−sdf), Ψ the CDF of a zero-mean Laplace with scale β = 1/inv_std (inv_std
fixed, 30 by default); NeRF σ = softplus(raw value) (threestudio's single-prompt setting). Compositing uses
the exact alpha α = 1 − exp(−σ·δ). The reference used the linear α = σ·δ (asd_reference_code.md §8.3),
which exceeds 1 inside the surface (σ·δ ≈ 30·δ) and so over-weights the first sample; the exponential
form is the correct quadrature and agrees with the linear one where σ·δ is small.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from asdcli.conditioning import TextEmbeddings
from asdcli.generators.base import Generator
from asdcli.render.background import Background, uniform
from asdcli.render.cameras import CameraBatch, get_rays

AMBIENT, DIFFUSE = 0.3, 0.7  # Lambertian shading: albedo·(AMBIENT + DIFFUSE·max(0, n·l))
CAMERA_LIGHT = (0.4, 0.6, 1.0)  # light direction in the camera frame (right, up, towards the viewer): the
# ShapesWorld ground truth and the bundled prior's training images use it, and every evaluation render does


@dataclass
class RenderOutput:
    """Images of B = P·V cameras (prompt-major) and, from `render`, per-sample tensors for regularisers.

    rgb [B, H, W, 3] composited over the background; opacity, depth (Σ w·t, 0 on empty rays), z_variance
    (Σ w·(t − mean t)²) [B, H, W, 1]; normal [B, H, W, 3] composited world normals in [−1, 1] (None when not
    computed). sdf_grad [P, N, 3] field gradients at the N = V·H·W·S samples of each prompt;
    weights [B, H·W, S]; sample_normals [B, H·W, S, 3]; ray_dirs [B, H·W, 3].
    """

    rgb: Tensor
    opacity: Tensor
    depth: Tensor
    normal: Tensor | None
    z_variance: Tensor
    sdf_grad: Tensor | None = None
    weights: Tensor | None = None
    sample_normals: Tensor | None = None
    ray_dirs: Tensor | None = None


def ray_box(origins: Tensor, dirs: Tensor, radius: float) -> tuple[Tensor, Tensor]:
    """Entry and exit distances of rays [..., 3] through the box [-radius, radius]^3 → near, far [...].

    Rays that miss get near = far (zero-length segments, so they contribute nothing)."""
    safe = torch.where(dirs.abs() < 1e-9, torch.full_like(dirs, 1e-9), dirs)
    t0, t1 = (-radius - origins) / safe, (radius - origins) / safe
    near = torch.minimum(t0, t1).amax(dim=-1).clamp_min(0.0)
    far = torch.maximum(t0, t1).amin(dim=-1)
    return near, torch.maximum(far, near)


def density(value: Tensor, field_type: str, inv_std: float) -> Tensor:
    """σ from the field value: VolSDF Laplace density for "sdf", softplus for "density"."""
    if field_type == "sdf":
        # inv_std·Ψ(−s): Ψ(−s) = ½·exp(−s·inv_std) outside (s > 0), 1 − ½·exp(s·inv_std) inside.
        return inv_std * (0.5 + 0.5 * value.sign() * torch.expm1(-value.abs() * inv_std))
    return F.softplus(value)


def composite_weights(sigma: Tensor, deltas: Tensor) -> Tensor:
    """w_i = T_i·α_i with α_i = 1 − exp(−σ_i δ_i), T_i = exp(−Σ_{j<i} σ_j δ_j). [..., S] → [..., S]."""
    tau = sigma * deltas
    trans = torch.exp(-(torch.cumsum(tau, dim=-1) - tau))
    return trans * (1.0 - torch.exp(-tau))


def _stratified(near: Tensor, far: Tensor, n: int, gen: torch.Generator | None, jitter: bool) -> Tensor:
    """n distances per ray, one in each of n equal bins (jittered within the bin, or at its centre)."""
    u = uniform((*near.shape, n), gen, near.device) if jitter else torch.full((*near.shape, n), 0.5,
                                                                             device=near.device)
    frac = (torch.arange(n, device=near.device, dtype=near.dtype) + u) / n
    return near[..., None] + (far - near)[..., None] * frac


def _edges(t: Tensor, near: Tensor, far: Tensor) -> Tensor:
    """Interval edges around sorted samples t [..., S]: near, midpoints, far → [..., S + 1]."""
    return torch.cat([near[..., None], 0.5 * (t[..., 1:] + t[..., :-1]), far[..., None]], dim=-1)


def _importance(t: Tensor, weights: Tensor, near: Tensor, far: Tensor, k: int, gen: torch.Generator | None,
                jitter: bool) -> Tensor:
    """k distances drawn by inverse CDF from the piecewise-constant pdf of the coarse weights [..., S]."""
    edges = _edges(t, near, far)
    shape = weights.shape[:-1]
    pdf = weights + 1e-5  # a floor keeps empty rays sampling uniformly instead of dividing by zero
    cdf = torch.cumsum(pdf / pdf.sum(-1, keepdim=True), dim=-1)
    cdf = torch.cat([torch.zeros_like(cdf[..., :1]), cdf], dim=-1).reshape(-1, edges.shape[-1])
    u = _stratified(torch.zeros(shape, device=t.device), torch.ones(shape, device=t.device), k, gen, jitter)
    u = u.reshape(-1, k).contiguous()
    hi = torch.searchsorted(cdf.contiguous(), u, right=True).clamp(1, cdf.shape[-1] - 1)
    lo = hi - 1
    e = edges.reshape(-1, edges.shape[-1])
    c_lo, c_hi = cdf.gather(-1, lo), cdf.gather(-1, hi)
    frac = ((u - c_lo) / (c_hi - c_lo).clamp_min(1e-8)).clamp(0, 1)
    e_lo, e_hi = e.gather(-1, lo), e.gather(-1, hi)
    return (e_lo + frac * (e_hi - e_lo)).reshape(*shape, k)


def _query(generator: Generator, state: object, pts: Tensor,
           normals: str) -> tuple[Tensor, Tensor, Tensor | None]:
    """Field at pts [P, N, 3] → value [P, N], features [P, N, F], gradient d value / d x [P, N, 3] or None.

    normals: "none"; "graph" (create_graph=True, so eikonal/orient losses train the field); "detached"."""
    if normals == "none":
        out = generator.query(state, pts)
        return out.value.float(), out.features.float(), None
    if hasattr(generator, "query_with_grad"):  # the gradient written out: one backward trains through it
        out, grad = generator.query_with_grad(state, pts.detach())
        if normals == "detached":
            return out.value.detach().float(), out.features.detach().float(), grad.detach().float()
        return out.value.float(), out.features.float(), grad.float()
    with torch.enable_grad():
        pts = pts.detach().requires_grad_(True)
        out = generator.query(state, pts)
        grad = torch.autograd.grad(out.value, pts, torch.ones_like(out.value),
                                   create_graph=normals == "graph")[0]
    if normals == "detached":
        return out.value.detach().float(), out.features.detach().float(), grad.detach().float()
    return out.value.float(), out.features.float(), grad.float()


def _sample_distances(generator: Generator, state: object, origins: Tensor, dirs: Tensor, prompts: int,
                      cfg, gen: torch.Generator | None, jitter: bool) -> tuple[Tensor, Tensor, Tensor]:
    """Sorted sample distances t [B, R, S'] and ray limits near, far [B, R] (S' = S + importance samples)."""
    near, far = ray_box(origins, dirs, cfg.radius)
    t = _stratified(near, far, cfg.samples_per_ray, gen, jitter)
    if cfg.importance_samples > 0:
        with torch.no_grad():
            pts = (origins[..., None, :] + t[..., None] * dirs[..., None, :]).clamp(-cfg.radius, cfg.radius)
            value = generator.query(state, pts.reshape(prompts, -1, 3)).value.float().view_as(t)
            deltas = torch.diff(_edges(t, near, far), dim=-1)
            w = composite_weights(density(value, generator.field_type, cfg.inv_std), deltas)
            fine = _importance(t, w, near, far, cfg.importance_samples, gen, jitter)
        t = torch.sort(torch.cat([t, fine], dim=-1), dim=-1).values
    return t, near, far


def _march(generator: Generator, state: object, origins: Tensor, dirs: Tensor, prompts: int, cfg,
           gen: torch.Generator | None, jitter: bool, normals: str,
           lights: Tensor | None) -> dict[str, Tensor]:
    """Render rays origins, dirs [B, R, 3] → per-ray rgb_fg, opacity, depth, z_variance (+ normal) and
    per-sample weights, sample_normals, sdf_grad."""
    b, r, _ = origins.shape
    t, near, far = _sample_distances(generator, state, origins, dirs, prompts, cfg, gen, jitter)
    deltas = torch.diff(_edges(t, near, far), dim=-1)
    pts = (origins[..., None, :] + t[..., None] * dirs[..., None, :]).clamp(-cfg.radius, cfg.radius)
    value, feats, grad = _query(generator, state, pts.reshape(prompts, -1, 3), normals)
    s = t.shape[-1]
    weights = composite_weights(density(value.view(b, r, s), generator.field_type, cfg.inv_std), deltas)
    color = generator.rgb(feats.view(b, r, s, -1))
    out = {"weights": weights, "opacity": weights.sum(-1, keepdim=True)}
    if grad is not None:
        g = grad.view(b, r, s, 3)  # density grows inwards: its normal is −∇σ (no multiply by +1 for an SDF)
        n = F.normalize(g if generator.field_type == "sdf" else -g, dim=-1)
        out.update(sample_normals=n, sdf_grad=grad, normal=(weights[..., None] * n).sum(-2))
        if lights is not None:
            shade = (n * lights[:, None, None, :]).sum(-1, keepdim=True).clamp_min(0.0)
            color = color * (AMBIENT + DIFFUSE * shade)
    out["rgb_fg"] = (weights[..., None] * color).sum(-2)
    out["depth"] = (weights * t).sum(-1, keepdim=True)
    mean_t = out["depth"] / out["opacity"].clamp_min(1e-6)
    out["z_variance"] = (weights * (t - mean_t) ** 2).sum(-1, keepdim=True)
    return out


def light_directions(cams: CameraBatch, training: bool, gen: torch.Generator | None,
                     mode: str = "random") -> Tensor:
    """Unit directions towards the light [B, 3] (world): with mode "random", random in the camera's front
    hemisphere while training; otherwise (and always at evaluation) CAMERA_LIGHT in the camera frame, so
    turntables are lit consistently and a prior trained under one light sees that light."""
    b, device = len(cams), cams.c2w.device
    if training and mode == "random":
        u = uniform((b, 3), gen, device) * 2 - 1
        local = torch.cat([u[:, :2], u[:, 2:].abs() + 0.5], dim=-1)  # +z of the camera frame faces the viewer
    else:
        local = torch.tensor(CAMERA_LIGHT, device=device).expand(b, 3)
    return F.normalize(torch.einsum("bij,bj->bi", cams.c2w[:, :3, :3], local), dim=-1)


def _check(cams: CameraBatch, prompts: int) -> None:
    if prompts < 1 or len(cams) % prompts:
        raise ValueError(f"{len(cams)} cameras cannot be split evenly over {prompts} prompts")


def render(generator: Generator, state: object, cams: CameraBatch, height: int, width: int, cfg,
           background: Background, prompts_per_step: int, gen: torch.Generator | None = None,
           need_normals: bool = True, stratified: bool = True, text: TextEmbeddings | None = None,
           training: bool = True) -> RenderOutput:
    """Differentiable render of P = prompts_per_step prompts × V = len(cams) / P views (training path).

    With need_normals the field gradient is taken with create_graph=True so the eikonal/orient regularisers
    and Lambertian shading train the geometry. `text` (pooled) feeds a text-conditioned background."""
    _check(cams, prompts_per_step)
    b = len(cams)
    origins, dirs = get_rays(cams, height, width)
    lights = light_directions(cams, training, gen, cfg.light) if cfg.shading == "lambertian" else None
    normals = "graph" if need_normals or lights is not None else "none"
    out = _march(generator, state, origins, dirs, prompts_per_step, cfg, gen, stratified, normals, lights)
    bg = background(dirs, training, gen, text=None if text is None else text.pooled)
    rgb = out["rgb_fg"] + (1.0 - out["opacity"]) * bg

    def img(x: Tensor) -> Tensor:
        return x.reshape(b, height, width, -1)

    return RenderOutput(img(rgb), img(out["opacity"]), img(out["depth"]),
                        img(out["normal"]) if "normal" in out else None, img(out["z_variance"]),
                        sdf_grad=out.get("sdf_grad"), weights=out["weights"],
                        sample_normals=out.get("sample_normals"), ray_dirs=dirs)


@torch.no_grad()
def render_chunked(generator: Generator, state: object, cams: CameraBatch, height: int, width: int, cfg,
                   background: Background, prompts_per_step: int, gen: torch.Generator | None = None,
                   need_normals: bool = False, text: TextEmbeddings | None = None) -> RenderOutput:
    """Evaluation render without gradients, cfg.chunk_rays rays at a time (centred samples, eval background).

    Normals (need_normals, or Lambertian shading) come from autograd enabled locally per chunk, detached."""
    _check(cams, prompts_per_step)
    b = len(cams)
    origins, dirs = get_rays(cams, height, width)
    lights = light_directions(cams, False, gen) if cfg.shading == "lambertian" else None
    normals = "detached" if need_normals or lights is not None else "none"
    per_cam = max(1, cfg.chunk_rays // b)
    keys = ("rgb_fg", "opacity", "depth", "z_variance") + (("normal",) if normals != "none" else ())
    parts: dict[str, list[Tensor]] = {k: [] for k in keys}
    for r0 in range(0, height * width, per_cam):
        sl = slice(r0, r0 + per_cam)
        out = _march(generator, state, origins[:, sl], dirs[:, sl], prompts_per_step, cfg, gen, False,
                     normals, lights)
        for k in keys:
            parts[k].append(out[k])
    res = {k: torch.cat(v, dim=1).reshape(b, height, width, -1) for k, v in parts.items()}
    bg = background(dirs, False, gen, text=None if text is None else text.pooled).reshape(b, height, width, 3)
    rgb = res["rgb_fg"] + (1.0 - res["opacity"]) * bg
    return RenderOutput(rgb, res["opacity"], res["depth"], res.get("normal"), res["z_variance"],
                        ray_dirs=dirs)
