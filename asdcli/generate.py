"""Prompt → mesh through a trained generator: one text encoding, one generator forward, chunked field
queries, vectorised marching cubes, atomic write. Used by `asd generate` and `asd export`."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from asdcli.engine.inference import LoadedModel, field_state, query_fn, render_orbit
from asdcli.errors import UserError
from asdcli.media import contact_sheet, save_png, save_turntable
from asdcli.mesh.isosurface import decimate, extract_mesh, remove_floaters
from asdcli.render.volume import density

MESH_SUFFIXES = (".glb", ".obj", ".ply")


def check_resolution(resolution: int, what: str = "--resolution", lo: int = 8, hi: int = 1024) -> int:
    if not lo <= resolution <= hi:
        raise UserError(f"{what}: must be between {lo} and {hi}, got {resolution}")
    return resolution


def check_output_file(path: Path, suffixes: tuple[str, ...], what: str) -> Path:
    """An output file path we may write: known extension, not a directory, parent creatable."""
    if path.suffix.lower() not in suffixes:
        raise UserError(f"{what} {path}: unsupported extension {path.suffix or '(none)'!r}; "
                        f"use one of {', '.join(suffixes)}")
    if path.is_dir():
        raise UserError(f"{what} {path}: is a directory; give a file name such as {path / ('out' + suffixes[0])}")
    parent = path.parent
    if parent.exists() and not parent.is_dir():
        raise UserError(f"{what} {path}: {parent} is a file, not a directory")
    return path


@dataclass
class Timings:
    """Seconds per stage of `generate_mesh`."""

    parts: dict[str, float] = field(default_factory=dict)

    def add(self, name: str, seconds: float) -> None:
        self.parts[name] = self.parts.get(name, 0.0) + seconds

    @property
    def total(self) -> float:
        return sum(self.parts.values())

    def line(self) -> str:
        body = " · ".join(f"{k} {v * 1000:.0f} ms" for k, v in self.parts.items())
        return f"{body} · total {self.total * 1000:.0f} ms"


def mesh_query_fn(model: LoadedModel, state, index: int):
    """points → (value, rgb) in the form isosurface extraction expects: SDF as is; density activated."""
    fn = query_fn(model, state, index)
    if model.generator.field_type == "sdf":
        return fn

    def activated(points):
        value, rgb = fn(points)
        return density(value, "density", model.cfg.render.inv_std), rgb

    activated.value_only = lambda points: density(fn.value_only(points), "density", model.cfg.render.inv_std)
    return activated


def generate_mesh(model: LoadedModel, prompt: str, resolution: int, threshold: float | None = None,
                  seed: int = 0, max_faces: int | None = None, state_text=None, index: int = 0):
    """One prompt's mesh and the time split (text, generator, query, isosurface, colours, cleanup)."""
    timings = Timings()
    if state_text is None:
        t0 = time.perf_counter()
        text = model.encode_text([prompt]).to(model.device)
        timings.add("text", time.perf_counter() - t0)
        t0 = time.perf_counter()
        with torch.no_grad():
            noise = _noise(model, 1, seed)
            state = model.generator(text, noise)
        timings.add("generator", time.perf_counter() - t0)
    else:
        state, text = state_text
    mesh = extract_mesh(mesh_query_fn(model, state, index), resolution, model.cfg.render.radius,
                        model.generator.field_type, threshold=threshold, device=model.device)
    for k, v in mesh.timings.items():
        timings.add("query" if k == "query" else "colors" if k == "colors" else "isosurface", v)
    t0 = time.perf_counter()
    mesh = remove_floaters(mesh)
    if max_faces is not None:
        mesh = decimate(mesh, max_faces)
    timings.add("cleanup", time.perf_counter() - t0)
    return mesh, timings


def _noise(model: LoadedModel, n: int, seed: int):
    if not model.generator.noise_dim:
        return None
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, model.generator.noise_dim, generator=gen).to(model.device)


TURNTABLE_FRAMES, TURNTABLE_SIZE, TURNTABLE_FPS = 48, 256, 24
"""Turntable defaults: 48 frames (7.5° apart) at 256 px, a 2-second loop at 24 fps."""
SHEET_SIZE = 256
"""Side in pixels of each view of `--views-png`."""


def orbit_media(model: LoadedModel, prompt: str, views: int, seed: int, turntable: Path | None,
                views_png: Path | None, frames: int = TURNTABLE_FRAMES, size: int = TURNTABLE_SIZE) -> list[Path]:
    """A turntable of `frames` orbit renders at `size` px and/or a contact sheet of `views` orbit views at
    SHEET_SIZE px, labelled with the prompt and each view's azimuth."""
    state, text = field_state(model, [prompt], seed=seed)
    written = []
    if turntable is not None:
        images = render_orbit(model, state, text, frames, size)["rgb"][0]
        written.append(save_turntable([np.asarray(f.numpy()) for f in images], turntable, fps=TURNTABLE_FPS))
    if views_png is not None:
        images = render_orbit(model, state, text, views, SHEET_SIZE)["rgb"][0]
        cols = min(views, 4)
        labels = [f"azimuth {360.0 * i / views:.0f} deg" for i in range(views)]
        rows = -(-views // cols)
        sheet = contact_sheet([np.asarray(f.numpy()) for f in images], cols=cols, labels=labels,
                              row_labels=[prompt] + [""] * (rows - 1))
        written.append(save_png(sheet, views_png))
    return written
