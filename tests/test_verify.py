"""``vdsr-fast verify``: passes the real kernels, and fails each way a kernel can be wrong.

On the CPU the Triton kernels run in Triton's interpreter (conftest sets TRITON_INTERPRET=1), on small models and
inputs; on a GPU the CUDA and Triton backends with the shipped weights.
"""

import json

import pytest
import torch
from equivalence import triton_device

from vdsr_fast.engine import _backend_class
from vdsr_fast.verify import main, random_vdsr, shape_arg, verify

SMALL = dict(models=None, shapes=[(2, 9, 12)], dtypes=[torch.float32, torch.float16], seed=3)


@pytest.fixture
def small(tiny_model):
    device = triton_device(torch.float16)
    return dict(SMALL, models={"random": random_vdsr(depth=4, channels=8, seed=2)}, device=device)


def _statuses(r):
    return {(row.backend, row.dtype): row.status for row in r["rows"]}


def test_the_triton_kernels_pass(small):
    seen = []
    r = verify(**small, backends=["triton"], report=seen.append)
    assert r["ok"] and seen == r["rows"]
    assert _statuses(r) == {("torch", "fp32"): "reference", ("triton", "fp32"): "ok", ("triton", "fp16"): "ok"}
    fast = [row for row in r["rows"] if row.backend == "triton"]
    assert all(0 < row.err <= row.bound for row in fast)  # a real error, inside the rule


def _patched(monkeypatch, change):
    """The Triton backend with its output changed by ``change(out, call_number)``."""
    cls = _backend_class("triton")
    orig, calls = cls.__call__, []

    def call(self, y):
        calls.append(1)
        return change(orig(self, y), len(calls))

    monkeypatch.setattr(cls, "__call__", call)


def _bump(out, k):
    out[0, 0, -1, -2] += 0.01  # one pixel off by 1/100: far beyond fp16's bound, as an indexing bug would be
    return out


def _unwritten(out, k):
    out = out.clone()
    out[..., -1, :] = float("nan")  # what a poisoned output holds where a kernel never wrote
    return out


def _drifting(out, k):
    return out + 1e-7 * k  # inside the bound, but not the same bits twice


@pytest.mark.parametrize("change, why", [(_bump, "max error"), (_unwritten, "NaN/Inf outputs"),
                                         (_drifting, "gave other bits")], ids=["wrong", "unwritten", "nondeterministic"])  # fmt: skip
def test_each_kind_of_wrong_kernel_fails(small, monkeypatch, change, why):
    _patched(monkeypatch, change)
    r = verify(**dict(small, dtypes=[torch.float16]), backends=["triton"])
    assert not r["ok"]
    status = _statuses(r)[("triton", "fp16")]
    assert status.startswith("FAIL") and why in status, status


def test_cli_table_json_and_exit_status(monkeypatch, capsys):
    triton_device(torch.float16)
    argv = ["--sizes", "5x4", "--dtype", "fp16", "--seed", "11", "--backend", "triton"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "shipped  triton  fp16           5x4" in out and "random   triton  fp16" in out
    assert "all 2 fast-backend checks passed on" in out and "--seed 11 repeats it" in out
    assert main([*argv, "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["ok"] and r["seed"] == 11 and [row["status"] for row in r["rows"]].count("ok") == 2
    _patched(monkeypatch, _bump)
    assert main(argv) == 1
    assert "2 check(s) FAILED" in capsys.readouterr().out


def test_sizes_argument():
    assert shape_arg("38x45") == (1, 45, 38) and shape_arg("70x33:3") == (3, 33, 70) and shape_arg("1080p") == (1, 1080, 1920)
    for bad in ("38", "0x4", "4k:0", "38x45:"):
        with pytest.raises(Exception, match="expected WIDTHxHEIGHT"):
            shape_arg(bad)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_every_fast_backend_passes_on_this_gpu():
    """The command a user runs on their own GPU: the shipped and random weights, every backend and dtype built."""
    r = verify(shapes=[(1, 45, 38), (3, 33, 70), (1, 720, 1280)])
    failed = [row for row in r["rows"] if row.status.startswith("FAIL")]
    assert r["ok"], failed
    checked = {(row.backend, row.dtype) for row in r["rows"] if row.status == "ok"}
    assert {("triton", "fp16"), ("triton", "bf16"), ("triton", "fp32")} <= checked
    assert "cuda" in r["unavailable"] or {("cuda", "fp16"), ("cuda", "bf16")} <= checked
