"""Packaging; metadata lives in pyproject.toml.

The optional CUDA extension ``vdsr_fast._C`` (csrc/, see csrc/README.md) is built here with CMake, and
only when it can be: nvcc on PATH (or $CUDACXX / $CUDA_HOME/bin/nvcc), cmake and pybind11 installed,
and ``VDSR_FAST_SKIP_CUDA_BUILD`` not "1".  Otherwise a warning is printed and the package installs
without it (the "cuda" backend then reports itself unavailable).  Once the build is attempted, a
compile error fails the install: a broken kernel must not pass silently.

Switches (environment):
  VDSR_FAST_SKIP_CUDA_BUILD=1       never build the extension
  VDSR_FAST_CUDA_ARCHS="80;90a"     CUDA architectures (CMake syntax), passed to CMakeLists.txt
  VDSR_FAST_BUILD_JOBS=N            parallel compile jobs (default: CPU count)
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


def _warn(msg: str) -> None:
    print(f"vdsr_fast setup.py: WARNING: {msg}", file=sys.stderr, flush=True)


def _find_nvcc() -> str | None:
    for cand in (os.environ.get("CUDACXX"), shutil.which("nvcc")):
        if cand and Path(cand).exists():
            return cand
    cuda_home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH") or "/usr/local/cuda"
    cand = Path(cuda_home) / "bin" / "nvcc"
    return str(cand) if cand.exists() else None


def _pybind11_cmake_dir() -> str | None:
    try:
        import pybind11
    except ImportError:
        return None
    return pybind11.get_cmake_dir()


class CMakeExtension(Extension):
    def __init__(self, name: str) -> None:
        super().__init__(name, sources=[])


class CMakeBuild(build_ext):
    """Configure and build CMakeLists.txt, putting the module where setuptools expects it.

    ``get_ext_fullpath`` points into the build tree for ``pip install .`` and into the source tree
    (vdsr_fast/) for ``pip install -e .`` (setuptools sets ``inplace`` for editable installs).
    """

    def build_extension(self, ext: Extension) -> None:
        if not isinstance(ext, CMakeExtension):
            return super().build_extension(ext)
        nvcc = _find_nvcc()
        out_dir = Path(self.get_ext_fullpath(ext.name)).resolve().parent
        out_dir.mkdir(parents=True, exist_ok=True)
        build_dir = Path(self.build_temp).resolve() / "cmake-cuda"
        build_dir.mkdir(parents=True, exist_ok=True)
        archs = os.environ.get("VDSR_FAST_CUDA_ARCHS", "80;90a")
        cfg = [
            "cmake",
            "-S",
            str(ROOT),
            "-B",
            str(build_dir),
            "-DCMAKE_BUILD_TYPE=Release",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-Dpybind11_DIR={_pybind11_cmake_dir()}",
            f"-DCMAKE_CUDA_COMPILER={nvcc}",
            f"-DVDSR_FAST_CUDA_ARCHS={archs}",
            f"-DVDSR_FAST_OUTPUT_DIR={out_dir}",
        ]
        if not os.environ.get("CMAKE_GENERATOR") and shutil.which("make") is None and shutil.which("ninja"):
            cfg += ["-G", "Ninja"]  # CMake's default generator needs make
        jobs = os.environ.get("VDSR_FAST_BUILD_JOBS") or str(os.cpu_count() or 1)
        print(f"vdsr_fast setup.py: building vdsr_fast._C for CUDA archs {archs!r} with {nvcc}", flush=True)
        subprocess.run(cfg, check=True)
        subprocess.run(["cmake", "--build", str(build_dir), "--parallel", jobs], check=True)
        built = sorted(out_dir.glob("_C*.so")) + sorted(out_dir.glob("_C*.pyd"))
        if not built:
            raise RuntimeError(f"vdsr_fast setup.py: CMake finished but no _C module in {out_dir}")


def _ext_modules() -> list[Extension]:
    if os.environ.get("VDSR_FAST_SKIP_CUDA_BUILD", "0") == "1":
        print("vdsr_fast setup.py: VDSR_FAST_SKIP_CUDA_BUILD=1: not building the CUDA extension", flush=True)
        return []
    if _find_nvcc() is None:
        _warn("nvcc not found (PATH, $CUDACXX, $CUDA_HOME): installing without the CUDA extension vdsr_fast._C")
        return []
    if shutil.which("cmake") is None:
        _warn("cmake not found: installing without the CUDA extension vdsr_fast._C (pip install cmake)")
        return []
    if _pybind11_cmake_dir() is None:
        _warn(
            "pybind11 not importable in the build environment: installing without the CUDA extension "
            "vdsr_fast._C (pip install pybind11, then install with --no-build-isolation, or add pybind11 "
            "to [build-system].requires)"
        )
        return []
    return [CMakeExtension("vdsr_fast._C")]


setup(ext_modules=_ext_modules(), cmdclass={"build_ext": CMakeBuild})
