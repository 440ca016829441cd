"""Ground-truth renders of ShapesWorld scenes with the generators' cameras (`asdcli.render.cameras.get_rays`)
and the volume renderer's lighting, so a GT image and a generator's render of the same camera line up.

The tracing and shading live in the world (`shapes.world.raytrace`, which knows no camera type); this module
only turns a `CameraBatch` into the rays it asks for.
"""

from __future__ import annotations

import torch
from torch import Tensor

from asdcli.render.cameras import CameraBatch, get_rays
from asdcli.render.volume import AMBIENT, CAMERA_LIGHT
from asdcli.shapes.world.grammar import SceneSpec
from asdcli.shapes.world.raytrace import GTRender, Lighting, render_views
from asdcli.shapes.world.scenes import SceneBatch

LIGHTING = Lighting(AMBIENT, CAMERA_LIGHT)


def render_scenes(specs: list[SceneSpec | str] | SceneBatch, cams: CameraBatch, height: int, width: int,
                  shading: str = "lambertian", background=(1.0, 1.0, 1.0), supersample: int = 1,
                  generator: torch.Generator | None = None, chunk_rays: int = 1 << 17) -> GTRender:
    """Render S scenes from B cameras, B a multiple of S, prompt-major: camera b shows scene b // (B / S)
    (the order of `sample_training_cameras`). shading: "lambertian" or "albedo". background: RGB triple,
    [B, 3] tensor or "random" (per image, from `generator`). supersample: s×s rays per pixel.
    Returns GTRender(rgb [B, H, W, 3], alpha [B, H, W])."""
    if shading not in ("lambertian", "albedo"):
        raise ValueError(f"shading must be 'lambertian' or 'albedo', got {shading!r}")

    def rays(ids: Tensor, h: int, w: int) -> tuple[Tensor, Tensor, Tensor]:
        sub = CameraBatch(*(getattr(cams, k)[ids] for k in ("c2w", "fovy", "elevation", "azimuth", "distance")))
        origins, dirs = get_rays(sub, h, w)  # [b, HW, 3]
        return origins, dirs, sub.c2w

    return render_views(specs, len(cams), rays, height, width, None if shading == "albedo" else LIGHTING,
                        background, supersample, generator, chunk_rays, cams.c2w.device)


def render_scene(spec: SceneSpec | str, cams: CameraBatch, height: int, width: int, **kwargs) -> GTRender:
    """Render one scene from every camera of `cams`; keyword arguments as in `render_scenes`."""
    return render_scenes([spec], cams, height, width, **kwargs)
