"""Packaging; metadata lives in pyproject.toml, but the licence (below, in the form this setuptools takes).

The optional CUDA extension ``vdsr_fast._C`` (csrc/, see csrc/README.md) is built here with CMake, and
only when it can be: nvcc on PATH (or $CUDACXX / $CUDA_HOME/bin/nvcc), cmake >= 3.24 and pybind11 installed,
and ``VDSR_FAST_SKIP_CUDA_BUILD`` not "1".  Otherwise a warning is issued (recent pip shows it, e.g. 26.3;
older pip, e.g. 23.2, only with -v) and the package installs without it (the "cuda" backend then reports
itself unavailable).
Once they are found the build is attempted, and anything that stops it fails the install saying what to do
(``VDSR_FAST_SKIP_CUDA_BUILD=1`` among it): an nvcc that does not run or is older than CUDA 12.0, a bad
switch below, a configure or compile error (a broken kernel must not pass silently).

Switches (environment):
  VDSR_FAST_SKIP_CUDA_BUILD=1       never build the extension (0 or unset: build it when nvcc is found)
  VDSR_FAST_CUDA_ARCHS="80;90a"     CUDA architectures (CMake syntax, 8.0 or newer), passed to CMakeLists.txt
  VDSR_FAST_BUILD_JOBS=N            parallel compile jobs (default: CPU count)
  CUDAHOSTCXX=g++-12                the host compiler nvcc uses (one this nvcc supports)
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import setuptools
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

try:
    from setuptools.errors import CompileError, SetupError
except ImportError:  # setuptools < 59 (no setuptools.errors)
    from distutils.errors import CompileError
    from distutils.errors import DistutilsSetupError as SetupError

ROOT = Path(__file__).resolve().parent
DEFAULT_ARCHS = "80;90a"
MIN_ARCH = 80  # cp.async and bf16 mma.sync: compute capability 8.0
MIN_NVCC = (12, 0)  # sm_90a and wgmma (csrc/README.md)
MIN_CMAKE = (3, 24)  # CMakeLists.txt: arch-specific targets such as "90a"
SKIP_HINT = (
    "or install without the CUDA extension: rerun with VDSR_FAST_SKIP_CUDA_BUILD=1 "
    "(e.g. VDSR_FAST_SKIP_CUDA_BUILD=1 pip install .)"
)


class CudaExtensionWarning(UserWarning):
    """Installing without vdsr_fast._C; a UserWarning, which recent pip shows without -v."""


def _warn(msg: str) -> None:
    warnings.warn(f"vdsr_fast setup.py: {msg}", CudaExtensionWarning, stacklevel=2)


DEFAULT_CUDA_HOME = "/usr/local/cuda"


def _find_nvcc() -> str | None:
    """$CUDACXX, nvcc on PATH, then bin/nvcc under $CUDA_HOME, $CUDA_PATH and /usr/local/cuda: the first that exists."""
    for cand in (os.environ.get("CUDACXX"), shutil.which("nvcc")):
        if cand and Path(cand).exists():
            return cand
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), DEFAULT_CUDA_HOME):  # a stale one: the next
        if home and (Path(home) / "bin" / "nvcc").exists():
            return str(Path(home) / "bin" / "nvcc")
    return None


def _pybind11_cmake_dir() -> str | None:
    try:
        import pybind11
    except ImportError:
        return None
    return pybind11.get_cmake_dir()


def _skip_cuda_build() -> bool:
    """VDSR_FAST_SKIP_CUDA_BUILD: 1/true/yes/on skip the build, 0/false/no/off or unset do not; else SetupError."""
    value = os.environ.get("VDSR_FAST_SKIP_CUDA_BUILD", "").strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("", "0", "false", "no", "off"):
        return False
    raise SetupError(
        f"VDSR_FAST_SKIP_CUDA_BUILD={value!r}: set it to 1 to install without the CUDA extension vdsr_fast._C, "
        "or to 0 (or unset it) to build the extension when nvcc is found"
    )


def _cuda_archs() -> str:
    """VDSR_FAST_CUDA_ARCHS checked (unset or empty: "80;90a"); SetupError naming the entry and the accepted forms."""
    value = os.environ.get("VDSR_FAST_CUDA_ARCHS", "").strip()
    if not value:
        return DEFAULT_ARCHS
    archs = [a.strip() for a in value.split(";")]
    for arch in archs:
        m = re.fullmatch(r"([0-9]+)[af]?(-real|-virtual)?", arch)
        if arch == "native" or (m and int(m[1]) >= MIN_ARCH):
            continue
        why = "is below compute capability 8.0, which the kernels need" if m else "is not in CMake's form"
        if "," in arch:
            why += ' (separate architectures with ";")'
        guess = re.sub(r"^(sm_|compute_)", "", arch.lower()).replace(".", "")
        if guess != arch and re.fullmatch(r"[0-9]+a?", guess) and int(guess.rstrip("a")) >= MIN_ARCH:
            why += f' (did you mean "{guess}"?)'
        raise SetupError(
            f"VDSR_FAST_CUDA_ARCHS={value!r}: {arch!r} {why}. Give CUDA architectures of compute capability 8.0 "
            'or newer as CMake writes them, separated by ";": the number without "sm_" or a dot ("80", "86", '
            '"90"), "a" for the arch-specific kernels ("90a": Hopper\'s wgmma), optionally "-real" or "-virtual" '
            f'(e.g. "80;90a", "89-real"), or "native" (the GPUs of this machine); unset: "{DEFAULT_ARCHS}"'
        )
    return ";".join(archs)


def _build_jobs() -> str:
    """VDSR_FAST_BUILD_JOBS checked (unset or empty: the CPU count); SetupError unless a positive integer."""
    value = os.environ.get("VDSR_FAST_BUILD_JOBS", "").strip()
    if not value:
        return str(os.cpu_count() or 1)
    if not re.fullmatch(r"[0-9]+", value) or int(value) < 1:
        raise SetupError(
            f"VDSR_FAST_BUILD_JOBS={value!r}: give the number of parallel compile jobs as a positive integer "
            f"(e.g. 2), or unset it for one per CPU ({os.cpu_count() or 1})"
        )
    return str(int(value))


def _tool_version(cmd: list[str]) -> tuple[tuple[int, int] | None, str]:
    """(major, minor) that ``cmd`` (e.g. ``nvcc --version``) prints, or None; and its output or why it did not run."""
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as e:
        return None, f"{type(e).__name__}: {e}"
    out = (proc.stdout + proc.stderr).strip()
    m = re.search(r"(?:release|version) ([0-9]+)\.([0-9]+)", out)
    if proc.returncode != 0 or not m:
        return None, f"exit code {proc.returncode}: {out.splitlines()[-1] if out else 'no output'}"
    return (int(m[1]), int(m[2])), out


def _check_nvcc(nvcc: str) -> None:
    """SetupError unless ``nvcc --version`` runs and reports CUDA >= 12.0."""
    version, out = _tool_version([nvcc, "--version"])
    fix = f"point CUDACXX at the nvcc of a CUDA >= {MIN_NVCC[0]}.{MIN_NVCC[1]} toolkit, {SKIP_HINT}"
    if version is None:
        raise SetupError(f"found nvcc at {nvcc}, but `{nvcc} --version` failed ({out}): {fix}")
    if version < MIN_NVCC:
        raise SetupError(
            f"nvcc at {nvcc} is CUDA {version[0]}.{version[1]}; vdsr_fast._C needs CUDA "
            f"{MIN_NVCC[0]}.{MIN_NVCC[1]} or newer (sm_90a, wgmma): {fix}"
        )


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
        archs, jobs = _cuda_archs(), _build_jobs()
        _check_nvcc(nvcc)
        if not (ROOT / "CMakeLists.txt").is_file() or not (ROOT / "csrc").is_dir():
            raise SetupError(
                f"CMakeLists.txt or csrc/ is missing from {ROOT} (an sdist made without MANIFEST.in?): "
                f"the CUDA extension cannot be built from this tree; {SKIP_HINT}"
            )
        out_dir = Path(self.get_ext_fullpath(ext.name)).resolve().parent
        out_dir.mkdir(parents=True, exist_ok=True)
        # A build tree that outlives the call: setuptools gives editable installs a fresh temporary build_temp,
        # which made every `pip install -e .` recompile all kernels. (With pip's build isolation pybind11's
        # include path still changes per build; --no-build-isolation keeps it, and the rebuild incremental.)
        build_dir = ROOT / "build" / f"cmake-cuda-{sys.implementation.cache_tag}"
        build_dir.mkdir(parents=True, exist_ok=True)
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
        print(f"vdsr_fast setup.py: building vdsr_fast._C for CUDA archs {archs!r} with {nvcc}", flush=True)
        for step, cmd in (
            ("configuring", cfg),
            ("compiling", ["cmake", "--build", str(build_dir), "--parallel", jobs]),
        ):
            if subprocess.run(cmd).returncode != 0:
                raise CompileError(
                    f"{step} the CUDA extension vdsr_fast._C failed (CMake's messages are above). Common causes: a "
                    "host compiler newer than this nvcc supports (name one it does with CUDAHOSTCXX, e.g. "
                    "CUDAHOSTCXX=g++-12), an architecture in VDSR_FAST_CUDA_ARCHS this nvcc does not know; fix "
                    f"the cause, {SKIP_HINT}"
                )
        built = sorted(out_dir.glob("_C*.so")) + sorted(out_dir.glob("_C*.pyd"))
        if not built:
            raise CompileError(f"CMake finished but left no _C module in {out_dir}")


def _stale_in_place_module() -> None:
    """Warn when an earlier in-place build's vdsr_fast/_C*.so outlives an install without the extension."""
    for old in sorted((ROOT / "vdsr_fast").glob("_C*.so")) + sorted((ROOT / "vdsr_fast").glob("_C*.pyd")):
        _warn(
            f"{old.relative_to(ROOT)} from an earlier build stays in the source tree: an editable install (or Python "
            "started in the checkout) keeps importing it; delete it to go without the CUDA extension"
        )


def _ext_modules() -> list[Extension]:
    exts = _ext_modules_or_why_not()
    if not exts:
        _stale_in_place_module()
    return exts


def _ext_modules_or_why_not() -> list[Extension]:
    if _skip_cuda_build():
        print("vdsr_fast setup.py: VDSR_FAST_SKIP_CUDA_BUILD=1: not building the CUDA extension", flush=True)
        return []
    without = "installing without the CUDA extension vdsr_fast._C (backend='cuda' unavailable)"
    if _find_nvcc() is None:
        _warn(f"nvcc not found (PATH, $CUDACXX, $CUDA_HOME): {without}")
        return []
    if shutil.which("cmake") is None:
        _warn(f'cmake not found: {without}; pip install "cmake>={MIN_CMAKE[0]}.{MIN_CMAKE[1]}" to build it')
        return []
    version, _ = _tool_version(["cmake", "--version"])
    if version is not None and version < MIN_CMAKE:
        _warn(
            f"cmake {version[0]}.{version[1]} is older than the {MIN_CMAKE[0]}.{MIN_CMAKE[1]} CMakeLists.txt "
            f'needs: {without}; pip install "cmake>={MIN_CMAKE[0]}.{MIN_CMAKE[1]}" to build it'
        )
        return []
    if _pybind11_cmake_dir() is None:
        _warn(
            f"pybind11 not importable in the build environment: {without} (pip install pybind11, then install "
            "with --no-build-isolation, or add pybind11 to [build-system].requires)"
        )
        return []
    return [CMakeExtension("vdsr_fast._C")]


try:
    ext_modules = _ext_modules()
except SetupError as e:
    sys.exit(f"vdsr_fast setup.py: error: {e}")
# PEP 639's SPDX expression where setuptools takes it (77 and later, which deprecate the old free-text field and
# remove it on 2027-02-18), the free-text field before: the wheel says MIT either way, without a deprecation warning.
_SETUPTOOLS = tuple(int(p) for p in re.findall(r"\d+", setuptools.__version__)[:2])
LICENSE = {"license_expression": "MIT"} if _SETUPTOOLS >= (77, 0) else {"license": "MIT"}
setup(ext_modules=ext_modules, cmdclass={"build_ext": CMakeBuild}, **LICENSE)
