"""keep_freed_host_memory: large freed blocks are reused instead of page-faulted in again; the user's own glibc
malloc settings win. Each check runs in a fresh interpreter, since the setting lasts for the whole process."""

import json
import os
import subprocess
import sys

import pytest

from asdcli.engine.host_memory import glibc, wanted
from asdcli.errors import UserError

GLIBC = glibc() is not None

# Allocate, touch and free a 64 MiB block 20 times; report the minor page faults of the last 10. (The first few
# rounds land on new addresses even when blocks are kept: torch's aligned request is a little larger than the
# block freed before it, until freed neighbours have merged.)
_PROBE = """
import json, resource, sys
import torch
from asdcli.engine.host_memory import keep_freed_host_memory
kept = keep_freed_host_memory() if sys.argv[1] == "keep" else False
for i in range(20):
    if i == 10:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    x = torch.empty(16 << 20)  # 64 MiB of float32
    x.fill_(1.0)
    del x
print(json.dumps({"kept": kept, "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before}))
"""


def _probe(mode: str, **env: str) -> dict:
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith("MALLOC_") and k not in ("GLIBC_TUNABLES", "ASD_KEEP_HOST_MEMORY")}
    out = subprocess.run([sys.executable, "-c", _PROBE, mode], env={**clean, **env}, capture_output=True, text=True,
                         check=True, timeout=120)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not GLIBC, reason="glibc's malloc only")
def test_freed_blocks_are_reused_instead_of_faulted_in_again():
    default, kept = _probe("default"), _probe("keep")
    pages = (64 << 20) // 4096
    assert kept["kept"] is True
    assert default["faults"] >= 9 * pages  # glibc maps and unmaps the block every time
    assert kept["faults"] <= pages // 10  # the same pages again


@pytest.mark.skipif(not GLIBC, reason="glibc's malloc only")
def test_the_users_own_malloc_settings_and_the_switch_win():
    assert _probe("keep", ASD_KEEP_HOST_MEMORY="0")["kept"] is False
    tuned = _probe("keep", MALLOC_MMAP_THRESHOLD_="1048576")
    assert tuned["kept"] is False
    assert tuned["faults"] >= 9 * (64 << 20) // 4096  # glibc's behaviour, as the user asked


def test_wanted_reads_the_switch_and_the_users_malloc_settings():
    assert wanted({"PATH": "/bin"})
    assert wanted({"ASD_KEEP_HOST_MEMORY": "1", "GLIBC_TUNABLES": "glibc.pthread.rseq=0"})
    assert not wanted({"ASD_KEEP_HOST_MEMORY": "0"})
    assert not wanted({"MALLOC_TRIM_THRESHOLD_": "0"})
    assert not wanted({"GLIBC_TUNABLES": "glibc.malloc.mmap_max=0"})
    with pytest.raises(UserError, match=r"ASD_KEEP_HOST_MEMORY: expected 0 .* or 1 .*, got 'yes'"):
        wanted({"ASD_KEEP_HOST_MEMORY": "yes"})
