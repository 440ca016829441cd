"""PNG, contact sheet and turntable writers: files read back with imageio; writes are atomic."""

import os

import imageio.v3 as iio
import numpy as np
import pytest
import torch

from asdcli import media
from asdcli.errors import UserError
from asdcli.media import contact_sheet, save_png, save_turntable


def _frames(count, height, width):
    """Distinct frames (a moving bar), so that GIF writers cannot merge them."""
    frames = np.zeros((count, height, width, 3), dtype=np.float32)
    for i in range(count):
        frames[i, :, (i * 3) % width] = 1.0
        frames[i, ..., 1] = i / count
    return frames


def test_save_png_float_uint8_and_torch(tmp_path):
    img = np.linspace(0, 1, 12 * 10 * 3, dtype=np.float32).reshape(12, 10, 3)
    back = iio.imread(save_png(img, tmp_path / "f.png"))
    assert back.shape == (12, 10, 3) and back.dtype == np.uint8
    np.testing.assert_array_equal(back, np.round(img * 255).astype(np.uint8))
    as_uint8 = (img * 255).astype(np.uint8)
    np.testing.assert_array_equal(iio.imread(save_png(as_uint8, tmp_path / "u.png")), as_uint8)
    from_torch = iio.imread(save_png(torch.from_numpy(img) * 2 - 0.5, tmp_path / "t.png"))
    assert from_torch.min() == 0 and from_torch.max() == 255  # out-of-range floats are clipped
    with pytest.raises(ValueError):
        save_png(np.zeros((4, 4)), tmp_path / "bad.png")


def test_save_png_errors_name_the_path(tmp_path):
    """save_png writes through asdcli.atomic (tests/test_atomic.py): its one-line errors reach the user."""
    (tmp_path / "dir.png").mkdir()
    with pytest.raises(UserError, match="directory"):
        save_png(np.zeros((2, 2, 3)), tmp_path / "dir.png")
    (tmp_path / "out.png").write_bytes(b"old")
    with pytest.raises(UserError, match="cannot write"):
        save_png(np.zeros((2, 2, 3)), tmp_path / "out.png" / "x.png")
    assert (tmp_path / "out.png").read_bytes() == b"old" and sorted(os.listdir(tmp_path)) == ["dir.png", "out.png"]


def test_contact_sheet_layout_and_labels():
    images = [np.full((16, 20, 3), i / 5, dtype=np.float32) for i in range(5)]
    sheet = contact_sheet(images, cols=3, pad=4)
    assert sheet.shape == (2 * (16 + 4) + 4, 3 * (20 + 4) + 4, 3) and sheet.dtype == np.uint8
    image_4 = sheet[4 + 20:4 + 20 + 16, 4 + 24:4 + 24 + 20]  # row 1, column 1
    np.testing.assert_array_equal(image_4, round(4 / 5 * 255))
    assert (sheet[-10:, -20:] == 255).all()  # the sixth cell is empty background
    labelled = contact_sheet(images, cols=3, labels=[f"prompt {i}" for i in range(5)], pad=4)
    assert labelled.shape == (2 * (16 + 14 + 4) + 4, sheet.shape[1], 3)
    strip = labelled[4 + 16:4 + 16 + 14, 4:4 + 20]
    assert (strip < 128).any()  # some dark text was drawn under the first cell
    with pytest.raises(ValueError):
        contact_sheet(images, cols=2, labels=["only one"])


def test_contact_sheet_row_labels_and_enlarged_views():
    """Views under 128 px are enlarged by whole pixels (64 → 128); each row sits under a strip with its label."""
    images = [np.full((64, 64, 3), v, dtype=np.uint8) for v in (10, 60, 110, 160)]
    sheet = contact_sheet(images, cols=2, pad=2, min_cell=128, row_labels=["a red cube", "a blue sphere"])
    assert sheet.shape == (2 * (16 + 2 + 128 + 2), 2 + 2 * (128 + 2), 3)
    second_row_view = sheet[16 + 132 + 16 + 2:16 + 132 + 16 + 2 + 128, 2 + 130:2 + 130 + 128]
    np.testing.assert_array_equal(second_row_view, 160)  # the 4th view, every pixel repeated 2x2
    assert (sheet[:16] < 128).any() and (sheet[148:164] < 128).any()  # text in both row-label strips
    with pytest.raises(ValueError, match="row labels"):
        contact_sheet(images, cols=2, row_labels=["one"])


@pytest.mark.skipif(not media.ffmpeg_available(), reason="imageio-ffmpeg's ffmpeg is not available")
def test_turntable_mp4_reads_back(tmp_path):
    path = save_turntable(_frames(6, 31, 41), tmp_path / "turn.mp4", fps=12)
    assert path == tmp_path / "turn.mp4"
    video = iio.imread(path, plugin="FFMPEG")
    assert video.shape == (6, 32, 42, 3)  # padded to even sizes for yuv420p
    assert os.listdir(tmp_path) == ["turn.mp4"]


def test_turntable_gif_and_no_silent_format_change(tmp_path, monkeypatch):
    frames = _frames(5, 24, 32)
    gif = iio.imread(save_turntable(frames, tmp_path / "turn.gif", fps=10), index=None)
    assert gif.shape[:3] == (5, 24, 32)
    monkeypatch.setattr(media, "ffmpeg_available", lambda: False)
    with pytest.raises(UserError, match=r"pip install 'asdcli\[video\]'"):
        save_turntable(list(frames), tmp_path / "video.mp4", fps=10)
    assert sorted(os.listdir(tmp_path)) == ["turn.gif"]  # no .mp4, no .gif in its place, no temp file
    with pytest.raises(UserError, match=r"\.mp4, \.gif"):
        save_turntable(frames, tmp_path / "turn.avi")
