"""The triplane field fused into one C++ pass per sample (csrc/triplane_field.cpp), with a written-out backward.

Built with torch's C++ extension loader (a compiler and ninja are needed; the build is cached under torch's
extensions folder, ~/.cache/torch_extensions) before a training run long enough to repay the build (`prepare`),
and used by `TriplaneGenerator.query_with_grad` while training on CPU in float32 for the kernel's sizes.
Anywhere else — no compiler, a short run on a machine without a build, CUDA, float16, other sizes, evaluation
renders, `ASD_FUSED=0` — the eager path in mlp.py runs instead; the two agree to float rounding
(tests/generators/test_fused_field.py).
"""

from __future__ import annotations

import os
import platform
import sys
import threading
from pathlib import Path

import torch
from torch import Tensor

from asdcli.generators.mlp import triplane_cells

NAME = "asd_triplane_field"
SOURCE = Path(__file__).with_name("csrc") / "triplane_field.cpp"
SIZES = {(8, 32), (16, 64)}  # (plane_channels, hidden) the kernel is instantiated for
# -fassociative-math (with the flags it needs) lets the compiler vectorise the dot products; no -ffast-math, so
# NaN and infinity still propagate (the trainer's non-finite guard must see them).
# The vector-width hint is for x86 (AVX-512 where the CPU has it); other machines get the generic flags.
CFLAGS = ["-O3", "-fno-math-errno", "-fno-signed-zeros", "-fno-trapping-math", "-fassociative-math"] + (
    ["-march=native", "-mprefer-vector-width=512"] if platform.machine().lower() in ("x86_64", "amd64") else [])
_lock = threading.Lock()
_module: object | None = None
_failed = False


def enabled() -> bool:
    """`ASD_FUSED=0` turns the fused kernel off (for comparisons); anything else leaves it on."""
    return os.environ.get("ASD_FUSED", "1") != "0"


def _built(name: str = NAME) -> bool:
    """Whether torch's extension folder already holds a build of `name` (then loading takes a moment)."""
    # lazy: the extension builder pulls in setuptools; only a training run on CPU needs it
    from torch.utils.cpp_extension import _get_build_directory

    return any(Path(_get_build_directory(name, verbose=False)).glob(f"{name}*.so"))


# Building costs 23-43 s; the kernel saves ~0.62 µs per field query (forward and backward: 390 → 148 ms for the
# 393k queries of a ShapesWorld step, 2026-12-07, 2-core CPU). Build only where the run saves twice the build.
SAVED_S_PER_QUERY = 0.62e-6
BUILD_S = 40.0


def worth_building(field_queries: int) -> bool:
    """Whether a run making `field_queries` queries saves at least twice the build time."""
    return field_queries * SAVED_S_PER_QUERY >= 2 * BUILD_S


def prepare(field_queries: int) -> None:
    """Before a training run: load the kernel if this machine has built it, else build it if the run is long
    enough (`worth_building`); otherwise the run stays on the eager path (`usable` is False)."""
    if _module is None and not _failed and (_built() or worth_building(field_queries)):
        kernel()


def kernel():
    """The compiled extension (built here if need be), or None where it cannot be built (said once, on stderr)."""
    global _module, _failed
    if _module is not None or _failed:
        return _module
    with _lock:
        if _module is None and not _failed:
            _module = _build()
            _failed = _module is None
    return _module


def _build():
    # lazy: the extension builder pulls in setuptools; only a training run on CPU needs it
    from torch.utils.cpp_extension import load

    try:
        if not _built():  # measured 23-43 s on the 2-core CPU (2026-12-07)
            print("compiling the fused triplane kernel (once per machine, about 40 s)", file=sys.stderr)
        return load(NAME, [str(SOURCE)], extra_cflags=CFLAGS, verbose=False)
    except Exception as exc:  # no compiler, no ninja, no Python headers: the eager path does the same maths
        reason = str(exc).split(": [", 1)[0].strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"warning: the fused triplane kernel could not be built ({reason}); training uses the eager path, "
              f"about 1.4x slower per step (ASD_FUSED=0 silences this)", file=sys.stderr)
        return None


def usable(planes: Tensor, points: Tensor, heads: tuple) -> bool:
    """Whether `field_with_grad` can take this call: the kernel is loaded (`prepare`, `kernel`), CPU float32, the
    kernel's sizes, bias-free one-hidden-layer heads, points without a gradient."""
    if not enabled() or planes.device.type != "cpu" or points.requires_grad:
        return False
    if planes.dtype != torch.float32 or points.dtype != torch.float32:
        return False
    for head in heads:
        if len(head.layers) != 2 or any(layer.bias is not None for layer in head.layers):
            return False
    if (planes.shape[2], heads[0].layers[0].weight.shape[0]) not in SIZES:  # (plane channels, hidden width)
        return False
    if heads[0].layers[-1].weight.shape[0] != 1 or heads[1].layers[-1].weight.shape[0] != 3:
        return False  # one SDF value, three colour features: what the kernel computes
    return _module is not None  # loaded by prepare() or kernel()


def cell_table(planes: Tensor) -> Tensor:
    """planes [P, 3, C, R, R] → cells [P, 3, (R+1)², 4, C]: mlp.triplane_cells' coefficients a, b, c, d of each
    zero-padded cell, adjacent per cell (one cache line per lookup)."""
    p, _, c, r, _ = planes.shape
    table = torch.stack(triplane_cells(planes), dim=1)  # [P·3, 4, C, (R+1)²]
    return table.view(p, 3, 4, c, (r + 1) ** 2).permute(0, 1, 4, 2, 3).contiguous()


class _Field(torch.autograd.Function):
    @staticmethod
    def forward(ctx, cells, w1s_hf, w2s, w1c_hf, w2c, points, geometry):
        w1s, w1c = w1s_hf.t().contiguous(), w1c_hf.t().contiguous()  # input-major copies: see the kernel
        ctx.geometry = geometry
        ctx.save_for_backward(cells, w1s, w2s, w1c, w2c, points, w1s_hf, w1c_hf)
        return tuple(kernel().forward(cells, points, w1s, w2s, w1c, w2c, w1s_hf, w1c_hf, *geometry))

    @staticmethod
    def backward(ctx, g_sdf, g_colour, g_grad):
        cells, w1s, w2s, w1c, w2c, points, w1s_hf, w1c_hf = ctx.saved_tensors
        p, n = points.shape[:2]
        shapes = ((p, n), (p, n, w2c.shape[0]), (p, n, 3))
        grads = [points.new_zeros(shape) if g is None else g.contiguous()
                 for g, shape in zip((g_sdf, g_colour, g_grad), shapes, strict=True)]
        d_cells, d_w1s, d_w2s, d_w1c, d_w2c = kernel().backward(cells, points, w1s, w2s, w1c, w2c, w1s_hf,
                                                                w1c_hf, *grads, *ctx.geometry)
        return d_cells, d_w1s.t(), d_w2s, d_w1c.t(), d_w2c, None, None


def field_with_grad(planes: Tensor, points: Tensor, sdf_head, colour_head, radius: float,
                    sphere_radius: float) -> tuple[Tensor, Tensor, Tensor]:
    """planes [P, 3, C, R, R], points [P, N, 3] → sdf [P, N] (sphere bias included), colour features [P, N, O],
    d sdf / d point [P, N, 3]; differentiable with respect to the planes and both heads' weights."""
    w1s = sdf_head.layers[0].weight.contiguous()  # [H, 3C]
    w1c = colour_head.layers[0].weight.contiguous()
    w2s = sdf_head.layers[1].weight[0].contiguous()
    w2c = colour_head.layers[1].weight.contiguous()
    geometry = (planes.shape[-1], float(radius), float(sphere_radius))
    return _Field.apply(cell_table(planes), w1s, w2s, w1c, w2c, points.contiguous(), geometry)
