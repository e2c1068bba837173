"""The built extension's kernels, read from its SASS: no register spills (no GPU needed).

The body kernels hold 128-208 registers of accumulators and weights per thread; a spill to local memory would
cost far more than it saves and ptxas only warns about it (``-warn-spills`` in CMakeLists.txt), so CI checks the
resource usage cuobjdump reports for every kernel of every architecture in the module. Skipped when the
extension is not built or no cuobjdump is found (PATH, the CUDA toolkit, or the copy Triton ships).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest


def _cuobjdump() -> str | None:
    found = shutil.which("cuobjdump") or next(
        (str(p) for p in [Path("/usr/local/cuda/bin/cuobjdump")] if p.is_file()), None
    )
    if found:
        return found
    try:
        import triton
    except ImportError:
        return None
    bundled = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    return str(bundled) if bundled.is_file() else None


def _resource_usage() -> list[tuple[str, str, int, int, int]]:
    """(arch, function, registers, stack bytes, local bytes) of every kernel in vdsr_fast._C."""
    try:
        from vdsr_fast import _C
    except ImportError:
        pytest.skip("vdsr_fast._C is not built")
    tool = _cuobjdump()
    if tool is None:
        pytest.skip("no cuobjdump (CUDA toolkit or Triton's bundled copy)")
    out = subprocess.run([tool, "--dump-resource-usage", _C.__file__], capture_output=True, text=True, check=True).stdout
    rows, arch, func = [], "?", None
    for line in out.splitlines():
        if m := re.search(r"arch = (sm_\w+)", line):
            arch = m.group(1)
        elif m := re.search(r"Function (\S+):", line):
            func = m.group(1)
        elif func and (m := re.search(r"REG:(\d+) STACK:(\d+) SHARED:\d+ LOCAL:(\d+)", line)):
            rows.append((arch, func, int(m.group(1)), int(m.group(2)), int(m.group(3))))
            func = None
    return rows


def test_no_kernel_spills_registers():
    rows = _resource_usage()
    assert any("strip_kernel" in f for _, f, *_ in rows), "the wgmma strip kernels are missing from the module"
    spilled = [f"{arch} {func}: {reg} registers, stack {stack} B, local {local} B"
               for arch, func, reg, stack, local in rows if stack or local]  # fmt: skip
    assert not spilled, "kernels spill registers:\n" + "\n".join(spilled)
