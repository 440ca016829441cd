"""Images and videos people look at: PNGs, contact sheets, turntables. Every write is atomic.

Images are [H, W, 3] arrays (numpy or torch), either float in [0, 1] or uint8. Files are written to a
temporary name in the destination's directory and renamed into place, so a crash never leaves a
half-written file behind and an existing file is only ever replaced by a complete one.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from asdcli.atomic import atomic_output
from asdcli.errors import UserError

TURNTABLE_EXTENSIONS = (".mp4", ".gif")
VIDEO_EXTRA_FIX = "pip install 'asdcli[video]' (imageio-ffmpeg), or ask for a .gif"


def to_uint8(img: Any) -> np.ndarray:
    """[H, W, C] float in [0, 1] (clipped) or uint8, numpy or torch → uint8 numpy [H, W, C]."""
    if hasattr(img, "detach"):
        img = img.detach().float().cpu().numpy()
    arr = np.asarray(img)
    if arr.dtype == np.uint8:
        return arr
    return np.round(np.clip(np.nan_to_num(arr.astype(np.float32)), 0.0, 1.0) * 255.0).astype(np.uint8)


def _check_image(arr: np.ndarray) -> np.ndarray:
    if arr.ndim != 3 or arr.shape[-1] not in (3, 4):
        raise ValueError(f"expected an image [H, W, 3] (or RGBA [H, W, 4]), got shape {tuple(arr.shape)}")
    return arr


def save_png(img: Any, path: str | os.PathLike) -> Path:
    """Write an image [H, W, 3] (float in [0, 1] or uint8) as PNG, atomically; returns the path."""
    # lazy: imageio loads on the first write: commands import this module before torch
    import imageio.v3 as iio

    arr = _check_image(to_uint8(img))
    with atomic_output(path) as tmp:
        iio.imwrite(tmp, arr, extension=".png")
    return Path(path)


def _enlarge(tile: np.ndarray, min_side: int) -> np.ndarray:
    """Repeat pixels (an integer factor, nearest neighbour: no invented detail) until the tile's shorter side is
    at least `min_side`."""
    factor = -(-min_side // max(min(tile.shape[:2]), 1))
    return tile if factor <= 1 else tile.repeat(factor, axis=0).repeat(factor, axis=1)


def contact_sheet(images: Sequence[Any], cols: int, labels: Sequence[str] | None = None, pad: int = 4,
                  background: int = 255, min_cell: int = 0, row_labels: Sequence[str] | None = None) -> np.ndarray:
    """Tile images [H, W, 3] into a grid with `cols` columns → uint8 [H', W', 3].

    Cells take the largest image size (smaller images sit in the top-left corner of their cell); images whose
    shorter side is under `min_cell` are enlarged by an integer factor first. With `labels`, a strip under each
    cell holds its label; with `row_labels` (one per row), a strip above each row holds its label across the
    whole width (e.g. the prompt). Text is Pillow's built-in default font (no font files), cut to fit.
    """
    if not images:
        raise ValueError("contact_sheet needs at least one image")
    if labels is not None and len(labels) != len(images):
        raise ValueError(f"got {len(labels)} labels for {len(images)} images")
    tiles = [_enlarge(_check_image(to_uint8(img))[..., :3], min_cell) for img in images]
    if row_labels is not None:
        return _with_row_labels(tiles, cols, labels, row_labels, pad, background)
    cols = max(1, min(cols, len(tiles)))
    rows = -(-len(tiles) // cols)
    cell_h, cell_w = max(t.shape[0] for t in tiles), max(t.shape[1] for t in tiles)
    label_h = 14 if labels is not None else 0
    step_h, step_w = cell_h + label_h + pad, cell_w + pad
    sheet = np.full((rows * step_h + pad, cols * step_w + pad, 3), background, dtype=np.uint8)
    for i, tile in enumerate(tiles):
        top, left = pad + (i // cols) * step_h, pad + (i % cols) * step_w
        sheet[top:top + tile.shape[0], left:left + tile.shape[1]] = tile
    if labels is not None:
        sheet = _draw_labels(sheet, labels, cols, (step_h, step_w), (cell_h, cell_w), pad)
    return sheet


def _with_row_labels(tiles: list[np.ndarray], cols: int, labels, row_labels: Sequence[str], pad: int,
                     background: int) -> np.ndarray:
    """Each row of the grid under a strip with its row label, stacked: uint8 [H', W', 3]."""
    # lazy: PIL only for labelled contact sheets
    from PIL import Image, ImageDraw, ImageFont

    cols = max(1, min(cols, len(tiles)))
    rows = [tiles[i:i + cols] for i in range(0, len(tiles), cols)]
    if len(row_labels) != len(rows):
        raise ValueError(f"got {len(row_labels)} row labels for {len(rows)} rows")
    width = cols * (max(t.shape[1] for t in tiles) + pad) + pad
    parts = []
    for r, row in enumerate(rows):
        strip = Image.new("RGB", (width, 16), (background,) * 3)
        draw = ImageDraw.Draw(strip)
        draw.text((pad, 2), _fit(draw, str(row_labels[r]), ImageFont.load_default(), width - 2 * pad),
                  fill=(0, 0, 0), font=ImageFont.load_default())
        parts.append(np.asarray(strip))
        row_labels_of = labels[r * cols:r * cols + len(row)] if labels is not None else None
        body = contact_sheet(row, cols, row_labels_of, pad, background)
        if body.shape[1] < width:  # a short last row: fill to the sheet's width
            body = np.pad(body, ((0, 0), (0, width - body.shape[1]), (0, 0)), constant_values=background)
        parts.append(body[:, :width])
    return np.concatenate(parts, axis=0)


def _fit(draw, text: str, font, width: int) -> str:
    """`text` shortened from the end (with "..") until it fits `width` pixels (ASCII dots: the fallback bitmap
    font Pillow uses without FreeType only has Latin-1)."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "..", font=font) > width:
        text = text[:-1]
    return text + ".." if text else ""


def _draw_labels(sheet: np.ndarray, labels: Sequence[str], cols: int, step: tuple[int, int],
                 cell: tuple[int, int], pad: int) -> np.ndarray:
    # lazy: PIL only for labelled contact sheets
    from PIL import Image, ImageDraw, ImageFont

    canvas = Image.fromarray(sheet)
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    for i, label in enumerate(labels):
        text = _fit(draw, str(label), font, cell[1])
        top, left = pad + (i // cols) * step[0] + cell[0], pad + (i % cols) * step[1]
        draw.text((left, top + 1), text, fill=(0, 0, 0), font=font)
    return np.asarray(canvas)


@functools.lru_cache(maxsize=1)
def ffmpeg_available() -> bool:
    """True when imageio-ffmpeg is installed and its ffmpeg executable exists."""
    try:
        import imageio_ffmpeg

        return Path(imageio_ffmpeg.get_ffmpeg_exe()).is_file()
    except (ImportError, RuntimeError, OSError):
        return False


def _even(frame: np.ndarray) -> np.ndarray:
    """Pad to even height and width by repeating the last row/column: H.264 in yuv420p needs even sizes."""
    h, w = frame.shape[:2]
    return np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")


def save_turntable(frames: Sequence[Any] | np.ndarray, path: str | os.PathLike, fps: int = 24) -> Path:
    """Write frames [T, H, W, 3] as a looping video; returns the path.

    `.mp4`: H.264 (yuv420p, plays everywhere) through imageio-ffmpeg; without it a UserError names the extra
    to install (never a silent change of format). `.gif`: an animated GIF that loops.
    """
    path = Path(path)
    if path.suffix.lower() not in TURNTABLE_EXTENSIONS:
        raise UserError(f"turntable {path}: unsupported extension {path.suffix!r}; use one of "
                        f"{', '.join(TURNTABLE_EXTENSIONS)}")
    if len(frames) == 0:
        raise ValueError("save_turntable needs at least one frame")
    check_video_writable(path)
    arrs = [_check_image(to_uint8(f))[..., :3] for f in frames]
    if path.suffix.lower() == ".mp4":
        # lazy: imageio's ffmpeg writer only for .mp4
        import imageio.v2 as iio2

        with atomic_output(path) as tmp:
            writer = iio2.get_writer(tmp, format="FFMPEG", fps=fps, codec="libx264", pixelformat="yuv420p",
                                     quality=8, macro_block_size=1)
            try:
                for frame in arrs:
                    writer.append_data(_even(frame))
            finally:
                writer.close()
        return path
    return _save_gif(arrs, path, fps)


def check_video_writable(path: str | os.PathLike) -> None:
    """UserError when `path` is an .mp4 and no H.264 encoder (imageio-ffmpeg) is installed: call it before any
    slow work so the user learns it first."""
    if Path(path).suffix.lower() == ".mp4" and not ffmpeg_available():
        raise UserError(f"cannot write {path}: MP4 needs the ffmpeg encoder, which is not installed; "
                        f"{VIDEO_EXTRA_FIX}")


def _save_gif(frames: list[np.ndarray], path: Path, fps: int) -> Path:
    # lazy: imageio loads on the first write: commands import this module before torch
    import imageio.v3 as iio

    with atomic_output(path) as tmp:
        iio.imwrite(tmp, np.stack(frames), extension=".gif", duration=1000.0 / fps, loop=0)
    return path
