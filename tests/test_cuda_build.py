"""The CUDA extension's build: setup.py's checks (no build needed), CMakeLists.txt used directly (configured, not
built, ~5 s a case), and the built module (its arch images, no spills).

setup.py installs without vdsr_fast._C when nvcc is not found (a warning pip shows), and otherwise builds it or
fails the install saying what to do: the tests below call its helpers with fake environments and fake nvcc/cmake
scripts, so they run in a second on any machine.

The body kernels hold 128-208 registers of accumulators and weights per thread; a spill to local memory would
cost far more than it saves and ptxas only warns about it (``-warn-spills`` in CMakeLists.txt), so CI checks the
resource usage cuobjdump reports for every kernel of every architecture in the module. Skipped when the
extension is not built or no cuobjdump is found (PATH, the CUDA toolkit, or the copy Triton ships).
"""

from __future__ import annotations

import fnmatch
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
unix_only = pytest.mark.skipif(os.name == "nt", reason="the fake nvcc/cmake are sh scripts")
BUILD_ENV = ("VDSR_FAST_SKIP_CUDA_BUILD", "VDSR_FAST_CUDA_ARCHS", "VDSR_FAST_BUILD_JOBS", "CUDACXX", "CUDAHOSTCXX")


@pytest.fixture
def setup_py(monkeypatch):
    """setup.py as a module, its ``setup()`` call a no-op (nothing is built), the build's environment cleared."""
    import setuptools

    monkeypatch.setattr(setuptools, "setup", lambda **kw: None)
    for name in BUILD_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("VDSR_FAST_SKIP_CUDA_BUILD", "1")  # loading it runs _ext_modules()
    spec = importlib.util.spec_from_file_location("vdsr_fast_setup_py", ROOT / "setup.py")
    mod = importlib.util.module_from_spec(spec)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        spec.loader.exec_module(mod)
    monkeypatch.delenv("VDSR_FAST_SKIP_CUDA_BUILD")
    return mod


def _script(path: Path, body: str) -> Path:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return path


def _fake_nvcc(bin_dir: Path, release: str | None) -> Path:
    """An nvcc that reports CUDA ``release`` (None: one that fails as a broken toolkit does)."""
    bin_dir.mkdir(exist_ok=True)
    if release is None:
        return _script(bin_dir / "nvcc", 'echo "nvcc fatal   : broken toolkit" >&2\nexit 1\n')
    return _script(bin_dir / "nvcc", f'echo "Cuda compilation tools, release {release}, V{release}.1"\n')


@pytest.mark.parametrize(
    "value, archs",
    [(None, "80;90a"), ("", "80;90a"), ("  ", "80;90a"), ("80", "80"), ("90a", "90a"), ("80; 90a", "80;90a"),
     ("86-real;89-virtual", "86-real;89-virtual"), ("100a", "100a"), ("120f", "120f"), ("native", "native")],
)  # fmt: skip
def test_cuda_archs_takes_cmake_forms(setup_py, monkeypatch, value, archs):
    if value is not None:
        monkeypatch.setenv("VDSR_FAST_CUDA_ARCHS", value)
    assert setup_py._cuda_archs() == archs


@pytest.mark.parametrize(
    "value, hint",
    [("sm_90", 'did you mean "90"'), ("9.0", 'did you mean "90"'), ("abc", "not in CMake's form"),
     ("80,90a", 'separate architectures with ";"'), ("75", "below compute capability 8.0"), ("all", "CMake's form"),
     ("80;;90a", "''"), ("compute_80", 'did you mean "80"')],
)  # fmt: skip
def test_cuda_archs_refuses_bad_values_naming_the_variable_and_the_forms(setup_py, monkeypatch, value, hint):
    """Refused before CMake runs (it would fail minutes later, naming CMAKE_CUDA_ARCHITECTURES instead)."""
    monkeypatch.setenv("VDSR_FAST_CUDA_ARCHS", value)
    with pytest.raises(setup_py.SetupError) as e:
        setup_py._cuda_archs()
    msg = str(e.value)
    assert msg.startswith(f"VDSR_FAST_CUDA_ARCHS={value!r}") and hint in msg
    assert all(form in msg for form in ('"80;90a"', '"90a"', '"-real"', '"native"')), msg


@pytest.mark.parametrize("value", ["sm_75", "compute_70", "7.5"])
def test_cuda_archs_suggests_no_architecture_below_8_0(setup_py, monkeypatch, value):
    """"sm_75" is refused, like "75", without suggesting "75" (which would be refused next)."""
    monkeypatch.setenv("VDSR_FAST_CUDA_ARCHS", value)
    with pytest.raises(setup_py.SetupError) as e:
        setup_py._cuda_archs()
    assert "did you mean" not in str(e.value) and "not in CMake's form" in str(e.value)


@pytest.mark.parametrize("value", ["0", "-1", "x", "2.5", "+2"])
def test_build_jobs_refuses_what_is_not_a_positive_integer(setup_py, monkeypatch, value):
    monkeypatch.setenv("VDSR_FAST_BUILD_JOBS", value)
    with pytest.raises(setup_py.SetupError, match=r"VDSR_FAST_BUILD_JOBS=.*positive integer"):
        setup_py._build_jobs()


def test_build_jobs_default_is_the_cpu_count(setup_py, monkeypatch):
    assert setup_py._build_jobs() == str(os.cpu_count() or 1)
    monkeypatch.setenv("VDSR_FAST_BUILD_JOBS", "")
    assert setup_py._build_jobs() == str(os.cpu_count() or 1)
    monkeypatch.setenv("VDSR_FAST_BUILD_JOBS", " 3 ")
    assert setup_py._build_jobs() == "3"
    monkeypatch.setenv("VDSR_FAST_BUILD_JOBS", "04")
    assert setup_py._build_jobs() == "4"


@pytest.mark.parametrize("value, skip", [("1", True), ("true", True), ("YES", True), ("0", False), ("", False), ("off", False)])
def test_skip_cuda_build_values(setup_py, monkeypatch, value, skip):
    monkeypatch.setenv("VDSR_FAST_SKIP_CUDA_BUILD", value)
    assert setup_py._skip_cuda_build() is skip


def test_skip_cuda_build_refuses_other_values(setup_py, monkeypatch):
    """``=2`` or ``=maybe`` would have built the extension (only "1" skipped it)."""
    monkeypatch.setenv("VDSR_FAST_SKIP_CUDA_BUILD", "maybe")
    with pytest.raises(setup_py.SetupError, match=r"VDSR_FAST_SKIP_CUDA_BUILD='maybe': set it to 1"):
        setup_py._skip_cuda_build()


def test_no_nvcc_installs_without_the_extension_and_says_so(setup_py, monkeypatch, tmp_path):
    """A UserWarning: pip (26.3 here) shows the build backend's UserWarnings, not what it prints (only with -v)."""
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("CUDACXX", raising=False)
    monkeypatch.delenv("CUDA_HOME", raising=False)
    monkeypatch.delenv("CUDA_PATH", raising=False)
    monkeypatch.setattr(setup_py, "DEFAULT_CUDA_HOME", str(tmp_path / "no-cuda"))
    with pytest.warns(UserWarning) as record:
        assert setup_py._ext_modules() == []
    assert any("nvcc not found" in str(w.message) and "without the CUDA extension" in str(w.message) for w in record)


@unix_only
def test_nvcc_is_looked_for_in_cudacxx_then_path_then_the_cuda_home(setup_py, monkeypatch, tmp_path):
    """$CUDACXX names the toolkit even with another nvcc on PATH; one that does not exist is passed over; without
    either, $CUDA_HOME/bin/nvcc, then $CUDA_PATH/bin/nvcc (Windows' name for it), then /usr/local/cuda's: a stale
    $CUDA_HOME is passed over too (it hid the others, and the package installed without the extension)."""
    for home_dir in ("home", "cuda_path"):
        (tmp_path / home_dir).mkdir()
    on_path, chosen = _fake_nvcc(tmp_path / "path", "13.0"), _fake_nvcc(tmp_path / "chosen", "12.4")
    home, cuda_path = _fake_nvcc(tmp_path / "home" / "bin", "12.8"), _fake_nvcc(tmp_path / "cuda_path" / "bin", "12.6")
    monkeypatch.setenv("PATH", str(on_path.parent))
    monkeypatch.setenv("CUDACXX", str(chosen))
    assert setup_py._find_nvcc() == str(chosen)
    monkeypatch.setenv("CUDACXX", str(tmp_path / "gone" / "nvcc"))
    assert setup_py._find_nvcc() == str(on_path)
    monkeypatch.delenv("CUDACXX")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.setenv("CUDA_HOME", str(home.parent.parent))
    monkeypatch.setenv("CUDA_PATH", str(cuda_path.parent.parent))
    assert setup_py._find_nvcc() == str(home)
    monkeypatch.setenv("CUDA_HOME", str(tmp_path / "stale"))
    assert setup_py._find_nvcc() == str(cuda_path)
    monkeypatch.delenv("CUDA_HOME")
    assert setup_py._find_nvcc() == str(cuda_path)
    monkeypatch.delenv("CUDA_PATH")
    monkeypatch.setattr(setup_py, "DEFAULT_CUDA_HOME", str(home.parent.parent))
    assert setup_py._find_nvcc() == str(home)


@unix_only
@pytest.mark.parametrize("missing", ["cmake", "pybind11"])
def test_missing_cmake_or_pybind11_installs_without_the_extension_and_says_so(setup_py, monkeypatch, tmp_path, missing):
    _fake_nvcc(tmp_path, "13.0")
    if missing == "pybind11":
        _script(tmp_path / "cmake", 'echo "cmake version 3.31.6"\n')
        monkeypatch.setattr(setup_py, "_pybind11_cmake_dir", lambda: None)
    else:
        monkeypatch.setattr(setup_py, "_pybind11_cmake_dir", lambda: str(tmp_path))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.warns(UserWarning) as record:
        assert setup_py._ext_modules_or_why_not() == []
    want = "cmake not found" if missing == "cmake" else "pybind11 not importable"
    assert any(want in str(w.message) and "without the CUDA extension" in str(w.message) for w in record)


@unix_only
def test_extension_is_built_when_everything_is_found(setup_py, monkeypatch, tmp_path):
    _fake_nvcc(tmp_path, "13.0")
    _script(tmp_path / "cmake", 'echo "cmake version 3.24.0"\n')
    monkeypatch.setattr(setup_py, "_pybind11_cmake_dir", lambda: str(tmp_path))
    monkeypatch.setenv("PATH", str(tmp_path))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert [e.name for e in setup_py._ext_modules_or_why_not()] == ["vdsr_fast._C"]


def test_stale_in_place_module_is_flagged_only_when_installing_without_the_extension(setup_py, monkeypatch, tmp_path):
    """An editable install keeps importing an earlier build's vdsr_fast/_C*.so: said when the extension is not built."""
    (tmp_path / "vdsr_fast").mkdir()
    (tmp_path / "vdsr_fast" / "_C.cpython-311-x86_64-linux-gnu.so").write_bytes(b"")
    monkeypatch.setattr(setup_py, "ROOT", tmp_path)
    monkeypatch.setattr(setup_py, "_ext_modules_or_why_not", lambda: [])
    with pytest.warns(UserWarning, match=r"vdsr_fast/_C\.cpython-311-x86_64-linux-gnu\.so from an earlier build"):
        assert setup_py._ext_modules() == []
    monkeypatch.setattr(setup_py, "_ext_modules_or_why_not", lambda: ["ext"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert setup_py._ext_modules() == ["ext"]


def test_bad_switch_stops_setup_py_with_its_message(monkeypatch):
    """setup.py turns the SetupError into an exit with the message (pip shows it), not a traceback."""
    import setuptools

    monkeypatch.setattr(setuptools, "setup", lambda **kw: None)
    monkeypatch.setenv("VDSR_FAST_SKIP_CUDA_BUILD", "maybe")
    spec = importlib.util.spec_from_file_location("vdsr_fast_setup_py", ROOT / "setup.py")
    with pytest.raises(SystemExit, match=r"^vdsr_fast setup.py: error: VDSR_FAST_SKIP_CUDA_BUILD='maybe'"):
        spec.loader.exec_module(importlib.util.module_from_spec(spec))


@unix_only
def test_cmake_older_than_3_24_installs_without_the_extension_and_says_so(setup_py, monkeypatch, tmp_path):
    """Like no cmake at all (CMakeLists.txt would stop at cmake_minimum_required): the warning names the fix."""
    _fake_nvcc(tmp_path, "13.0")
    _script(tmp_path / "cmake", 'echo "cmake version 3.22.1"\n')
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.warns(UserWarning) as record:
        assert setup_py._ext_modules() == []
    assert any("cmake 3.22 is older than the 3.24" in str(w.message) and 'pip install "cmake>=3.24"' in str(w.message)
               for w in record)  # fmt: skip


@unix_only
@pytest.mark.parametrize("release, error", [(None, "--version` failed"), ("11.4", "is CUDA 11.4; vdsr_fast._C needs CUDA 12.0")])
def test_unusable_nvcc_fails_with_the_way_out(setup_py, tmp_path, release, error):
    """nvcc found means the build is attempted: an nvcc that cannot build it fails the install, saying how to go on."""
    nvcc = _fake_nvcc(tmp_path, release)
    with pytest.raises(setup_py.SetupError) as e:
        setup_py._check_nvcc(str(nvcc))
    assert error in str(e.value) and "CUDACXX" in str(e.value) and "VDSR_FAST_SKIP_CUDA_BUILD=1" in str(e.value)


@unix_only
def test_nvcc_that_prints_a_version_but_fails_is_refused(setup_py, tmp_path):
    nvcc = _script(tmp_path / "nvcc", 'echo "Cuda compilation tools, release 13.0, V13.0.1"\nexit 1\n')
    with pytest.raises(setup_py.SetupError, match=r"--version` failed \(exit code 1: Cuda compilation tools"):
        setup_py._check_nvcc(str(nvcc))


def test_nvcc_that_hangs_is_refused(setup_py, monkeypatch):
    def hang(cmd, **kw):
        raise subprocess.TimeoutExpired(cmd, kw["timeout"])

    monkeypatch.setattr(setup_py.subprocess, "run", hang)
    with pytest.raises(setup_py.SetupError, match=r"--version` failed \(TimeoutExpired: "):
        setup_py._check_nvcc("/opt/cuda/bin/nvcc")


@unix_only
def test_supported_nvcc_passes(setup_py, tmp_path):
    setup_py._check_nvcc(str(_fake_nvcc(tmp_path, "13.0")))


def _logging_cmake(bin_dir: Path, log: Path) -> Path:
    """A cmake that appends its arguments to ``log`` (a line a call) and leaves a _C.so where it is told to build."""
    return _script(bin_dir / "cmake", f'echo "$@" >> {log}\nfor a; do case "$a" in -DVDSR_FAST_OUTPUT_DIR=*) : > "${{a#*=}}/_C.so";; esac; done\n')


def _build_ext(setup_py, tmp_path):
    from setuptools import Distribution

    ext = setup_py.CMakeExtension("vdsr_fast._C")
    cmd = setup_py.CMakeBuild(Distribution({"name": "vdsr_fast", "ext_modules": [ext]}))
    cmd.build_lib, cmd.build_temp = str(tmp_path / "lib"), str(tmp_path / "temp")
    cmd.ensure_finalized()
    return cmd, ext


@unix_only
@pytest.mark.parametrize("fail_at", ["configure", "build"])
def test_cmake_failure_fails_the_install_with_the_way_out(setup_py, monkeypatch, tmp_path, fail_at):
    """A host compiler nvcc refuses, an unknown architecture, a compile error: the install fails, saying what to do."""
    bin_dir = tmp_path / "bin"
    _fake_nvcc(bin_dir, "13.0")
    _script(bin_dir / "cmake", f'[ "$1" = "--build" ] && [ {fail_at} = build ] && exit 2\n[ {fail_at} = configure ] && exit 1\nexit 0\n')
    monkeypatch.setenv("PATH", str(bin_dir))
    cmd, ext = _build_ext(setup_py, tmp_path)
    step = "configuring" if fail_at == "configure" else "compiling"
    with pytest.raises(setup_py.CompileError, match=rf"{step} the CUDA extension vdsr_fast._C failed") as e:
        cmd.build_extension(ext)
    assert "CUDAHOSTCXX" in str(e.value) and "VDSR_FAST_SKIP_CUDA_BUILD=1" in str(e.value)


@unix_only
def test_build_passes_the_switches_to_cmake(setup_py, monkeypatch, tmp_path):
    """The checked archs and job count reach CMake; the module lands where setuptools packs it."""
    bin_dir = tmp_path / "bin"
    _fake_nvcc(bin_dir, "13.0")
    log = tmp_path / "cmake.log"
    _logging_cmake(bin_dir, log)
    monkeypatch.setenv("PATH", str(bin_dir))
    monkeypatch.setenv("VDSR_FAST_CUDA_ARCHS", "80; 90a")
    monkeypatch.setenv("VDSR_FAST_BUILD_JOBS", "3")
    cmd, ext = _build_ext(setup_py, tmp_path)
    cmd.build_extension(ext)
    configure, build = log.read_text().splitlines()
    assert "-DVDSR_FAST_CUDA_ARCHS=80;90a" in configure and f"-DCMAKE_CUDA_COMPILER={bin_dir / 'nvcc'}" in configure
    assert "-DCMAKE_BUILD_TYPE=Release" in configure and f"-DPython_EXECUTABLE={sys.executable}" in configure
    assert build.endswith("--parallel 3")
    assert (Path(cmd.get_ext_fullpath(ext.name)).parent / "_C.so").exists()


@unix_only
@pytest.mark.parametrize("tools, generator", [(["ninja"], "Ninja"), (["make", "ninja"], None), ([], None)])
def test_ninja_is_the_generator_only_where_make_is_missing(setup_py, monkeypatch, tmp_path, tools, generator):
    """CMake's default generator needs make; a machine with ninja alone (a pip-installed one) builds with it."""
    bin_dir = tmp_path / "bin"
    _fake_nvcc(bin_dir, "13.0")
    log = tmp_path / "cmake.log"
    _logging_cmake(bin_dir, log)
    for tool in tools:
        _script(bin_dir / tool, "exit 0\n")
    monkeypatch.setenv("PATH", str(bin_dir))
    monkeypatch.delenv("CMAKE_GENERATOR", raising=False)
    cmd, ext = _build_ext(setup_py, tmp_path)
    cmd.build_extension(ext)
    configure = log.read_text().splitlines()[0].split()
    assert (configure[configure.index("-G") + 1] if "-G" in configure else None) == generator
    if generator:  # a generator the user chose is left to CMake
        log.unlink()
        monkeypatch.setenv("CMAKE_GENERATOR", "Unix Makefiles")
        cmd.build_extension(ext)
        assert "-G" not in log.read_text().splitlines()[0].split()


@unix_only
def test_cmake_that_leaves_no_module_fails_the_install(setup_py, monkeypatch, tmp_path):
    bin_dir = tmp_path / "bin"
    _fake_nvcc(bin_dir, "13.0")
    _script(bin_dir / "cmake", "exit 0\n")
    monkeypatch.setenv("PATH", str(bin_dir))
    cmd, ext = _build_ext(setup_py, tmp_path)
    with pytest.raises(setup_py.CompileError, match="CMake finished but left no _C module"):
        cmd.build_extension(ext)


@unix_only
def test_broken_nvcc_fails_the_build_before_cmake_runs(setup_py, monkeypatch, tmp_path):
    bin_dir = tmp_path / "bin"
    _fake_nvcc(bin_dir, None)
    _script(bin_dir / "cmake", f": > {tmp_path / 'cmake_ran'}\n")
    monkeypatch.setenv("PATH", str(bin_dir))
    cmd, ext = _build_ext(setup_py, tmp_path)
    with pytest.raises(setup_py.SetupError, match="--version` failed"):
        cmd.build_extension(ext)
    assert not (tmp_path / "cmake_ran").exists()


@unix_only
def test_bad_switch_fails_before_cmake_runs(setup_py, monkeypatch, tmp_path):
    bin_dir = tmp_path / "bin"
    _fake_nvcc(bin_dir, "13.0")
    _script(bin_dir / "cmake", f": > {tmp_path / 'cmake_ran'}\n")
    monkeypatch.setenv("PATH", str(bin_dir))
    monkeypatch.setenv("VDSR_FAST_CUDA_ARCHS", "sm_90")
    cmd, ext = _build_ext(setup_py, tmp_path)
    with pytest.raises(setup_py.SetupError, match="VDSR_FAST_CUDA_ARCHS='sm_90'"):
        cmd.build_extension(ext)
    assert not (tmp_path / "cmake_ran").exists()


def test_package_data_covers_every_data_file():
    """What vdsr_fast/ holds besides Python (the shipped weights) goes into the wheel: pyproject's package-data."""
    tomllib = pytest.importorskip("tomllib")
    globs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["vdsr_fast"]
    pkg = ROOT / "vdsr_fast"
    data = [p.relative_to(pkg).as_posix() for p in pkg.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    data = [p for p in data if not p.endswith(".py") and not re.fullmatch(r"_C\..*\.(so|pyd)", p)]
    assert "weights/vdsr_x234.safetensors" in data
    missing = [p for p in data if not any(fnmatch.fnmatch(p, g) for g in globs)]
    assert not missing, f"not in [tool.setuptools.package-data] (pip install . would leave them out): {missing}"


def test_wheel_says_mit_and_ships_the_licence_and_py_typed(tmp_path):
    """The licence reaches the wheel in the form this setuptools takes (setup.py: PEP 639's expression from 77 on,
    whose table form pyproject.toml used to have is removed on 2027-02-18), with no deprecation warning."""
    import zipfile

    import setuptools

    env = {**os.environ, "VDSR_FAST_SKIP_CUDA_BUILD": "1"}
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps", "-v", str(ROOT), "-w",
                        str(tmp_path)], capture_output=True, text=True, env=env, cwd=tmp_path)  # fmt: skip
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert not re.search(r"licen[cs]e.*deprecat|deprecat.*licen[cs]e", r.stdout + r.stderr, re.I | re.S)
    (wheel,) = tmp_path.glob("vdsr_fast-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        meta = z.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    new = tuple(int(p) for p in re.findall(r"\d+", setuptools.__version__)[:2]) >= (77, 0)
    assert ("License-Expression: MIT" if new else "License: MIT") in meta.splitlines()
    assert "License-File: LICENSE" in meta.splitlines()
    assert any(n.endswith("/LICENSE") for n in names) and "vdsr_fast/py.typed" in names


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


def _module_and_cuobjdump():
    """vdsr_fast._C and a cuobjdump to read it with (the test is skipped without either)."""
    try:
        from vdsr_fast import _C
    except ImportError:
        pytest.skip("vdsr_fast._C is not built")
    tool = _cuobjdump()
    if tool is None:
        pytest.skip("no cuobjdump (CUDA toolkit or Triton's bundled copy)")
    return _C, tool


def _resource_usage() -> list[tuple[str, str, int, int, int]]:
    """(arch, function, registers, stack bytes, local bytes) of every kernel in vdsr_fast._C."""
    _C, tool = _module_and_cuobjdump()
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


def _configure(setup_py, tmp_path: Path, args: list[str], env_archs: str | None) -> tuple[str, str]:
    """Configure CMakeLists.txt directly (no setup.py, no build): the module's compile flags and link command."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        buildable = setup_py._ext_modules_or_why_not()  # setup.py's own check: nvcc, cmake >= 3.24, pybind11
    if not buildable or not shutil.which("make"):
        pytest.skip("configuring CMakeLists.txt needs what setup.py builds it with (nvcc, cmake >= 3.24, pybind11) and make")
    nvcc, pybind11_dir = setup_py._find_nvcc(), setup_py._pybind11_cmake_dir()
    env = {k: v for k, v in os.environ.items() if k != "VDSR_FAST_CUDA_ARCHS"}
    if env_archs is not None:
        env["VDSR_FAST_CUDA_ARCHS"] = env_archs
    build = tmp_path / "build"
    r = subprocess.run(["cmake", "-S", str(ROOT), "-B", str(build), "-G", "Unix Makefiles", f"-DCMAKE_CUDA_COMPILER={nvcc}",
                        f"-DPython_EXECUTABLE={sys.executable}", f"-Dpybind11_DIR={pybind11_dir}", *args],
                       capture_output=True, text=True, env=env)  # fmt: skip
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    target = build / "CMakeFiles" / "_C.dir"
    return (target / "flags.make").read_text(), (target / "link.txt").read_text()


@unix_only
@pytest.mark.parametrize(
    "args, env_archs, archs",
    [([], None, "80;90a"), (["-DVDSR_FAST_CUDA_ARCHS="], "90", "90"), (["-DVDSR_FAST_CUDA_ARCHS=80;90a"], "90", "80;90a")],
    ids=["default", "environment", "cache-over-environment"],
)
def test_cmake_used_directly_builds_for_the_documented_archs(setup_py, tmp_path, args, env_archs, archs):
    """CMakeLists.txt without setup.py (its header's command): sm_80 + sm_90a by default, else the environment
    variable when the cache variable is unset or empty, the cache variable first; Release when no build type is
    given; the CUDA runtime linked statically; the arch list reaches nvcc (SASS and PTX for each), the module's
    CUDA_ARCHS string, and the wgmma kernels' switch only with 90a (plain sm_90 code has no wgmma). Not pinned:
    the visibility preset (pybind11_add_module sets it too) and CMAKE_CUDA_ARCHITECTURES (the target's list wins)."""
    flags, link = _configure(setup_py, tmp_path, args, env_archs)
    assert "cudart_static" in link and not re.search(r"-lcudart\s|-lcudart$|libcudart\.so", link)
    cuda_flags = re.search(r"^CUDA_FLAGS = (.*)$", flags, re.M).group(1).split()
    assert "-O3" in cuda_flags and "-DNDEBUG" in cuda_flags
    for arch in archs.split(";"):
        assert f"--generate-code=arch=compute_{arch},code=[compute_{arch},sm_{arch}]" in cuda_flags
    assert len([f for f in cuda_flags if f.startswith("--generate-code")]) == len(archs.split(";"))
    assert "-Xptxas=-warn-spills" in cuda_flags and "-Xcompiler=-fvisibility=hidden" in cuda_flags
    defines = re.search(r"^CUDA_DEFINES = (.*)$", flags, re.M).group(1)
    assert f'-DVDSR_FAST_CUDA_ARCHS=\\"{archs.replace(";", ",")}\\"' in defines
    assert ("-DVDSR_FAST_SM90A=1" in defines) == ("90a" in archs)


def test_module_holds_code_for_exactly_the_archs_it_names():
    """The built module's CUDA_ARCHS (what availability reasons quote) matches the images inside it: SASS for
    every listed arch, PTX too unless the entry says -real (so a plain "80" build JIT-compiles on newer GPUs),
    and no other arch; the CUDA runtime is linked statically (no libcudart.so needed at run time)."""
    _C, tool = _module_and_cuobjdump()
    if _C.CUDA_ARCHS in ("", "native", "all", "all-major"):
        pytest.skip(f"built for {_C.CUDA_ARCHS!r}: no fixed list to compare with")

    def listed(flag: str, ext: str) -> set[str]:
        out = subprocess.run([tool, flag, _C.__file__], capture_output=True, text=True, check=True).stdout
        return set(re.findall(rf"\.sm_(\d+a?)\.{ext}$", out, re.M))

    entries = [e.partition("-")[::2] for e in _C.CUDA_ARCHS.split(",")]  # (arch, "real" / "virtual" / "")
    # cuobjdump names an sm_90a cubin sm_90 (its PTX keeps the a)
    assert listed("--list-elf", "cubin") == {a.rstrip("a") for a, kind in entries if kind != "virtual"}
    assert listed("--list-ptx", "ptx") == {a for a, kind in entries if kind != "real"}
    if shutil.which("readelf"):
        needed = subprocess.run(["readelf", "-d", _C.__file__], capture_output=True, text=True, check=True).stdout
        assert "libcudart" not in needed


@unix_only
def test_a_tree_without_the_cuda_sources_fails_naming_them(setup_py, monkeypatch, tmp_path):
    """An sdist without CMakeLists.txt and csrc/ (there was no MANIFEST.in) failed in CMake, with a message that named
    other causes: now the missing files, before CMake runs."""
    bin_dir = tmp_path / "bin"
    _fake_nvcc(bin_dir, "13.0")
    _script(bin_dir / "cmake", f": > {tmp_path / 'cmake_ran'}\n")
    monkeypatch.setenv("PATH", str(bin_dir))
    monkeypatch.setattr(setup_py, "ROOT", tmp_path / "unpacked")
    cmd, ext = _build_ext(setup_py, tmp_path)
    with pytest.raises(setup_py.SetupError, match="CMakeLists.txt or csrc/ is missing from .*unpacked"):
        cmd.build_extension(ext)
    assert not (tmp_path / "cmake_ran").exists()


def test_the_sdist_holds_what_building_and_testing_need(tmp_path):
    """python -m build makes the wheel from the sdist: without CMakeLists.txt and csrc/ it failed wherever nvcc is
    found (and made a wheel without the extension elsewhere), and its tests could not import their helpers."""
    import tarfile

    tracked = subprocess.run(["git", "-C", str(ROOT), "ls-files"], capture_output=True, text=True)
    if tracked.returncode != 0:
        pytest.skip("not a git checkout: the tracked files are not known")
    tree = tmp_path / "tree"
    for name in tracked.stdout.splitlines():
        if (ROOT / name).is_file() and not name.startswith("benchmarks/results/"):
            (tree / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, tree / name)
    env = {**os.environ, "VDSR_FAST_SKIP_CUDA_BUILD": "1"}
    r = subprocess.run([sys.executable, "setup.py", "-q", "sdist", "-d", str(tmp_path / "dist")], cwd=tree,
                       capture_output=True, text=True, env=env)  # fmt: skip
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    (sdist,) = (tmp_path / "dist").glob("vdsr_fast-*.tar.gz")
    with tarfile.open(sdist) as t:
        names = {n.split("/", 1)[1] for n in t.getnames() if "/" in n}
    needed = {"CMakeLists.txt", "setup.py", "pyproject.toml", "MANIFEST.in", "csrc/bindings.cpp", "csrc/vdsr_kernels.h",
              "csrc/conv3x3_body.cu", "csrc/wgmma_body.cuh", "vdsr_fast/weights/vdsr_x234.safetensors", "tests/conftest.py",
              "tests/equivalence.py", "tests/legacy_writer.py", "benchmarks/bench_video.py", "docs/VIDEO.md"}  # fmt: skip
    assert not needed - names, sorted(needed - names)
    assert not any(n.startswith(("benchmarks/results/", "build/")) for n in names)
