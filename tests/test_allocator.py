"""`fcn_jax.cli.keep_freed_memory`: a large block freed on a worker thread is reused by the
next allocation instead of being unmapped and faulted in again (what XLA:CPU's per-step
scratch buffer costs without it), and FCN_JAX_MALLOC=system leaves glibc's defaults.

Counted in page faults, not seconds: the count does not depend on how busy the machine is.
Each case runs in a fresh interpreter because the arena setting only reaches threads
started after it.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

CHILD = """
import ctypes, json, resource, threading
from fcn_jax.cli import keep_freed_memory
applied = keep_freed_memory()
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]

faults = []
def steps():  # like an XLA worker: allocate a step's scratch, write it, free it
    for _ in range(5):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        scratch = libc.malloc(200 << 20)
        ctypes.memset(scratch, 1, 200 << 20)
        libc.free(scratch)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
thread = threading.Thread(target=steps)
thread.start()
thread.join()
print(json.dumps({"applied": applied, "faults": faults}))
"""


def _faults(setting: str) -> dict:
    env = {**os.environ, "FCN_JAX_MALLOC": setting}
    out = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's mallopt only")
def test_freed_scratch_is_reused_not_faulted_in_again():
    kept, system = _faults("keep"), _faults("system")
    assert kept["applied"] and not system["applied"]
    pages = (200 << 20) // os.sysconf("SC_PAGE_SIZE")
    # glibc's default: every step maps fresh pages (one fault per page, or per huge page).
    assert all(f > pages // 1024 for f in system["faults"]), system
    # Kept: the first step grows the heap, the later ones reuse its pages.
    assert kept["faults"][0] > pages // 1024, kept
    assert sum(kept["faults"][1:]) < min(system["faults"]) // 10, (kept, system)


def test_an_unknown_setting_is_one_line_and_a_non_zero_exit():
    env = {**os.environ, "FCN_JAX_MALLOC": "tcmalloc"}
    out = subprocess.run([sys.executable, "-m", "fcn_jax", "--help"], env=env, capture_output=True, text=True)
    assert out.returncode != 0
    assert out.stderr.strip().splitlines() == [
        "fcn-jax: FCN_JAX_MALLOC='tcmalloc': expected keep (the default) or system"
    ]
