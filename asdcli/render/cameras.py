"""Cameras: the paper's training distributions and the evaluation orbit.

World convention (threestudio's, which MVDream's camera embedding expects): z is up. A camera at azimuth φ and
elevation θ sits at d·(cos θ cos φ, cos θ sin φ, sin θ) looking at the origin; azimuth 0 is the front.
c2w columns are [right, up, backward, position] (OpenGL camera: it looks along −z of its own frame).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from asdcli.config import CameraConfig


@dataclass
class CameraBatch:
    """B cameras. c2w [B, 4, 4]; fovy [B] radians; elevation, azimuth [B] degrees; distance [B]."""

    c2w: Tensor
    fovy: Tensor
    elevation: Tensor
    azimuth: Tensor
    distance: Tensor

    def __len__(self) -> int:
        return int(self.c2w.shape[0])

    def to(self, device: torch.device | str) -> CameraBatch:
        return CameraBatch(*(getattr(self, k).to(device) for k in
                             ("c2w", "fovy", "elevation", "azimuth", "distance")))


def look_at(position: Tensor) -> Tensor:
    """c2w [B, 4, 4] for cameras at position [B, 3] looking at the origin with world z up."""
    backward = torch.nn.functional.normalize(position, dim=-1)
    up_world = torch.tensor([0.0, 0.0, 1.0], dtype=position.dtype, device=position.device).expand_as(position)
    right = torch.linalg.cross(up_world, backward, dim=-1)
    # Straight above or below the origin the cross product vanishes: fall back to the x axis for "right".
    degenerate = right.norm(dim=-1, keepdim=True) < 1e-6
    right = torch.where(degenerate, torch.tensor([0.0, 1.0, 0.0], dtype=position.dtype,
                                                 device=position.device).expand_as(right), right)
    right = torch.nn.functional.normalize(right, dim=-1)
    up = torch.linalg.cross(backward, right, dim=-1)
    c2w = torch.eye(4, dtype=position.dtype, device=position.device).repeat(position.shape[0], 1, 1)
    c2w[:, :3, 0], c2w[:, :3, 1], c2w[:, :3, 2], c2w[:, :3, 3] = right, up, backward, position
    return c2w


def cameras_from_angles(elevation: Tensor, azimuth: Tensor, distance: Tensor, fovy_deg: Tensor) -> CameraBatch:
    """Cameras from elevation/azimuth (degrees, [B]), distance [B] and vertical field of view (degrees, [B])."""
    el, az = torch.deg2rad(elevation), torch.deg2rad(azimuth)
    pos = distance[:, None] * torch.stack([el.cos() * az.cos(), el.cos() * az.sin(), el.sin()], dim=-1)
    return CameraBatch(look_at(pos), torch.deg2rad(fovy_deg), elevation, azimuth, distance)


def _uniform(lo_hi: tuple[float, float], n: int, gen: torch.Generator) -> Tensor:
    lo, hi = lo_hi
    return lo + (hi - lo) * torch.rand(n, generator=gen)


def sample_training_cameras(cfg: CameraConfig, prompts: int, views: int, gen: torch.Generator) -> CameraBatch:
    """P·V cameras, prompt-major ([p0v0, p0v1, …]). With `views_evenly_spaced` the V views of a prompt are
    360/V degrees apart from one random start (MVDream's 4 orthogonal views); elevation is shared per prompt."""
    n = prompts * views
    if cfg.views_evenly_spaced:
        start = _uniform(cfg.azimuth, prompts, gen)
        offsets = torch.arange(views, dtype=torch.float32) * (360.0 / views)
        azimuth = ((start[:, None] + offsets[None, :] + 180.0) % 360.0 - 180.0).reshape(n)
        elevation = _uniform(cfg.elevation, prompts, gen).repeat_interleave(views)
        fovy = _uniform(cfg.fovy, prompts, gen).repeat_interleave(views)
        dist = _uniform(cfg.distance, prompts, gen).repeat_interleave(views)
    else:
        azimuth, elevation = _uniform(cfg.azimuth, n, gen), _uniform(cfg.elevation, n, gen)
        fovy, dist = _uniform(cfg.fovy, n, gen), _uniform(cfg.distance, n, gen)
    if cfg.relative_distance:
        # Keep the object's projected size fixed: distance = s / tan(fovy / 2) (s in cfg.distance).
        dist = dist / torch.tan(torch.deg2rad(fovy) / 2)
    return cameras_from_angles(elevation, azimuth, dist, fovy)


def orbit_cameras(n: int, elevation: float, distance: float, fovy: float, azimuth_start: float = 0.0) -> CameraBatch:
    """n cameras evenly spaced in azimuth at a fixed elevation: the evaluation/turntable orbit."""
    az = azimuth_start + torch.arange(n, dtype=torch.float32) * (360.0 / n)
    az = (az + 180.0) % 360.0 - 180.0
    full = torch.full((n,), 1.0)
    return cameras_from_angles(full * elevation, az, full * distance, full * fovy)


def get_rays(cams: CameraBatch, height: int, width: int) -> tuple[Tensor, Tensor]:
    """Pixel-centre rays: origins and unit directions, each [B, H·W, 3] (row-major, top row first)."""
    device = cams.c2w.device
    ys, xs = torch.meshgrid(torch.arange(height, device=device, dtype=torch.float32) + 0.5,
                            torch.arange(width, device=device, dtype=torch.float32) + 0.5, indexing="ij")
    focal = 0.5 * height / torch.tan(0.5 * cams.fovy)  # [B]
    x = (xs.reshape(-1)[None] - 0.5 * width) / focal[:, None]
    y = -(ys.reshape(-1)[None] - 0.5 * height) / focal[:, None]
    dirs_cam = torch.stack([x, y, -torch.ones_like(x)], dim=-1)  # [B, HW, 3]
    dirs = torch.einsum("bij,bnj->bni", cams.c2w[:, :3, :3], dirs_cam)
    dirs = torch.nn.functional.normalize(dirs, dim=-1)
    origins = cams.c2w[:, None, :3, 3].expand_as(dirs)
    return origins, dirs


def fov_to_focal(fovy: float, height: int) -> float:
    return 0.5 * height / math.tan(0.5 * fovy)
