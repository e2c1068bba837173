"""The package ships ``py.typed``: a type checker reads its annotations, so they must accept what the README
does and give the types a pipeline gets back. Checked with mypy on a user's script (skipped without mypy, which
the ``test`` extra installs)."""

from __future__ import annotations

import inspect
import os
import shutil
import subprocess
import sys
import textwrap
import typing
from pathlib import Path

import pytest

import vdsr_fast
from vdsr_fast.api import UpscaleOptions

ROOT = Path(__file__).resolve().parents[1]


def test_py_typed_is_shipped():
    assert (ROOT / "vdsr_fast" / "py.typed").is_file()  # test_package_data_covers_every_data_file: in the wheel


def test_upscale_options_are_upscales_keyword_options():
    """The overloads' TypedDict lists every keyword-only parameter of the implementation with its annotation."""
    params = inspect.signature(inspect.unwrap(vdsr_fast.upscale)).parameters
    kwonly = {n: p.annotation for n, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY}
    hints = {n: getattr(a, "__forward_arg__", a) for n, a in UpscaleOptions.__annotations__.items()}  # ForwardRef -> str
    assert hints == kwonly
    if hasattr(typing, "get_overloads"):  # Python 3.11+
        assert len(typing.get_overloads(inspect.unwrap(vdsr_fast.upscale))) == 3


USER_SCRIPT = """
    import numpy as np, torch, vdsr_fast
    from vdsr_fast.video import upscale_video

    model = vdsr_fast.load()
    img = torch.rand(1, 3, 270, 480)
    t: torch.Tensor = vdsr_fast.upscale(img, scale=2, model=model)
    t = vdsr_fast.upscale(img, 1.5, size=(405, 720), backend="auto", dtype=torch.float16, tile=256, max_memory="auto",
                          progress=lambda done, total: None)
    bgr = np.zeros((270, 480, 3), np.uint8)
    a: np.ndarray = vdsr_fast.upscale(bgr, 2, model=model, channel_order="BGR")
    e = vdsr_fast.Engine(model, backend="auto", dtype=None, device=None)
    t = e(torch.rand(1, 1, 64, 64))
    vdsr_fast.save(vdsr_fast.load("w.safetensors"), "x.safetensors", metadata={"a": "b"})
    p: float = vdsr_fast.psnr(t, t, shave=2) + vdsr_fast.ssim(t, t, shave=2)
    t = vdsr_fast.imresize(img, 2)
    t = vdsr_fast.rgb_to_ycbcr(img)
    why: dict[str, str | None] = vdsr_fast.available_backends("cuda")
    y, u, v = vdsr_fast.upscale_yuv(torch.rand(1, 64, 64), torch.rand(1, 32, 32), torch.rand(1, 32, 32), 2)
    upscale_video("in.mp4", "out.mp4", scale=2)
    vdsr_fast.upscale(img, 2, tiel=128)  # E: a misspelt option
    vdsr_fast.upscale(img, "2")  # E: a scale that is not a number
"""


def test_mypy_accepts_the_documented_calls_and_catches_misspelt_options(tmp_path):
    if shutil.which("mypy") is None and not (Path(sys.executable).parent / "mypy").exists():
        pytest.skip("mypy is not installed (pip install -e '.[test]' installs it)")
    script = tmp_path / "user.py"
    script.write_text(textwrap.dedent(USER_SCRIPT))
    env = {**os.environ, "MYPYPATH": str(ROOT)}  # the checkout's package (an editable install hides it from mypy)
    r = subprocess.run([sys.executable, "-m", "mypy", "--follow-imports=silent", "--no-incremental", "--cache-dir",
                        str(tmp_path / "cache"), str(script)], capture_output=True, text=True, env=env, cwd=tmp_path)  # fmt: skip
    errors = [line for line in r.stdout.splitlines() if line.startswith(script.name + ":") and ": error:" in line]
    lines = textwrap.dedent(USER_SCRIPT).splitlines()
    expected = {i + 1 for i, s in enumerate(lines) if s.endswith(tuple(f"# E: {t}" for t in ("a misspelt option", "a scale that is not a number")))}  # noqa: E501
    got = {int(line.split(":")[1]) for line in errors}
    assert got == expected, f"mypy errors on the lines {sorted(got)}, expected {sorted(expected)}:\n{r.stdout}{r.stderr}"
