"""Keep freed host memory for reuse while training on the CPU (glibc's malloc only).

glibc serves every request above its mmap threshold (32 MiB at most) with a fresh mmap and hands it back to the
kernel on free. A CPU training step allocates and frees activations of that size many times (the render's sample
features: prompts × views × rays × samples × channels), so every step page-faults them in again and the kernel
zeroes each page first. With `render.views_per_prompt: 2` on the ShapesWorld recipe that kernel time was 40 % of
the step (docs/notebook.md §6b, §9j). Serving them from the heap instead, and keeping the heap's free top, lets the next
step reuse the same pages. Results are unchanged: this only decides where the bytes live.
"""

from __future__ import annotations

import ctypes
import os
import sys
from collections.abc import Mapping

from asdcli.errors import UserError

# mallopt parameters (glibc's malloc.h)
M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_MAX = -4

SWITCH = "ASD_KEEP_HOST_MEMORY"  # 0: leave glibc's malloc as it is (e.g. to compare, or for a long-lived process)
_USER_SETTINGS = ("MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_THRESHOLD_")
_done = False


def wanted(environ: Mapping[str, str] = os.environ) -> bool:
    """False when ASD_KEEP_HOST_MEMORY=0 or the user set glibc's malloc options (theirs then win over ours)."""
    switch = environ.get(SWITCH, "1").strip()
    if switch not in ("0", "1"):
        raise UserError(f"{SWITCH}: expected 0 (leave the C library's malloc as it is) or 1 (the default), got "
                        f"{switch!r}")
    user_tuned = any(k in environ for k in _USER_SETTINGS) or "glibc.malloc." in environ.get("GLIBC_TUNABLES", "")
    return switch == "1" and not user_tuned


def glibc() -> ctypes.CDLL | None:
    """The process's own C library if it is glibc (whose mallopt knows the parameters above), else None."""
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None)
    return libc if hasattr(libc, "gnu_get_libc_version") else None


def keep_freed_host_memory() -> bool:
    """Serve large host allocations from the heap and keep freed memory for reuse; once per process.

    → True if this call or an earlier one set it; False on other C libraries (macOS, musl) and when `wanted()`
    says no."""
    global _done
    if _done:
        return True
    if not wanted():  # first, so that a bad switch is refused on every platform
        return False
    libc = glibc()
    if libc is None:
        return False
    # Keep up to 2 GiB free at the heap's top, grow it 64 MiB at a time, and serve no request with mmap.
    ok = libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1) and libc.mallopt(M_TOP_PAD, 64 << 20)
    _done = bool(ok and libc.mallopt(M_MMAP_MAX, 0))
    return _done
