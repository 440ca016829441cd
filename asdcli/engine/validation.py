"""Validation media: for each val prompt, a PNG grid (rows RGB / normal / opacity, one column per orbit view)
and a turntable (MP4 when ffmpeg works, GIF otherwise), under RUN/val/step_NNNNNN/."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from asdcli.engine.inference import LoadedModel, field_state, render_orbit
from asdcli.media import contact_sheet, ffmpeg_available, save_png, save_turntable
from asdcli.mesh.names import assign_filenames


def view_grid(images: dict, index: int) -> np.ndarray:
    """Rows RGB / normal / opacity of prompt `index` → one uint8 image (views across)."""
    rgb, normal = images["rgb"][index], images["normal"][index]
    opacity = images["opacity"][index].expand(*images["opacity"][index].shape[:-1], 3)
    tiles = [v.numpy() for row in (rgb, normal, opacity) for v in row]
    return contact_sheet(tiles, cols=rgb.shape[0], pad=1)


def validate(trainer, step: int) -> Path | None:
    """Render the run's validation prompts with the current weights (rank 0 only)."""
    if not trainer.val_prompts:
        return None
    cfg = trainer.cfg
    out_dir = trainer.run_dir / "val" / f"step_{step:06d}"
    out_dir.mkdir(parents=True, exist_ok=True)
    model = LoadedModel(cfg, trainer.parts.generator, trainer.parts.background, trainer.parts.prior.encode_text,
                        trainer.run_dir, trainer.device)
    gen_mode, bg_mode = trainer.parts.generator.training, trainer.parts.background.training
    trainer.parts.generator.eval()
    trainer.parts.background.eval()
    try:
        res = max(32, int(cfg.render.resolution.at(step, cfg.train.steps)))
        names = assign_filenames(trainer.val_prompts)
        for prompt in trainer.val_prompts:
            state, text = field_state(model, [prompt], seed=cfg.seed)
            with torch.no_grad():
                images = render_orbit(model, state, text, cfg.train.val_views, res)
            save_png(view_grid(images, 0), out_dir / f"{names[prompt]}.png")
            video = ".mp4" if ffmpeg_available() else ".gif"  # no user asked for a format: take what works
            save_turntable([f.numpy() for f in images["rgb"][0]], out_dir / f"{names[prompt]}{video}", fps=10)
    finally:
        trainer.parts.generator.train(gen_mode)
        trainer.parts.background.train(bg_mode)
    return out_dir
