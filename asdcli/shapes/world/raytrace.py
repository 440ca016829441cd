"""Ground-truth renders of ShapesWorld scenes from given rays (the app's `shapes.gt_render` supplies the
generators' cameras and lighting; this module knows no camera type).

Batched sphere tracing of the analytic SDF: each ray starts where it enters its scene's bounding box and leaves
the active set as soon as it hits (SDF < HIT_EPS) or leaves the box, so the work shrinks every iteration.
Normals by tetrahedral finite differences; shading albedo·(AMBIENT + (1 − AMBIENT)·max(0, n·l)) with the light
fixed in the camera frame (so every view is lit alike), or the albedo alone. Supersampling renders s×s rays per
pixel and averages them (colour and coverage), which also anti-aliases the alpha mask.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

from asdcli.shapes.world.grammar import SceneSpec, parse_prompt
from asdcli.shapes.world.scenes import SceneBatch

ITERATIONS = 64
HIT_EPS = 1e-3  # scene units
LATE_HIT_EPS = 5e-3  # rays still marching after the last iteration count as hits below this distance
NORMAL_EPS = 1e-3
COMPACT_EVERY = 4


class GTRender(NamedTuple):
    """rgb [B, H, W, 3] in [0, 1] (composited over the background); alpha [B, H, W] coverage in [0, 1]."""

    rgb: Tensor
    alpha: Tensor


class Lighting(NamedTuple):
    """Shading albedo·(ambient + (1 − ambient)·max(0, n·l)), `light` a direction in the camera frame."""

    ambient: float
    light: tuple[float, float, float]


# views [b] long, height, width → ray origins [b, H·W, 3], directions [b, H·W, 3], camera-to-world [b, 4, 4]
RayFn = Callable[[Tensor, int, int], tuple[Tensor, Tensor, Tensor]]


def _box_interval(origins: Tensor, dirs: Tensor, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
    """Slab test: entry and exit distances [M] of rays [M, 3] against boxes lo, hi [M, 3] (t_in > t_out: miss)."""
    inv = 1.0 / torch.where(dirs.abs() < 1e-9, torch.full_like(dirs, 1e-9), dirs)
    t0, t1 = (lo - origins) * inv, (hi - origins) * inv
    return torch.minimum(t0, t1).amax(dim=-1).clamp(min=0.0), torch.maximum(t0, t1).amin(dim=-1)


def _gather(scene: Tensor | int, idx: Tensor) -> Tensor | int:
    return scene if isinstance(scene, int) else scene[idx]


def sphere_trace(scenes: SceneBatch, origins: Tensor, dirs: Tensor, scene: Tensor | int,
                 iterations: int = ITERATIONS) -> tuple[Tensor, Tensor]:
    """March rays [M, 3] of scenes `scene` ([M] or one int); returns hit [M] bool and distance t [M].

    Rays that hit or leave the box freeze in place; every COMPACT_EVERY iterations they leave the arrays, which
    keeps both the per-iteration work and the number of small tensor operations low."""
    lo, hi = (scenes.lo[scene] - 0.01, scenes.hi[scene] + 0.01)  # pad: start just outside the box
    if isinstance(scene, int):
        lo, hi = lo.expand_as(origins), hi.expand_as(origins)
    t_in, t_out = _box_interval(origins, dirs, lo, hi)
    t_hit = torch.zeros(origins.shape[0], device=origins.device)
    hit = torch.zeros(origins.shape[0], dtype=torch.bool, device=origins.device)
    idx = (t_in < t_out).nonzero().squeeze(1)
    o, d, s, t, t_end = origins[idx], dirs[idx], _gather(scene, idx), t_in[idx], t_out[idx]
    for it in range(iterations):
        dist = scenes.sdf(torch.addcmul(o, t[:, None], d), s)
        moving = (dist >= HIT_EPS) & (t < t_end)
        t = t + dist * moving
        if (it + 1) % COMPACT_EVERY == 0 or it == iterations - 1:
            done = dist < HIT_EPS if it < iterations - 1 else dist < LATE_HIT_EPS
            done &= t < t_end
            hit[idx[done]], t_hit[idx[done]] = True, t[done]
            keep = moving.nonzero().squeeze(1)
            idx, o, d, t, t_end = idx[keep], o[keep], d[keep], t[keep], t_end[keep]
            s = _gather(s, keep)
            if idx.numel() == 0:
                break
    return hit, t_hit


def _backgrounds(background, n: int, generator: torch.Generator | None) -> Tensor:
    """[n, 3]: a fixed colour, per-image colours [n, 3], or "random" (uniform RGB per image)."""
    if isinstance(background, str):
        if background != "random":
            raise ValueError(f"background must be an RGB triple, a [B, 3] tensor or 'random', got {background!r}")
        return torch.rand(n, 3, generator=generator)
    bg = torch.as_tensor(background, dtype=torch.float32)
    return bg.expand(n, 3) if bg.dim() == 1 else bg


def _shade_rays(scenes: SceneBatch, rays: RayFn, lighting: Lighting | None, cam_ids: Tensor,
                cam_scene: Tensor | int, height: int, width: int) -> tuple[Tensor, Tensor]:
    """Colour [b, HW, 3] (zero off the object) and hit mask [b, HW] of the cameras cam_ids [b] showing scenes
    cam_scene ([b], or one int for all); lighting None: the albedo alone."""
    origins, dirs, c2w = rays(cam_ids, height, width)  # [b, HW, 3] twice, [b, 4, 4]
    b, n = origins.shape[:2]
    ray_cam = torch.arange(b, device=origins.device).repeat_interleave(n)
    scene = cam_scene if isinstance(cam_scene, int) else cam_scene[ray_cam]
    o, d = origins.reshape(-1, 3), dirs.reshape(-1, 3)
    hit, t = sphere_trace(scenes, o, d, scene)
    rgb = torch.zeros(b * n, 3, device=o.device)
    idx = hit.nonzero().squeeze(1)
    pts = torch.addcmul(o[idx], t[idx, None], d[idx])
    albedo = scenes.sdf_and_color(pts, _gather(scene, idx))[1]
    if lighting is None:
        rgb[idx] = albedo
    else:
        light = torch.nn.functional.normalize(torch.tensor(lighting.light, device=o.device), dim=0)
        light_world = c2w[:, :3, :3] @ light  # [b, 3]
        normals = scenes.normals(pts, _gather(scene, idx), NORMAL_EPS)
        lambert = (normals * light_world[ray_cam[idx]]).sum(-1).clamp(min=0)
        rgb[idx] = albedo * (lighting.ambient + (1 - lighting.ambient) * lambert[:, None])
    return rgb.reshape(b, n, 3), hit.reshape(b, n)


def _chunks(scenes: SceneBatch, cam_scene: list[int], max_images: int) -> list[tuple[list[int], int | None]]:
    """Camera chunks sharing one scene signature (so the SDF needs no shape masking): (camera ids, the scene
    if the chunk shows only one, else None). Cameras of one scene stay together."""
    order = sorted(range(len(cam_scene)), key=lambda b: (scenes.signature(cam_scene[b]), cam_scene[b]))
    chunks: list[tuple[list[int], int | None]] = []
    for b in order:
        sig = scenes.signature(cam_scene[b])
        if chunks and len(chunks[-1][0]) < max_images and scenes.signature(cam_scene[chunks[-1][0][0]]) == sig:
            chunks[-1][0].append(b)
        else:
            chunks.append(([b], None))
    return [(ids, cam_scene[ids[0]] if len({cam_scene[i] for i in ids}) == 1 else None) for ids, _ in chunks]


def render_views(specs: list[SceneSpec | str] | SceneBatch, n_views: int, rays: RayFn, height: int, width: int,
                 lighting: Lighting | None, background=(1.0, 1.0, 1.0), supersample: int = 1,
                 generator: torch.Generator | None = None, chunk_rays: int = 1 << 17,
                 device: torch.device | str = "cpu") -> GTRender:
    """Render S scenes into `n_views` images, a multiple of S, prompt-major: view b shows scene b // (B / S).
    rays(view ids, h, w) gives each view's rays (see RayFn); lighting None renders the albedo alone.
    background: RGB triple, [B, 3] tensor or "random" (per image, from `generator`). supersample: s×s rays per
    pixel. Returns GTRender(rgb [B, H, W, 3], alpha [B, H, W])."""
    if not isinstance(specs, SceneBatch):
        specs = SceneBatch([parse_prompt(s) if isinstance(s, str) else s for s in specs], device)
    n_cams, n_scenes = n_views, len(specs)
    if n_cams % n_scenes:
        raise ValueError(f"{n_cams} cameras cannot be split evenly over {n_scenes} scenes")
    cam_scene = torch.arange(n_scenes, device=device).repeat_interleave(n_cams // n_scenes)
    hs, ws = height * supersample, width * supersample
    rgb = torch.empty(n_cams, hs * ws, 3, device=device)
    alpha = torch.empty(n_cams, hs * ws, device=device)
    for ids, one_scene in _chunks(specs, cam_scene.tolist(), max(1, chunk_rays // (hs * ws))):
        ids_t = torch.tensor(ids, device=device)
        scene = one_scene if one_scene is not None else cam_scene[ids_t]
        rgb[ids_t], hit = _shade_rays(specs, rays, lighting, ids_t, scene, hs, ws)
        alpha[ids_t] = hit.float()
    rgb, alpha = rgb.reshape(n_cams, hs, ws, 3), alpha.reshape(n_cams, hs, ws, 1)
    if supersample > 1:
        pool = torch.nn.functional.avg_pool2d
        rgb = pool(rgb.permute(0, 3, 1, 2), supersample).permute(0, 2, 3, 1)
        alpha = pool(alpha.permute(0, 3, 1, 2), supersample).permute(0, 2, 3, 1)
    bg = _backgrounds(background, n_cams, generator).to(rgb.device)
    # The shaded colour is premultiplied (zero off the object), so compositing is rgb + (1 − alpha)·bg.
    rgb = rgb + (1 - alpha) * bg[:, None, None, :]
    return GTRender(rgb.clamp(0, 1), alpha[..., 0])
