"""Weight formats: safetensors round trip, state_dict layouts, the port's pickled checkpoints (zip,
legacy, and Python 2 / PyTorch 0.3 style), and refusal of everything malformed or unsafe."""

import io
import json
import os
import pickle
import struct
import subprocess
import sys
import time
import types
import zipfile
import zlib
from collections import Counter, OrderedDict

import numpy as np
import pytest
import torch
from legacy_writer import Global, ModuleObj, Storage, View, legacy_bytes, port_checkpoint_bytes, rebuild_tensor
from safetensors.torch import save_file
from torch import nn

import vdsr_fast
from vdsr_fast import VDSR, WeightsError
from vdsr_fast.torch_pickle import (
    LEGACY_MAGIC,
    CheckpointFormatError,
    check_pickle,
    check_zip,
    read_checkpoint,
    torch_load_walked,
)
from vdsr_fast.weights import from_state_dict


def _same_model(a: VDSR, b: VDSR) -> None:
    assert (a.depth, a.channels) == (b.depth, b.channels)
    for ca, cb in zip(a.layers, b.layers):
        assert torch.equal(ca.weight, cb.weight)
        assert torch.equal(ca.bias, cb.bias)


def _random_model(depth=5, channels=8) -> VDSR:
    m = VDSR(depth, channels)
    with torch.no_grad():
        for conv in m.layers:
            conv.bias.normal_(0, 0.1)
    return m


# ---------------------------------------------------------------- safetensors


def test_safetensors_round_trip_with_metadata(tmp_path):
    m = _random_model()
    path = vdsr_fast.save(m, tmp_path / "w.safetensors", metadata={"scales": [2, 3, 4], "note": "hello"})
    back = vdsr_fast.load(path)
    _same_model(m, back)
    assert back.metadata["scales"] == "[2, 3, 4]"
    assert back.metadata["note"] == "hello"
    assert back.metadata["arch"] == "vdsr" and back.metadata["depth"] == "5" and back.metadata["channels"] == "8"
    assert not list(tmp_path.glob(".*tmp"))  # no temporary left behind


def test_depth_and_width_come_from_the_file(tmp_path):
    m = _random_model(depth=7, channels=16)
    back = vdsr_fast.load(vdsr_fast.save(m, tmp_path / "w.safetensors"))
    assert (back.depth, back.channels) == (7, 16)
    x = torch.rand(1, 1, 9, 11)
    torch.testing.assert_close(back(x), m(x), rtol=0, atol=0)


def test_save_names_a_missing_directory_and_a_bad_metadata_key(tmp_path):
    m = _random_model()
    with pytest.raises(FileNotFoundError, match=f"directory {tmp_path / 'no' / 'dir'} does not exist"):
        vdsr_fast.save(m, tmp_path / "no" / "dir" / "w.safetensors")
    with pytest.raises(TypeError, match="metadata key 'a'"):
        vdsr_fast.save(m, tmp_path / "w.safetensors", metadata={"ok": 1, "a": object()})
    assert list(tmp_path.iterdir()) == []


def test_save_refuses_nan(tmp_path):
    m = _random_model()
    with torch.no_grad():
        m.layers[2].weight[0, 0, 0, 0] = float("nan")
    with pytest.raises(WeightsError, match="layers.2.weight"):
        vdsr_fast.save(m, tmp_path / "w.safetensors")
    assert not (tmp_path / "w.safetensors").exists()


# ---------------------------------------------------------------- state_dict layouts


def _port_state_dict(m: VDSR, with_bias: bool) -> dict:
    sd = OrderedDict()
    n = m.depth
    names = ["input"] + [f"residual_layer.{i}.conv" for i in range(n - 2)] + ["output"]
    for name, conv in zip(names, m.layers):
        sd[f"{name}.weight"] = conv.weight.detach().clone()
        if with_bias:
            sd[f"{name}.bias"] = conv.bias.detach().clone()
    return sd


def _sequential_state_dict(m: VDSR, prefix="") -> dict:
    seq = nn.Sequential()
    for i, conv in enumerate(m.layers):
        seq.append(conv)
        if i < m.depth - 1:
            seq.append(nn.ReLU())
    return {prefix + k: v for k, v in seq.state_dict().items()}


@pytest.mark.parametrize(
    "layout",
    ["ours", "port_bias", "sequential", "sequential_prefixed", "dataparallel", "wrapped", "compiled"],
)
def test_state_dict_layouts_via_torch_save(tmp_path, layout):
    m = _random_model()
    sd = {
        "ours": lambda: m.state_dict(),
        "port_bias": lambda: _port_state_dict(m, True),
        "sequential": lambda: _sequential_state_dict(m),
        "sequential_prefixed": lambda: _sequential_state_dict(m, "body."),
        "dataparallel": lambda: {"module." + k: v for k, v in _port_state_dict(m, True).items()},
        "wrapped": lambda: {"state_dict": m.state_dict(), "epoch": 3},
        "compiled": lambda: {"_orig_mod." + k: v for k, v in m.state_dict().items()},
    }[layout]()
    torch.save(sd, tmp_path / "w.pth")
    _same_model(m, vdsr_fast.load(tmp_path / "w.pth"))


def test_basicsr_checkpoint_with_an_ema_loads_the_networks_own_weights():
    """BasicSR saves {"params": weights, "params_ema": their moving average} when it keeps an EMA: both keys are in
    the wrapper list, so the file was refused as 'unexpected key params'. It loads its "params" (BasicSR's
    load_network default, and what a vdsr-fast train checkpoint gives: "model", not "ema"); either alone loads too."""
    m, avg = _random_model(), _random_model()
    _same_model(m, from_state_dict({"params": m.state_dict(), "params_ema": avg.state_dict(), "iter": 1000}))
    _same_model(avg, from_state_dict({"params_ema": avg.state_dict()}))
    _same_model(m, from_state_dict({"params": m.state_dict()}))


def test_sequential_layers_are_ordered_by_number_not_by_text():
    """nn.Sequential keys of a deeper model run past 9 ('0.weight', '2.weight', ..., '10.weight', '12.weight'): the
    layers keep their numeric order (as text, '10' would sort before '2')."""
    m = _random_model(depth=7)
    _same_model(m, from_state_dict(_sequential_state_dict(m)))


def test_save_writes_float32_whatever_the_models_dtype(tmp_path):
    """save() writes float32 tensors (the documented format) also for a float64 model, with its values rounded to
    float32."""
    from safetensors import safe_open

    m = _random_model().double()
    path = vdsr_fast.save(m, tmp_path / "w.safetensors")
    with safe_open(str(path), framework="pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float32}
    _same_model(m.float(), vdsr_fast.load(path))


def test_port_layout_without_biases_means_zero_bias():
    m = _random_model()
    back = from_state_dict(_port_state_dict(m, with_bias=False))
    for ca, cb in zip(m.layers, back.layers):
        assert torch.equal(ca.weight, cb.weight)
        assert torch.count_nonzero(cb.bias) == 0
    assert back.metadata["biases"].startswith("none")


def test_half_precision_state_dict_is_widened():
    m = _random_model()
    sd = {k: v.half() for k, v in m.state_dict().items()}
    back = from_state_dict(sd)
    assert back.layers[0].weight.dtype == torch.float32
    torch.testing.assert_close(back.layers[0].weight, m.layers[0].weight, atol=1e-3, rtol=1e-3)


# ---------------------------------------------------------------- the port's pickled model objects


def _install_fake_port_module():
    """The port's ``vdsr.py`` (Net, Conv_ReLU_Block) as an importable module, for torch.save."""
    mod = types.ModuleType("vdsr")

    class Conv_ReLU_Block(nn.Module):  # noqa: N801 - the port's name
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(64, 64, 3, 1, 1, bias=False)
            self.relu = nn.ReLU(inplace=True)

        def forward(self, x):
            return self.relu(self.conv(x))

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.residual_layer = nn.Sequential(*[Conv_ReLU_Block() for _ in range(18)])
            self.input = nn.Conv2d(1, 64, 3, 1, 1, bias=False)
            self.output = nn.Conv2d(64, 1, 3, 1, 1, bias=False)
            self.relu = nn.ReLU(inplace=True)

        def forward(self, x):
            out = self.relu(self.input(x))
            out = self.residual_layer(out)
            return self.output(out) + x

    for cls in (Conv_ReLU_Block, Net):
        cls.__module__ = "vdsr"
        cls.__qualname__ = cls.__name__
        setattr(mod, cls.__name__, cls)
    sys.modules["vdsr"] = mod
    return mod


@pytest.mark.filterwarnings("ignore:Couldn't retrieve source code")
@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_port_checkpoint_saved_by_modern_torch(tmp_path, zip_format):
    mod = _install_fake_port_module()
    try:
        net = mod.Net().eval()
        path = tmp_path / "model_epoch_50.pth"
        torch.save({"epoch": 50, "model": net}, path, _use_new_zipfile_serialization=zip_format)
    finally:
        del sys.modules["vdsr"]
    m = vdsr_fast.load(path)
    assert (m.depth, m.channels) == (20, 64)
    assert m.metadata["epoch"] == "50"
    x = torch.rand(1, 1, 12, 13)
    torch.testing.assert_close(m(x), net(x), rtol=1e-5, atol=1e-5)


def test_port_checkpoint_python2_pytorch03_legacy(tmp_path):
    rng = np.random.default_rng(1)
    ws = [rng.normal(0, 0.05, (64, 1, 3, 3))] + [rng.normal(0, 0.05, (64, 64, 3, 3)) for _ in range(18)]
    ws.append(rng.normal(0, 0.05, (1, 64, 3, 3)))
    path = tmp_path / "model_epoch_50.pth"
    path.write_bytes(port_checkpoint_bytes(ws, epoch=50))
    m = vdsr_fast.load(path)
    assert (m.depth, m.channels) == (20, 64) and m.metadata["epoch"] == "50"
    for w, conv in zip(ws, m.layers):
        np.testing.assert_array_equal(conv.weight.numpy(), w.astype(np.float32))
        assert torch.count_nonzero(conv.bias) == 0


def test_port_checkpoint_from_a_big_endian_machine(tmp_path):
    """A legacy file states its byte order in the system info: a big-endian machine's counts and values are
    byteswapped (read as little-endian they would be absurd counts and garbage weights)."""
    rng = np.random.default_rng(2)
    ws = [rng.normal(0, 0.05, (8, 1, 3, 3)), rng.normal(0, 0.05, (8, 8, 3, 3)), rng.normal(0, 0.05, (1, 8, 3, 3))]
    path = tmp_path / "model_epoch_7.pth"
    path.write_bytes(port_checkpoint_bytes(ws, epoch=7, little_endian=False))
    m = vdsr_fast.load(path)
    assert (m.depth, m.channels) == (3, 8) and m.metadata["epoch"] == "7"
    for w, conv in zip(ws, m.layers):
        np.testing.assert_array_equal(conv.weight.numpy(), w.astype(np.float32))


@pytest.mark.filterwarnings("ignore:Couldn't retrieve source code")
@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16], ids=str)
def test_port_checkpoint_of_another_dtype_is_widened(tmp_path, zip_format, dtype):
    """The restricted reader maps each storage type to its dtype (and element size): a port checkpoint saved in
    double or half precision loads as the same values in float32 (read with another dtype, the bytes would be
    other numbers, or a count that does not match the storage)."""
    mod = _install_fake_port_module()
    try:
        net = mod.Net().to(dtype)
        path = tmp_path / "model_epoch_5.pth"
        torch.save({"epoch": 5, "model": net}, path, _use_new_zipfile_serialization=zip_format)
    finally:
        del sys.modules["vdsr"]
    m = vdsr_fast.load(path)
    assert (m.depth, m.channels) == (20, 64)
    convs = [net.input] + [block.conv for block in net.residual_layer] + [net.output]
    for conv, loaded in zip(convs, m.layers):
        assert loaded.weight.dtype == torch.float32 and torch.equal(loaded.weight, conv.weight.detach().float())


def test_legacy_storage_views_are_their_slice_of_the_storage():
    """PyTorch <= 0.3 pickled a storage view as (view key, offset, size) of a base storage, and a tensor's offset
    counts from the view's start. The reader built the view as a slice and then as_strided from it, whose offset
    counts from the base storage's start: the view's offset was lost (here [[1, 3], [2, 4]] instead of
    [[5, 7], [6, 8]]). A tensor may not reach past the view's end, nor a view past its storage's."""
    base = Storage("1", np.arange(12, dtype=np.float32))
    view = View(base, "2", 4, 6)
    obj = {"w": rebuild_tensor(view, 1, (2, 2), (1, 2)), "whole": rebuild_tensor(base, 0, (12,), (1,))}
    out = read_checkpoint(legacy_bytes(obj))
    assert torch.equal(out["w"], torch.tensor([[5.0, 7.0], [6.0, 8.0]])) and torch.equal(out["whole"], torch.arange(12.0))
    with pytest.raises(CheckpointFormatError, match="reaches element 6 of a storage of 6"):
        read_checkpoint(legacy_bytes({"w": rebuild_tensor(view, 1, (6,), (1,))}))
    with pytest.raises(CheckpointFormatError, match="a storage view of 6 elements at 10 lies outside its storage of 12"):
        read_checkpoint(legacy_bytes({"w": rebuild_tensor(View(base, "2", 10, 6), 0, (2,), (1,))}))


# ---------------------------------------------------------------- refusals


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("container", ["zip", "legacy", "raw_pickle"])
def test_malicious_pickle_is_refused_without_running(tmp_path, container):
    marker = tmp_path / "pwned"
    payload = {"epoch": 1, "model": _Evil(marker)}
    path = tmp_path / "evil.pth"
    if container == "raw_pickle":
        path.write_bytes(pickle.dumps(payload, protocol=2))
    else:
        torch.save(payload, path, _use_new_zipfile_serialization=container == "zip")
    with pytest.raises(WeightsError, match=r"refusing to load.*system"):
        vdsr_fast.load(path)
    assert not marker.exists()


def test_foreign_global_inside_a_port_checkpoint_is_refused(tmp_path):
    rng = np.random.default_rng(0)
    ws = [rng.normal(size=(64, 1, 3, 3))] + [rng.normal(size=(64, 64, 3, 3))] * 2 + [rng.normal(size=(1, 64, 3, 3))]
    path = tmp_path / "evil_legacy.pth"
    path.write_bytes(port_checkpoint_bytes(ws, extra_global=Global("posix", "system")))
    with pytest.raises(WeightsError, match="posix.system"):
        vdsr_fast.load(path)


class _Calls:
    """Pickles as ``func(*args)`` (a global and a REDUCE), as a malicious checkpoint would."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


@pytest.mark.parametrize("protocol, func, name", [
    (4, exec, "builtins.exec"),
    (2, eval, "__builtin__.eval"),  # as Python 2 named the builtins
    (4, torch.storage._load_from_bytes, "torch.storage._load_from_bytes"),  # torch.load(weights_only=False) of bytes
])  # fmt: skip
def test_globals_of_allowed_modules_are_refused_too(tmp_path, protocol, func, name):
    """The allow-list holds names, not modules: ``builtins.set`` and torch's rebuild functions are allowed, yet
    another global of the same module (``builtins.exec``, or ``torch.storage._load_from_bytes``, which unpickles
    a nested file with code allowed) is refused, and nothing runs."""
    marker = tmp_path / "pwned"
    code = f"open({str(marker)!r}, 'w').close()"
    if func is torch.storage._load_from_bytes:
        inner = io.BytesIO()
        torch.save(_Evil(marker), inner)
        args = (inner.getvalue(),)
    else:
        args = (code,)
    path = tmp_path / "evil.pth"
    path.write_bytes(pickle.dumps({"model": _Calls(func, *args)}, protocol=protocol))
    with pytest.raises(WeightsError, match=f"refusing to load: the checkpoint references '{name}'"):
        vdsr_fast.load(path)
    assert not marker.exists()


def _valid_sd(m=None):
    return (m or _random_model()).state_dict()


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda sd: sd.__setitem__("layers.2.weight", torch.zeros(8, 8, 5, 5)), r"'layers.2.weight' has shape \(8, 8, 5, 5\); expected \(8, 8, 3, 3\)"),
        (lambda sd: sd.__setitem__("layers.4.bias", torch.zeros(2)), r"'layers.4.bias' has shape \(2,\); expected \(1,\)"),
        (lambda sd: sd["layers.1.weight"].__setitem__((0, 0, 0, 0), float("nan")), "'layers.1.weight' contains NaN"),
        (lambda sd: sd["layers.3.bias"].__setitem__(0, float("inf")), "'layers.3.bias' contains NaN or Inf"),
        (lambda sd: sd.pop("layers.2.weight"), "missing key 'layers.2.weight'"),
        (lambda sd: sd.__setitem__("extra.thing", torch.zeros(1)), "unexpected key 'extra.thing'"),
        (lambda sd: sd.__setitem__("layers.0.weight", torch.zeros(8, 1, 3, 3, dtype=torch.int32)), "dtype torch.int32"),
        (lambda sd: sd.pop("layers.3.bias"), r"missing key 'layers.3.bias' \(other layers have biases\)"),
        (lambda sd: sd.__setitem__("layers.3.bias", torch.zeros(8).to_sparse()), "'layers.3.bias' has layout torch.sparse_coo"),
        (lambda sd: sd.__setitem__("layers.3.bias", torch.empty(8, device="meta")), "'layers.3.bias' is a meta tensor"),
        (lambda sd: sd.__setitem__("layers.2.weight", torch.zeros(1).expand(8, 8, 3, 3)), "'layers.2.weight' has 576 elements but its storage only 4 bytes"),
    ],
    ids=["shape", "bias_shape", "nan", "inf", "missing_layer", "extra_key", "int_dtype", "partial_biases", "sparse", "meta", "expanded"],
)
def test_bad_state_dicts_name_the_key(tmp_path, mutate, message):
    sd = _valid_sd()
    mutate(sd)
    with pytest.raises(WeightsError, match=message):
        from_state_dict(sd)
    # the same through a file
    torch.save(sd, tmp_path / "bad.pth")
    with pytest.raises(WeightsError, match=message):
        vdsr_fast.load(tmp_path / "bad.pth")


def test_partially_missing_port_biases_are_named(tmp_path):
    """Zero biases are for a file with none at all; some missing is a broken file, named, never zero-filled."""
    sd = _port_state_dict(_random_model(), with_bias=True)
    del sd["input.bias"], sd["residual_layer.1.conv.bias"]
    with pytest.raises(WeightsError, match=r"missing keys 'input.bias', 'residual_layer.1.conv.bias'"):
        from_state_dict(sd)
    sd = {k: v for k, v in _valid_sd().items() if k != "layers.4.bias"}
    save_file(sd, tmp_path / "w.safetensors")
    with pytest.raises(WeightsError, match="missing key 'layers.4.bias'"):
        vdsr_fast.load(tmp_path / "w.safetensors")


@pytest.mark.parametrize("fmt", ["safetensors", "pth"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float8_e4m3fn, torch.float8_e5m2], ids=str)
def test_low_precision_files_are_widened(tmp_path, dtype, fmt):
    m = _random_model()
    sd = {k: v.to(dtype) for k, v in m.state_dict().items()}
    path = tmp_path / f"w.{fmt}"
    save_file(sd, path) if fmt == "safetensors" else torch.save(sd, path)
    back = vdsr_fast.load(path)
    for k, v in back.state_dict().items():
        assert v.dtype == torch.float32 and torch.equal(v, sd[k].float()), k
    sd["layers.1.weight"][0, 0, 0, 0] = float("nan")
    save_file(sd, path) if fmt == "safetensors" else torch.save(sd, path)
    with pytest.raises(WeightsError, match="'layers.1.weight' contains NaN"):
        vdsr_fast.load(path)


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_expanded_tensors_are_refused_before_allocation(tmp_path, zip_format):
    """A few hundred bytes declaring terabytes (stride-0 tensors) are refused by size, never allocated."""
    huge = torch.zeros(1).expand(10**6, 10**6)
    path = tmp_path / "bomb.pth"
    torch.save({"layers.0.weight": huge, "layers.1.weight": huge}, path, _use_new_zipfile_serialization=zip_format)
    assert path.stat().st_size < 2000
    with pytest.raises(WeightsError, match=r"shape \(1000000, 1000000\)|1000000000000 elements"):
        vdsr_fast.load(path)
    # the right shapes, for a channel count the file does not hold: refused too
    c = 4096
    sd = {"layers.0.weight": torch.zeros(c, 1, 3, 3), "layers.1.weight": torch.zeros(1).expand(c, c, 3, 3),
          "layers.2.weight": torch.zeros(1, c, 3, 3)}
    torch.save(sd, path, _use_new_zipfile_serialization=zip_format)
    with pytest.raises(WeightsError, match="150994944 elements but its storage only"):
        vdsr_fast.load(path)


def test_every_key_is_checked_before_the_model_is_built(monkeypatch):
    """A head declaring many channels must not allocate a C x C body before the body's key is found wrong."""
    built = []
    monkeypatch.setattr(vdsr_fast.weights, "VDSR", lambda *a, **k: built.append(k) or VDSR(*a, **k))
    sd = {"layers.0.weight": torch.zeros(4096, 1, 3, 3), "layers.1.weight": torch.zeros(3), "layers.2.weight": torch.zeros(1, 4096, 3, 3)}
    with pytest.raises(WeightsError, match=r"'layers.1.weight' has shape \(3,\)"):
        from_state_dict(sd)
    assert built == []


def test_missing_port_layer_is_named():
    sd = _port_state_dict(_random_model(), with_bias=False)
    del sd["residual_layer.1.conv.weight"]
    with pytest.raises(WeightsError, match="missing key 'residual_layer.1.conv.weight'"):
        from_state_dict(sd)


def _truncated(data: bytes) -> bytes:
    return data[: len(data) // 2]


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: b"", "empty"),
        (lambda p: b"\x00\x01 not a weights file at all", "unrecognised file format"),
        (lambda p: _truncated(p["safetensors"]), "not a valid safetensors"),
        (lambda p: _truncated(p["zip"]), "not a readable torch.save checkpoint|corrupt"),
        (lambda p: _truncated(p["legacy"]), "truncated|corrupt"),
        (lambda p: p["notckpt"], "not a readable torch.save checkpoint|not a torch.save checkpoint"),
    ],
    ids=["zero_bytes", "wrong_magic", "truncated_safetensors", "truncated_zip", "truncated_legacy", "zip_not_checkpoint"],
)
def test_corrupt_files_are_refused(tmp_path, make, message):
    m = _random_model()
    files = {}
    vdsr_fast.save(m, tmp_path / "a.safetensors")
    files["safetensors"] = (tmp_path / "a.safetensors").read_bytes()
    buf = io.BytesIO()
    torch.save(m.state_dict(), buf)
    files["zip"] = buf.getvalue()
    buf = io.BytesIO()
    torch.save(m.state_dict(), buf, _use_new_zipfile_serialization=False)
    files["legacy"] = buf.getvalue()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("readme.txt", "just a zip")
    files["notckpt"] = buf.getvalue()
    target = tmp_path / "bad.bin"
    target.write_bytes(make(files))
    with pytest.raises(WeightsError, match=message):
        vdsr_fast.load(target)


def test_legacy_storage_size_lie_is_caught(tmp_path):
    """A legacy file announcing more elements than it holds is refused before allocation."""
    ws = [np.ones((8, 1, 3, 3)), np.ones((8, 8, 3, 3)), np.ones((1, 8, 3, 3))]
    data = bytearray(port_checkpoint_bytes(ws))
    # the first storage's int64 count sits right after the pickles; overwrite it with a huge value
    first = data.find(struct.pack("<q", 72))
    data[first : first + 8] = struct.pack("<q", 1 << 40)
    (tmp_path / "lie.pth").write_bytes(bytes(data))
    with pytest.raises(WeightsError, match="truncated"):
        vdsr_fast.load(tmp_path / "lie.pth")


@pytest.mark.parametrize("count, cut, message", [
    (-1, 0, r"truncated in storage '94999' \(-1 elements announced\)"),
    (72, 4, r"truncated in storage '94999' \(72 elements announced\)"),
])  # fmt: skip
def test_legacy_storage_counts_are_checked_against_the_bytes_left(tmp_path, count, cut, message):
    """A storage's count is checked against the bytes left after it, and a negative one refused: a count of -1
    took every byte left as the last storage (f.read(-4) reads to the end), and a file cut short inside its last
    storage is named truncated (not an oversized tensor) before its bytes are read."""
    ws = [np.ones((8, 1, 3, 3)), np.ones((8, 8, 3, 3)), np.ones((1, 8, 3, 3))]
    data = bytearray(port_checkpoint_bytes(ws))
    last = data.rfind(struct.pack("<q", 72))  # the last storage (key 94999, the output layer) holds 72 values
    data[last : last + 8] = struct.pack("<q", count)
    (tmp_path / "bad.pth").write_bytes(bytes(data[: len(data) - cut]))
    with pytest.raises(WeightsError, match=message):
        vdsr_fast.load(tmp_path / "bad.pth")


@pytest.mark.parametrize("changes, message", [
    ({"magic": 0x1950A86A}, "wrong magic number"),
    ({"magic": 1 << 1100}, "an integer of 1101 bits"),  # wider than any checkpoint's: check_pickle's
    ({"version": 1000}, "unsupported legacy torch.save protocol version 1000"),
    ({"keys": ["1", "2"]}, "storage '2' is listed but never used"),
])  # fmt: skip
def test_legacy_headers_are_checked(changes, message):
    """A legacy file's magic number, protocol version and storage key list are checked: a file that is not one, or
    one whose storages would be read at the wrong places, is refused (each was read as if it were one)."""
    obj = {"w": rebuild_tensor(Storage("1", np.arange(4, dtype=np.float32)), 0, (4,), (1,))}
    assert torch.equal(read_checkpoint(legacy_bytes(obj))["w"], torch.arange(4.0))
    with pytest.raises(CheckpointFormatError, match=message):
        read_checkpoint(legacy_bytes(obj, **changes))


def test_module_persistent_ids_name_module_classes_only():
    """A legacy ('module', class, file, source) id stands for a pickled nn.Module: a class of the allow-list that is
    not one of the module classes (here OrderedDict) is refused there, not built as the model."""
    with pytest.raises(CheckpointFormatError, match="unexpected persistent id"):
        read_checkpoint(legacy_bytes({"model": ModuleObj("collections", "OrderedDict", {})}))


@pytest.mark.parametrize("offset, size, stride, message", [
    (-1, (4,), (1,), "malformed tensor header"),  # before the storage
    (5, (3,), (-1,), "malformed tensor header"),  # a negative stride
    (0, (2, 3), (3,), "malformed tensor header"),  # fewer strides than dimensions
    (1, (6,), (1,), "reaches element 6 of a storage of 6"),  # one element past the end
    (0, (2, 3), (3, 2), "reaches element 7 of a storage of 6"),  # strides that overrun
])  # fmt: skip
def test_tensor_headers_outside_their_storage_are_refused(offset, size, stride, message):
    """A tensor's (offset, size, stride) is checked against its storage before it is built: each of these was
    torch's RuntimeError from as_strided (not a CheckpointFormatError, so load() raised it past WeightsError), or
    would read memory outside the storage."""
    storage = Storage("1", np.arange(6, dtype=np.float32))
    data = legacy_bytes({"layers.0.weight": rebuild_tensor(storage, offset, size, stride)})
    with pytest.raises(CheckpointFormatError, match=message):
        read_checkpoint(data)
    transposed = read_checkpoint(legacy_bytes({"t": rebuild_tensor(storage, 0, (3, 2), (1, 3))}))["t"]
    assert torch.equal(transposed, torch.arange(6.0).reshape(2, 3).t())  # a valid strided tensor is read as such


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        vdsr_fast.load("/nonexistent/weights.safetensors")
    with pytest.raises(WeightsError, match=f"{tmp_path}: not a regular file"):  # a folder is no weights file
        vdsr_fast.load(tmp_path)
    with pytest.raises(FileNotFoundError, match="weights file not found: /nonexistent/w.pth"):  # bytes: a path
        vdsr_fast.load(b"/nonexistent/w.pth")


# ---------------------------------------------------------------- containers, layouts and metadata at their edges


def test_wrappers_nest_and_both_prefixes_are_undone():
    """A checkpoint may wrap its state_dict more than once ({"net": {"model": {"state_dict": ...}}}, beside other
    entries), and DataParallel around a compiled model gives 'module._orig_mod.' keys: all of it is undone."""
    m = _random_model()
    sd = m.state_dict()
    _same_model(m, from_state_dict({"net": {"model": {"state_dict": sd}}, "epoch": 3, "rng": torch.zeros(4)}))
    both = from_state_dict({f"module._orig_mod.{k}": v for k, v in sd.items()})
    _same_model(m, both)
    assert both.metadata["source_layout"] == "vdsr_fast"  # recognised as what it is
    port = from_state_dict({f"module._orig_mod.{k}": v for k, v in _port_state_dict(m, True).items()})
    _same_model(m, port)
    assert port.metadata["source_layout"] == "pytorch-vdsr"


def test_two_candidate_state_dicts_are_refused_not_guessed():
    """{"model": a, "state_dict": b}: which of the two holds the weights is not knowable, so neither is taken."""
    a, b = _random_model().state_dict(), _random_model().state_dict()
    with pytest.raises(WeightsError, match="unexpected key 'model'"):
        from_state_dict({"model": a, "state_dict": b})


def test_keys_of_several_prefixes_are_refused_naming_them():
    """nn.Sequential keys under two prefixes, or a 'module.' prefix on only some keys, are no layout: refused, the
    keys named as they are in the file (not loaded as whatever the keys of one prefix give, nor the prefix cut off
    the others)."""
    m = _random_model()
    seq = _sequential_state_dict(m)
    mixed = {("a." if n < 4 else "b.") + k: v for n, (k, v) in enumerate(seq.items())}
    with pytest.raises(WeightsError, match=r"keys mix several layouts \(e.g. 'a.0.weight', 'b.8.bias'\)"):
        from_state_dict(mixed)
    sd = _valid_sd(m)
    sd["module.layers.0.weight"] = sd.pop("layers.0.weight")
    with pytest.raises(WeightsError, match=r"keys mix several layouts \(e.g. 'layers.0.bias', 'module.layers.0.weight'\)"):
        from_state_dict(sd)


@pytest.mark.parametrize("sd, message", [
    ({}, "the state_dict is empty"),
    ({"model": {}}, "the state_dict is empty"),
    ({0: torch.zeros(8, 1, 3, 3), "layers.1.weight": torch.zeros(1, 8, 3, 3)}, "state_dict key of type int is not a string"),
    ([torch.zeros(8, 1, 3, 3), torch.zeros(1, 8, 3, 3)], "expected a state_dict .*got list"),
    ({"layers.0.weight": [[0.0] * 3] * 3, "layers.1.weight": torch.zeros(1, 8, 3, 3)}, "value of key 'layers.0.weight' is a list, not a tensor"),
], ids=["empty", "empty_wrapped", "int_key", "list", "list_value"])  # fmt: skip
def test_malformed_containers_are_weights_errors(sd, message):
    """What is not a mapping of names to tensors is a WeightsError saying so (not an AttributeError, TypeError or
    'found 0 conv layers' from deeper in)."""
    with pytest.raises(WeightsError, match=message):
        from_state_dict(sd)


def _without(sd: dict, *keys: str) -> dict:
    return {k: v for k, v in sd.items() if k not in keys}


@pytest.mark.parametrize("make, message", [
    (lambda m: _without(_port_state_dict(m, True), "input.weight", "input.bias"), "missing key 'input.weight' \\(the port's input layer\\)"),
    (lambda m: _without(_port_state_dict(m, True), "output.weight", "output.bias"), "missing key 'output.weight' \\(the port's output layer\\)"),
    (lambda m: _without(_sequential_state_dict(m), "2.weight"), "key '2.bias' has no matching weight"),
    (lambda m: {"layers.0.weight": torch.zeros(1, 1, 3, 3), "layers.0.bias": torch.zeros(1)}, r"found 1 conv layer\(s\) \(layers.0.weight\); VDSR needs at least a head and a tail"),
    (lambda m: {**_valid_sd(m), "layers.0.weight": torch.zeros(8, 3, 3, 3)}, r"'layers.0.weight' has shape \(8, 3, 3, 3\); expected \(C, 1, 3, 3\) for the first layer"),
], ids=["port_no_input", "port_no_output", "bias_without_weight", "one_layer", "rgb_head"])  # fmt: skip
def test_broken_layer_chains_name_the_key(make, message):
    """A layer chain with its first or last layer missing, a bias whose weight is missing, a single layer, or a head
    that takes 3 channels (an RGB network): refused naming the key, not built into another network or failing in
    VDSR's own constructor."""
    with pytest.raises(WeightsError, match=message):
        from_state_dict(make(_random_model()))


def test_metadata_says_what_was_loaded_and_a_conversion_keeps_it(tmp_path):
    """SECURITY.md: a loaded model's metadata is what the loader found (source_layout, source: the file's name,
    biases); saved as safetensors and loaded again it keeps that provenance (not 'vdsr_fast' and the new file's
    name), plus what save() writes (arch, depth, channels, format)."""
    m = _random_model()
    torch.save(_port_state_dict(m, with_bias=False), tmp_path / "port.pth")
    port = vdsr_fast.load(tmp_path / "port.pth")
    assert port.metadata == {"source_layout": "pytorch-vdsr", "source": "port.pth", "biases": "none (zero)"}
    assert from_state_dict(_sequential_state_dict(m)).metadata == {"source_layout": "sequential", "source": "state_dict", "biases": "yes"}
    back = vdsr_fast.load(vdsr_fast.save(port, tmp_path / "converted.safetensors"))
    assert {k: back.metadata[k] for k in port.metadata} == port.metadata
    assert [back.metadata[k] for k in ("arch", "depth", "channels", "format")] == ["vdsr", "5", "8", "vdsr_fast"]


def test_save_keeps_a_given_date_and_always_writes_the_architecture(tmp_path):
    """save(): a date given in metadata is kept (else today's, ISO 8601); arch, depth, channels and format are always
    the model's, whatever metadata says."""
    from datetime import date

    m = _random_model()
    meta = {"date": "2020-01-02", "arch": "srcnn", "depth": 99, "channels": "3", "format": "other"}
    back = vdsr_fast.load(vdsr_fast.save(m, tmp_path / "a.safetensors", metadata=meta))
    assert [back.metadata[k] for k in ("date", "arch", "depth", "channels", "format")] == ["2020-01-02", "vdsr", "5", "8", "vdsr_fast"]
    before = date.today().isoformat()
    dated = vdsr_fast.load(vdsr_fast.save(m, tmp_path / "b.safetensors")).metadata["date"]
    assert dated in (before, date.today().isoformat())
    with pytest.raises(TypeError, match="save: expected a vdsr_fast VDSR model, got Conv2d"):
        vdsr_fast.save(nn.Conv2d(1, 1, 3), tmp_path / "c.safetensors")


def test_the_same_model_saves_to_the_same_bytes_in_every_process(tmp_path):
    """save() sorts the header's keys: the safetensors writer orders the metadata as a hash map seeded per process
    iterates, so the shipped weights saved twice in two processes gave two files. The sorted header still loads."""
    script = ("import sys, vdsr_fast; vdsr_fast.save(vdsr_fast.load(), sys.argv[1], "
              "metadata={'date': '2026-01-01', 'note': 'caf\\u00e9'})")
    paths = [tmp_path / f"{i}.safetensors" for i in range(3)]
    for p in paths:
        subprocess.run([sys.executable, "-c", script, str(p)], check=True)
    blobs = {p.read_bytes() for p in paths}
    assert len(blobs) == 1
    blob = blobs.pop()
    n = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8:8 + n])
    assert list(header["__metadata__"]) == sorted(header["__metadata__"]) and n % 8 == 0
    back = vdsr_fast.load(paths[0])
    assert back.metadata["note"] == "caf\u00e9" and back.metadata["date"] == "2026-01-01"
    x = torch.rand(1, 1, 12, 10)
    torch.testing.assert_close(back(x), vdsr_fast.load()(x), rtol=0, atol=0)
    # the shipped file is written so: loaded and saved again, it comes back byte for byte, metadata and all
    shipped = vdsr_fast.weights.default_weights_path()
    assert vdsr_fast.save(vdsr_fast.load(), tmp_path / "again.safetensors").read_bytes() == shipped.read_bytes()


@pytest.mark.parametrize("mask", [0o022, 0o077], ids=["022", "077"])
def test_saved_weights_get_the_mode_of_a_plain_open(tmp_path, mask):
    """The file is written to a temporary (mkstemp creates it 0o600) and renamed: it gets 0o666 less the umask, as
    open() would give."""
    old = os.umask(mask)
    try:
        path = vdsr_fast.save(_random_model(), tmp_path / "w.safetensors")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask


def test_a_failed_write_names_the_target_and_leaves_no_temporary(tmp_path, monkeypatch):
    """The write failing half way (a full disk): an OSError naming the file asked for (not the temporary), and the
    temporary is removed."""
    import builtins
    import errno

    real_open = builtins.open

    class Full:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, data):
            self.f.write(data[:9])
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(builtins, "open", lambda file, mode="r", *a, **k: Full(real_open(file, mode, *a, **k))
                        if mode == "wb" else real_open(file, mode, *a, **k))
    target = tmp_path / "w.safetensors"
    with pytest.raises(OSError, match=f"save: cannot write {target}: No space left on device"):
        vdsr_fast.save(_random_model(), target)
    assert list(tmp_path.iterdir()) == []


def test_pickled_models_that_are_not_vdsr_nets_are_refused(tmp_path):
    """In a pickled model object: a submodule that is not a module and a buffer (e.g. a norm layer's statistics) are
    refused naming them, not skipped (skipped, a net with a foreign part would load as a
    VDSR of its conv layers); a checkpoint holding neither a model nor a state_dict is named as such."""
    from legacy_writer import _base_state, _conv, od

    rng = np.random.default_rng(4)
    head, tail = _conv("1", rng.normal(size=(8, 1, 3, 3))), _conv("2", rng.normal(size=(1, 8, 3, 3)))
    path = tmp_path / "model_epoch_1.pth"
    ok = ModuleObj("vdsr", "Net", _base_state({"_modules": od([("input", head), ("output", tail)])}))
    path.write_bytes(legacy_bytes({"epoch": 1, "model": ok}))
    assert vdsr_fast.load(path).depth == 2  # the file is valid as it is
    extra = ModuleObj("vdsr", "Net", _base_state({"_modules": od([("input", head), ("output", tail), ("gate", 5)])}))
    path.write_bytes(legacy_bytes({"epoch": 1, "model": extra}))
    with pytest.raises(WeightsError, match="submodule 'gate' is a int, not a module"):
        vdsr_fast.load(path)
    normed = _conv("3", rng.normal(size=(1, 8, 3, 3)))
    normed.state["_buffers"] = od([("running_var", rebuild_tensor(Storage("4", np.ones(1, np.float32)), 0, (1,), (1,)))])
    buffered = ModuleObj("vdsr", "Net", _base_state({"_modules": od([("input", head), ("output", normed)])}))
    path.write_bytes(legacy_bytes({"epoch": 1, "model": buffered}))
    with pytest.raises(WeightsError, match="unexpected key 'output.running_var'"):
        vdsr_fast.load(path)
    torch.save([1, 2, 3], tmp_path / "list.pth")
    with pytest.raises(WeightsError, match="list.pth: the checkpoint holds a list, not a VDSR model or state_dict"):
        vdsr_fast.load(tmp_path / "list.pth")


# ---------------------------------------------------------------- hostile files: memory, time, the reader itself


def _time_limit(seconds: int):
    """Fail (not hang) when the block runs longer than ``seconds``."""
    import contextlib
    import signal

    @contextlib.contextmanager
    def limit():
        def expired(*_):
            raise AssertionError(f"took more than {seconds} s")

        old = signal.signal(signal.SIGALRM, expired)
        signal.alarm(seconds)
        try:
            yield
        finally:
            signal.alarm(0)
            signal.signal(signal.SIGALRM, old)

    return limit()


def test_shared_nested_lists_are_walked_once(tmp_path):
    """A few hundred bytes of lists that hold one list twice, 60 deep ('billion laughs'): each shared object is
    materialised once, so the file is refused at once (it walked 2**60 objects, growing without bound)."""
    x = ()
    for _ in range(60):
        x = [x, x]
    path = tmp_path / "laughs.pth"
    path.write_bytes(legacy_bytes({"epoch": 1, "model": x}))
    assert path.stat().st_size < 2000
    with _time_limit(20), pytest.raises(WeightsError, match="unrecognised VDSR state_dict layout|not a tensor"):
        vdsr_fast.load(path)


def test_many_tensors_over_one_storage_are_refused_before_allocation():
    """200 tensors of 1 MiB, all views of one 1 MiB storage: 200 MiB to allocate from a 1 MiB file, refused."""
    base = Storage("1", np.zeros(1 << 18, np.float32))
    obj = {f"layers.{i}.weight": rebuild_tensor(base, 0, (1 << 18,), (1,)) for i in range(200)}
    with pytest.raises(CheckpointFormatError, match="more memory than the file holds"):
        read_checkpoint(legacy_bytes(obj))
    assert set(read_checkpoint(legacy_bytes(dict(list(obj.items())[:1])))) == {"layers.0.weight"}  # one is fine


def test_views_of_one_storage_cannot_describe_a_larger_model(tmp_path):
    """torch.load keeps a file's sharing: body layers that are all views of one tensor would build a model many
    times the file's size. Refused, naming the sharing."""
    c, base = 16, torch.randn(16 * 16 * 9)
    sd = {"layers.0.weight": torch.randn(c, 1, 3, 3), "layers.9.weight": torch.randn(1, c, 3, 3),
          **{f"layers.{i}.weight": base.view(c, c, 3, 3) for i in range(1, 9)}}  # fmt: skip
    torch.save(sd, tmp_path / "shared.pth")
    with pytest.raises(WeightsError, match="the layers' tensors share storage"):
        vdsr_fast.load(tmp_path / "shared.pth")
    sd.update({f"layers.{i}.weight": base.view(c, c, 3, 3).clone() for i in range(1, 9)})
    torch.save(sd, tmp_path / "own.pth")
    assert vdsr_fast.load(tmp_path / "own.pth").depth == 10


@pytest.mark.parametrize("torch_load", [True, False], ids=["torch_load", "restricted_reader"])
def test_zip_bombs_are_refused_before_unpacking(tmp_path, torch_load):
    """A zip whose compressed entries unpack to far more than the file (torch.save stores them uncompressed):
    refused from the archive's directory, through torch.load and through the restricted reader alike."""
    path = tmp_path / "bomb.pth"
    pkl = pickle.dumps({"layers.0.weight": 0}, protocol=2) if torch_load else b"\x80\x02cvdsr\nNet\n)\x81."
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("archive/data.pkl", pkl)
        zf.writestr("archive/data/0", bytes(40 << 20))
    assert path.stat().st_size < 200_000
    with pytest.raises(WeightsError, match="zip bomb"):
        vdsr_fast.load(path)
    with pytest.raises(CheckpointFormatError, match="zip bomb"):
        read_checkpoint(path.read_bytes())


@pytest.mark.parametrize("target", ["torch.cuda\nFloatStorage", "torch._utils\n_rebuild_tensor"])
def test_a_file_cannot_change_the_reader(target):
    """BUILD on an object of the allow-list (a storage type's dtype, a function's defaults) would change the reader
    for every later file of the process: refused, and the next checkpoint reads as before."""
    build = b"\x80\x02c" + target.encode() + b"\n}X\x05\x00\x00\x00dtypeX\x06\x00\x00\x00gotchasb."
    with pytest.raises(CheckpointFormatError, match="sets the state of"):
        read_checkpoint(build)
    slots = b"\x80\x02c" + target.encode() + b"\nN}X\x0c\x00\x00\x00__defaults__)s\x86b."  # (None, {...}): setattr
    with pytest.raises(CheckpointFormatError, match="sets the state of"):
        read_checkpoint(slots)
    ws = [np.random.default_rng(0).standard_normal(s).astype(np.float32) for s in ((4, 1, 3, 3), (4, 4, 3, 3), (1, 4, 3, 3))]
    out = read_checkpoint(port_checkpoint_bytes(ws))
    assert out["model"].state["_modules"]["input"].state["_parameters"]["weight"].dtype == torch.float32


def test_tensor_headers_must_be_small_ints():
    """Sizes, strides and offsets are ints from 0 to 2**62 (a million-digit size took minutes of arithmetic; a
    float size was truncated), at most 16 dims."""
    base = Storage("1", np.zeros(4, np.float32))
    for size, stride in (((1 << 70,), (1,)), ((1.5,), (1,)), ((True,), (1,)), ((1,) * 17, (1,) * 17)):
        with pytest.raises(CheckpointFormatError, match="malformed tensor header"):
            read_checkpoint(legacy_bytes({"w": rebuild_tensor(base, 0, size, stride)}))


def test_pickled_modules_name_each_weight_once():
    """A buffer beside a parameter of its name (torch resolves the parameter; a reader taking the last one would load
    other weights) and _parameters that is no mapping are refused, naming them; a module in several places (one ReLU
    for every block) is read in each, within a budget of visits (shared modules nested 20 deep: 2**20 paths)."""
    from vdsr_fast.torch_pickle import ModuleRecord
    from vdsr_fast.weights import _record_state_dict

    def record(**state):
        r = ModuleRecord()
        r.__setstate__(state)
        return r

    w = torch.ones(1, 1, 3, 3)
    with pytest.raises(WeightsError, match="'conv.weight' is given twice"):
        _record_state_dict(record(_modules={"conv": record(_parameters={"weight": w}, _buffers={"weight": -w})}))
    relu, child = record(), record(_parameters={"weight": w})  # one module in two places: each place's keys
    assert set(_record_state_dict(record(_modules={"a": child, "b": child, "r1": relu, "r2": relu}))) == {"a.weight", "b.weight"}
    shared = record(_parameters={"weight": w})
    for _ in range(20):  # 2**20 paths through 20 records
        shared = record(_modules={"a": shared, "b": shared})
    with pytest.raises(WeightsError, match="more than 1048576 entries and characters of names"):
        _record_state_dict(shared)
    with pytest.raises(WeightsError, match="_parameters is a list, not a mapping"):
        _record_state_dict(record(_parameters=[w]))


def test_model_size_limits_and_true_metadata(tmp_path):
    """At most 1024 layers of 4096 channels (a 10 MB file of 50,000 layers took half a minute to build); a file's
    metadata may not misstate the shape its tensors have."""
    from vdsr_fast.weights import MAX_CHANNELS, MAX_DEPTH

    with pytest.raises(WeightsError, match=f"at most {MAX_DEPTH}"):
        from_state_dict({f"layers.{i}.weight": torch.zeros(1, 1, 3, 3) for i in range(MAX_DEPTH + 1)})
    with pytest.raises(WeightsError, match=f"C from 1 to {MAX_CHANNELS}"):
        from_state_dict({"layers.0.weight": torch.zeros(0, 1, 3, 3), "layers.1.weight": torch.zeros(1, 0, 3, 3)})
    m = _random_model(3, 2)
    save_file({k: v.contiguous() for k, v in m.state_dict().items()}, tmp_path / "w.safetensors",
              metadata={"depth": "20", "channels": "64", "source": "official.pth"})  # fmt: skip
    meta = vdsr_fast.load(tmp_path / "w.safetensors").metadata
    assert (meta["depth"], meta["channels"], meta["source"]) == ("3", "2", "official.pth")


# ---------------------------------------------------------------- a fuzzing review (each found with a crafted file)


def test_storage_views_are_slices_not_copies(tmp_path):
    """Legacy storage views share their base's bytes: 300 views of all of one 4 MiB storage, each used by a
    1-element tensor, took 1.2 GB (each a copy, outside the tensors' budget); under an address-space limit 600 MB
    above the process's size the load now ends in the layout error, not a MemoryError."""
    n = 1 << 20
    base = Storage("b", np.zeros(n, np.float32))
    path = tmp_path / "views.pth"
    path.write_bytes(legacy_bytes({"junk": [rebuild_tensor(View(base, f"v{i}", 0, n), 0, (1,), (1,)) for i in range(300)]}))
    code = (
        "import resource, vdsr_fast\n"
        "size = next(int(l.split()[1]) * 1024 for l in open('/proc/self/status') if l.startswith('VmSize:'))\n"
        "resource.setrlimit(resource.RLIMIT_AS, (size + (600 << 20), resource.getrlimit(resource.RLIMIT_AS)[1]))\n"
        f"try:\n    vdsr_fast.load({str(path)!r})\nexcept vdsr_fast.WeightsError as e:\n    print(e)\n"
    )
    if sys.platform != "linux":
        pytest.skip("reads /proc/self/status")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and "unexpected key 'junk'" in run.stdout, run.stdout + run.stderr[-2000:]
    sliced = read_checkpoint(legacy_bytes({"w": rebuild_tensor(View(base, "v", 4, 8), 2, (3,), (1,))}))["w"]
    assert torch.equal(sliced, torch.zeros(3))  # a view's tensor offset still counts from the view's start
    vals = Storage("c", np.arange(16, dtype=np.float32))
    got = read_checkpoint(legacy_bytes({"w": rebuild_tensor(View(vals, "v", 4, 8), 2, (2, 2), (1, 2))}))["w"]
    assert torch.equal(got, torch.tensor([[6.0, 8.0], [7.0, 9.0]]))


def _zip_checkpoint(path, pkl: bytes, entries=()):
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", pkl)
        z.writestr("archive/byteorder", "little")
        z.writestr("archive/version", "3\n")
        for name, data in entries:
            z.writestr(f"archive/data/{name}", data)
    return path


def test_a_pickle_cannot_set_the_state_of_a_storage(tmp_path):
    """A zip's data.pkl could BUILD view_of / numel onto the reader's storage objects (views of a whole storage, each
    copied): refused as for the reader's other objects."""
    rec = b"(" + _text("storage") + b"ctorch\nFloatStorage\n" + _text("e") + _text("cpu") + b"K\x00tQ"  # BINPERSID
    pkl = b"\x80\x02" + rec + b"}" + _text("numel") + b"K\x05sb."
    with pytest.raises(CheckpointFormatError, match="sets the state of .*an object of the reader"):
        read_checkpoint(_zip_checkpoint(tmp_path / "build.pth", pkl, [("e", b"")]).read_bytes())


@pytest.mark.parametrize("kind", ["legacy", "zip"])
def test_a_huge_memo_index_is_refused_before_unpickling(tmp_path, kind):
    """Nine bytes (PROTO 2, NONE, LONG_BINPUT 2**28, STOP) made Python's C unpickler allocate and zero a 4 GB memo;
    check_pickle walks the opcodes first and refuses an index beyond the opcodes before it."""
    pkl = b"\x80\x02Nr" + struct.pack("<I", 1 << 28) + b"."
    path = tmp_path / "memo.pth"
    if kind == "zip":
        _zip_checkpoint(path, pkl)
    else:
        path.write_bytes(pkl)
    with pytest.raises(WeightsError, match="memo index 268435456 after 2 opcodes"):
        vdsr_fast.load(path)
    huge = tmp_path / "ba8.pth"  # a bytearray8 of a terabyte: refused by the walk (its bytes are not there)
    huge.write_bytes(b"\x80\x05\x96" + struct.pack("<Q", 10**12) + b"x" * 16 + b".")
    with pytest.raises(WeightsError, match="expected 1000000000000 bytes in a bytearray8"):
        vdsr_fast.load(huge)


def test_integers_wider_than_1024_bits_are_refused_and_a_checkpoints_own_load(tmp_path):
    """A 5000-digit integer is parsed in quadratic time, and its key's error told the user to change a Python limit:
    integers wider than 1024 bits are refused before unpickling. A checkpoint's own wide ints still load: numpy's
    128-bit generator state beside the weights (a review: a 64-bit cap refused it), the legacy magic number."""
    path = tmp_path / "wide.pth"
    path.write_bytes(pickle.dumps({"k": 1 << 5000}, protocol=2))
    with pytest.raises(WeightsError, match="an integer of 5001 bits"):
        vdsr_fast.load(path)
    check_pickle(io.BytesIO(pickle.dumps(LEGACY_MAGIC, protocol=2)))  # 77 bits
    m = _random_model(depth=3, channels=4)
    for legacy in (False, True):
        torch.save({"model": m.state_dict(), "np_rng": np.random.default_rng(0).bit_generator.state, "run": 1 << 100},
                   tmp_path / "ckpt.pth", _use_new_zipfile_serialization=not legacy)  # fmt: skip
        _same_model(vdsr_fast.load(tmp_path / "ckpt.pth"), m)
    with pytest.raises(WeightsError, match="state_dict key of type int is not a string"):
        from_state_dict({10**5000: torch.zeros(1)})


P61 = 2**61 - 1  # an int's hash is its value modulo this: k * P61 all hash to 0


class _Call:
    """Pickles as ``fn(*args)`` (REDUCE), then ``state`` (BUILD): how a file can hand keys to a constructor."""

    def __init__(self, fn, *args, state=None):
        self.fn, self.args, self.state = fn, args, state

    def __reduce__(self):
        return self.fn, self.args, self.state


def _colliding(n: int) -> list[int]:
    return [k * P61 for k in range(1, n + 1)]


@pytest.mark.parametrize("make", [
    lambda n: {k: 0 for k in _colliding(n)},  # dict keys (SETITEMS)
    lambda n: {(k, k): 0 for k in range(n)},  # tuples of ints (their hash can be inverted)
    lambda n: {float(k): 0 for k in _colliding(n)},  # floats (hashed as the ints they equal)
    lambda n: set(_colliding(n)),  # set elements (ADDITEMS; REDUCE of set(list) at protocol 2)
    lambda n: frozenset(_colliding(n)),
    lambda n: _Call(OrderedDict, [(k, 0) for k in _colliding(n)]),  # a list of pairs handed to a constructor
    lambda n: _Call(OrderedDict, [[k, 0] for k in _colliding(n)]),  # pairs as lists
    lambda n: [_Call(OrderedDict, pairs) for pairs in [[(k, 0) for k in _colliding(n // 3)]] * 3],  # one list, 3 calls
], ids=["int", "tuple", "float", "set", "frozenset", "call", "call_lists", "call_shared"])  # fmt: skip
@pytest.mark.parametrize("protocol", [0, 2, 4])
def test_keys_that_could_share_one_hash_are_refused_before_unpickling(make, protocol):
    """Dict keys or set elements crafted to share one hash (the integers k * (2**61 - 1), tuples of integers, floats)
    make building the dict quadratic in its size: 16,000 took 2.7 s here (in torch.load's
    restricted unpickler too). check_pickle models the unpickler's stack and refuses a pickle that would insert more
    than 2,048 of them, before anything is built (2,048 such keys take 0.05 s), each by its weight (a tuple's elements
    and itself: comparing equal-hash tuples costs their length; pairs handed to a call count twice, as pairs and as
    what the call's arguments hold); 256 pass."""
    limit = 2048
    check_pickle(io.BytesIO(pickle.dumps(make(limit // 8), protocol=protocol)))
    with pytest.raises(CheckpointFormatError, match="more than 2048 dict keys or set elements inserted among keys whose hashes"):
        check_pickle(io.BytesIO(pickle.dumps(make(limit + 2), protocol=protocol)))


def test_keys_whose_hash_the_file_cannot_choose_are_not_counted():
    """Strings and bytes hash with a per-process random key and distinct small integers never share a hash: a
    checkpoint's keys are of these kinds, and any number of them passes, as do numbers anywhere but in keys (a
    tensor's size tuples, a training history's floats)."""
    m = _random_model(depth=3, channels=4)
    obj = {"model": m.state_dict(), "names": {f"k{i}": i for i in range(5000)}, "ids": {i: 0.5 for i in range(5000)},
           "blobs": {bytes([i % 256, i // 256]): None for i in range(5000)}, "history": [{"loss": 0.1 * i} for i in range(5000)],
           "big": [k * P61 for k in range(5000)], "sizes": [(i, i + 1) for i in range(5000)]}  # fmt: skip
    for protocol in (0, 2, 5):
        check_pickle(io.BytesIO(pickle.dumps(obj, protocol=protocol)))


def _long1(v: int) -> bytes:
    b = v.to_bytes((v.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + bytes([len(b)]) + b


@pytest.mark.parametrize("make", [
    # torch's unpickler calls func(*args) with any iterable: set(*[[k1, ..., kN]]) (pickle's wants a tuple)
    lambda n: b"\x80\x02cbuiltins\nset\n]](" + b"".join(_long1(k) for k in _colliding(n)) + b"eaR.",
    # torch's BUILD of an OrderedDict or Counter: __dict__.update(state) with a list of pairs
    lambda n: b"\x80\x02ccollections\nOrderedDict\n)R](" + b"".join(_long1(k) + b"N\x86" for k in _colliding(n)) + b"eb.",
    # one OrderedDict of 100 colliding keys (memo 0) given to OrderedDict again and again
    lambda n: (b"\x80\x02ccollections\nOrderedDict\nq\x01](" + b"".join(_long1(k) + b"N\x86" for k in _colliding(100))
               + b"e\x85Rq\x000" + b"h\x01h\x00\x85R0" * (n // 100 - 1) + b"h\x00."),
    # keys of small integers inserted among 100 colliding ones (0 shares their hash, 0 mod 2**61 - 1)
    lambda n: (b"\x80\x02}(" + b"".join(_long1(k) + b"N" for k in _colliding(100))
               + b"".join(b"K\x00N" for _ in range(n - 100)) + b"u."),
    # tuples of bools: their hashes are fixed, so the file chooses them too
    lambda n: pickle.dumps({tuple(bool(k >> i & 1) for i in range(12)): 0 for k in range(n)}, protocol=2),
], ids=["torch_list_args", "torch_build_pairs", "copied_again", "small_ints_among_them", "bool_tuples"])  # fmt: skip
def test_every_way_to_insert_keys_among_chosen_ones_is_counted(make):
    """The ways a review found past the first count (each took 2.3-34 s at 16,000 keys or 200 copies, in torch.load's
    unpickler or this reader): a call given a list, a BUILD state of pairs, a dict built by a call copied again, and
    insertions of keys the count did not cover (small integers, tuples of bools) into a table that holds chosen
    ones. 150 pass (a tuple of 12 bools weighs 13), 2,300 are refused."""
    check_pickle(io.BytesIO(make(150)))
    with pytest.raises(CheckpointFormatError, match="more than 2048 dict keys or set elements inserted among keys"):
        check_pickle(io.BytesIO(make(2300)))


def _binput(i: int) -> bytes:
    return b"r" + struct.pack("<I", i)


def _binget(i: int) -> bytes:
    return b"j" + struct.pack("<I", i)


def _text(x: str) -> bytes:  # BINUNICODE
    return b"X" + struct.pack("<I", len(x.encode())) + x.encode()


@pytest.mark.parametrize("pkl", [
    # one key, a tuple of two shared halves nested 26 deep: hashing it visits 2**26 strings (1.1 s in torch.load)
    b"\x80\x02}" + _text("a") + _binput(0) + b"".join(_binget(i) + b"\x86" + _binput(i + 1) for i in range(26)) + b"Ns.",
    # "" and b"" both hash to 0 (s and s.encode() share a hash): 2**12 tuples of them share one hash
    (b"\x80\x03}" + _text("") + _binput(0) + b"0C\x00" + _binput(1) + b"0("
     + b"".join(b"(" + b"".join(_binget(i >> j & 1) for j in range(12)) + b"tN" for i in range(1 << 12)) + b"u."),
    # torch's BUILD of a Counter with (pairs, None): __dict__.update(pairs)
    (b"\x80\x02ccollections\nCounter\n)R(" + b"".join(_long1(k) + b"N\x86" for k in _colliding(3000)) + b"tN\x86b."),
    # torch's _rebuild_from_type_v2(set, set, (L,), None) calls set(*(L,)): the keys two levels down
    (b"\x80\x02ctorch._tensor\n_rebuild_from_type_v2\n(c__builtin__\nset\n" + _binput(0) + _binget(0) + b"("
     + b"".join(_long1(k) for k in _colliding(3000)) + b"t\x85Nt" + b"R."),
    # one list of 40,000 items given to set() 200 times (the walk itself was quadratic: 25 s at 4,000 calls)
    b"\x80\x02c__builtin__\nset\n" + _binput(0) + b"]" + _binput(1) + b"(" + b"N" * 40000 + b"e" + (_binget(0) + _binget(1) + b"\x85R") * 200 + b".",
    # 1,000 colliding keys whose equal-hash tuples take 2,000 comparisons each (11.6 s in torch.load at 2,000 keys)
    (b"\x80\x02(" + b"N" * 2000 + b"t" + _binput(0) + b"0(" + b"N" * 2000 + b"t" + _binput(1) + b"0}("
     + b"".join(_binget(k & 1) + _long1(k * P61) + b"\x86N" for k in range(1, 1001)) + b"u."),
], ids=["shared_tuple", "empty_text_and_bytes", "counter_build_pair", "rebuild_from_type", "list_handed_again", "slow_compare"])  # fmt: skip
def test_what_a_second_review_found_is_refused(pkl):
    """A second review of the reworked count found these past it (times in torch.load or this reader, 1-38 s for
    files under 1 MB): the work of hashing keys and of handing lists to calls is counted too, each key by its weight
    (a tuple's elements, shared ones at each use), bytes and "" make a tuple's hash chosen, a BUILD's (state, slots)
    pair and the tuples inside a call's arguments are looked into."""
    with pytest.raises(CheckpointFormatError, match="malformed pickle: more than"):
        check_pickle(io.BytesIO(pkl))


def test_a_zip_that_two_readers_would_read_apart_is_refused(tmp_path):
    """torch.load's zip reader finds names in any case and reads the directory the end record points at; Python's
    finds exact names and the directory before the end record. An archive holding data.pkl and DATA.PKL, or two
    directories, had check_zip walk one pickle and torch.load run another."""
    good = tmp_path / "good.pth"
    torch.save({"w": torch.zeros(2)}, good)
    with zipfile.ZipFile(good) as zf:
        (pkl,) = [n for n in zf.namelist() if n.endswith("data.pkl")]
    case = _zip_checkpoint(tmp_path / "case.pth", b"\x80\x02}.")
    with zipfile.ZipFile(case, "a") as z:
        z.writestr("archive/DATA.PKL", b"\x80\x02}.")
    prepended = tmp_path / "prepended.pth"
    prepended.write_bytes(b"\0" * 64 + good.read_bytes())  # a directory away from where the end record says
    for path, message in ((case, "names that differ only in case"), (prepended, "central directory is not where")):
        with zipfile.ZipFile(path) as zf, pytest.raises(CheckpointFormatError, match=message):
            check_zip(zf, path.stat().st_size)
    with zipfile.ZipFile(good) as zf:
        assert check_zip(zf, good.stat().st_size)[0] == pkl  # torch.save's own archive passes


def _local(name: bytes, data: bytes) -> bytes:  # a stored zip entry's local header and data
    return struct.pack("<4s5H3L2H", b"PK\x03\x04", 20, 0, 0, 0, 0, zlib.crc32(data), len(data), len(data), len(name),
                       0) + name + data


def _central(name: bytes, data: bytes, offset: int, comment: bytes = b"") -> bytes:  # its central directory entry
    return struct.pack("<4s6H3L5H2L", b"PK\x01\x02", 20, 20, 0, 0, 0, 0, zlib.crc32(data), len(data), len(data),
                       len(name), 0, len(comment), 0, 0, 0, offset) + name + comment


def _end(count: int, size: int, offset: int) -> bytes:
    return struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, count, count, size, offset, 0)


def _zip64_end(size: int, offset: int) -> bytes:
    return struct.pack("<4sQ2H2L4Q", b"PK\x06\x06", 44, 45, 45, 0, 0, 2, 2, size, offset)


def _two_directories(layout: str) -> bytes:
    """An archive with a directory for each zip reader: torch's (miniz) lists a/data.pkl ("UNWALKED"), Python's
    b/data.pkl ("WALKED"). The layouts a review built (each passed check_zip, and torch.load read the other pickle):
    ``gap76``: Python's directory 76 bytes past where the end record says (taken for zip64 records, in a file with
    none), inside the comment of torch's first entry; ``zip64``: two zip64 end records, Python's where it reads one (76
    bytes before the end record), torch's where the locator points; ``locator``: a locator pointing at no zip64 record,
    where miniz falls back to the end record's directory."""
    pkls = {b"a": pickle.dumps({"marker": "UNWALKED"}, protocol=2), b"b": pickle.dumps({"marker": "WALKED"}, protocol=2)}
    body, at = b"", {}
    for name, data in ((b"a/data.pkl", pkls[b"a"]), (b"a/version", b"3\n"), (b"b/data.pkl", pkls[b"b"]),
                       (b"b/version", b"3\n")):
        at[name] = len(body)
        body += _local(name, data)
    if layout == "gap76":
        python = (_central(b"b/data.pkl", pkls[b"b"], at[b"b/data.pkl"] - 76)
                  + _central(b"b/version", b"3\n", at[b"b/version"] - 76))
        pad = _central(b"b/pad", b"", 0, comment=b"X" * 131)[:-131]  # Python's last entry: its comment hides torch's
        torch_second = _central(b"a/version", b"3\n", at[b"a/version"])
        torch_first = _central(b"a/data.pkl", pkls[b"a"], at[b"a/data.pkl"], comment=b"\0" * (20 + len(python) + len(pad)))
        python_dir = python + pad + torch_second + b"\0" * (131 - len(torch_second))
        return body + torch_first[:76] + python_dir + _end(2, len(python_dir), len(body))
    torch_dir = _central(b"a/data.pkl", pkls[b"a"], at[b"a/data.pkl"]) + _central(b"a/version", b"3\n", at[b"a/version"])
    python_dir = _central(b"b/data.pkl", pkls[b"b"], at[b"b/data.pkl"]) + _central(b"b/version", b"3\n", at[b"b/version"])
    x = len(body)
    body += torch_dir
    torch_record = len(body)
    if layout == "zip64":
        body += _zip64_end(len(torch_dir), x)
    y = len(body)
    body += python_dir + _zip64_end(len(python_dir), y)
    locator = torch_record if layout == "zip64" else 0
    return body + struct.pack("<4sLQL", b"PK\x06\x07", 0, locator, 1) + _end(2, len(torch_dir), x)


@pytest.mark.parametrize("layout", ["gap76", "zip64", "locator"])
def test_an_archive_with_a_directory_for_each_zip_reader_is_refused(tmp_path, layout):
    """Python's zipfile and torch's miniz find an archive's directory by different rules (zip64 records: Python's 76
    bytes before the end record, miniz's where the locator points). A file can give each its own directory: the walk
    checked one data.pkl and torch.load unpickled another (a review: 20,000 colliding keys, 5.3 s). Refused: the 76
    bytes only with zip64 records, and the pickle torch's reader finds must be the one walked."""
    data = _two_directories(layout)
    assert torch.load(io.BytesIO(data), weights_only=True) == {"marker": "UNWALKED"}  # the file does what it says
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        assert pickle.loads(zf.read("b/data.pkl")) == {"marker": "WALKED"} and zf.namelist()[0] == "b/data.pkl"
    path = tmp_path / "two.pth"
    path.write_bytes(data)
    with pytest.raises(CheckpointFormatError, match="central directory is not where|torch's zip reader finds other"):
        torch_load_walked(path)
    with pytest.raises(WeightsError, match="refused"):
        vdsr_fast.load(path)


def test_torch_load_gets_only_archives_both_zip_readers_read_alike(tmp_path):
    """What torch_load_walked hands torch.load: every entry stored (torch.save compresses none; a review had torch
    inflate 1 GiB storages from a 1 MB file), the same records at the same offsets for both readers, and a directory
    of a checkpoint's entries (Python's reader copies extra fields quadratically: 64 KB ones took it 2 s), whatever
    the length of the file's name, which torch.save repeats in every entry (4,000 tensors under a long name pass)."""
    good = tmp_path / "good.pth"
    torch.save({"w": torch.rand(3)}, good)
    assert torch.equal(torch_load_walked(good)["w"], torch.load(good, weights_only=True)["w"])
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(tmp_path / "deflated.pth", "w") as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info), compress_type=zipfile.ZIP_DEFLATED)
    with pytest.raises(CheckpointFormatError, match="is compressed"):
        torch_load_walked(tmp_path / "deflated.pth")
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(tmp_path / "extra.pth", "w") as dst:
        for info in src.infolist():
            info.extra = b"\xfe\xca" + struct.pack("<H", 60000) + bytes(60000)  # 60 KB extra fields
            dst.writestr(info, src.read(info))
    with pytest.raises(CheckpointFormatError, match="an extra field of 60004"):
        torch_load_walked(tmp_path / "extra.pth")
    many = tmp_path / ("a_checkpoint_saved_under_a_long_descriptive_name_" * 2 + ".pth")  # its stem in every entry
    torch.save({f"t{i}": torch.zeros(1) for i in range(4000)}, many)  # a review found it refused (283 KB directory)
    assert len(torch_load_walked(many)) == 4000


@pytest.mark.parametrize("pkl, what", [
    (b"\x80\x02](" + b")" * 300_000 + b"e.", "opcodes"),  # 3M of them took the walk 22 s
    (b"\x80\x02](" + b"ctorch\nFloatStorage\nq\x00" + b"(K\x00tQ" * 20_000 + b"e.", "storages loaded"),  # BINPERSID
    (b"\x80\x02](" + b"cbuiltins\nset\nq\x00" + b"h\x00)R" * 40_000 + b"e.", "calls"),  # set() 40,000 times
    (b"\x80\x02]q\x00(" + b"K\x00" * 3000 + b"e" + b"cbuiltins\nset\n(" + b"h\x00" * 3000 + b"tR.", "handed"),
], ids=["opcodes", "loads", "calls", "handed"])  # fmt: skip
def test_what_torch_load_would_do_per_opcode_call_and_load_is_bounded(pkl, what):
    """The walk bounds the opcodes (the costliest take it 7 us each), the calls and storage loads torch.load would
    make (1M loads of one empty storage took it 53 s), and counts what a call is handed before listing it (one list
    of 3,000 handed 3,000 times in one call: 9M elements, which took the walk 80 s and 2.4 GB at 12,000)."""
    t = time.perf_counter()
    with pytest.raises(CheckpointFormatError, match=f"more than \\d+ {what}" if what != "handed" else "elements handed to calls"):
        check_pickle(io.BytesIO(pkl))
    assert time.perf_counter() - t < 10  # (loosely: the refusals take 0.1-2 s here)


def test_values_and_attributes_are_not_counted_as_keys():
    """A Counter of string keys (pickled as Counter(dict)) and a tensor with a Python attribute (its state dict is a
    call's argument) insert no key the file chooses, whatever their values: they pass (a review found both refused)."""
    t = torch.zeros(3)
    t.history = [0.5 * i for i in range(5000)]
    for obj in ({"norms": Counter({f"layer{i}": 0.5 for i in range(5000)})}, {"t": t}):
        buf = io.BytesIO()
        torch.save(obj, buf)
        with zipfile.ZipFile(io.BytesIO(buf.getvalue())) as zf:
            check_zip(zf, len(buf.getvalue()))


def test_a_state_set_again_by_build_counts_each_time():
    """BUILD sets an object's state dict again (``__dict__.update``): one state dict of 700 colliding keys (memoised)
    given to three objects inserts 700 + 3 x 700."""
    state = {k: 0 for k in _colliding(700)}
    check_pickle(io.BytesIO(pickle.dumps(_Call(types.SimpleNamespace, state=state), protocol=2)))  # 1,400
    with pytest.raises(CheckpointFormatError, match="more than 2048 dict keys"):
        check_pickle(io.BytesIO(pickle.dumps([_Call(types.SimpleNamespace, state=state) for _ in range(3)], protocol=2)))


def test_a_pickle_that_reaches_below_its_mark_is_refused():
    """The stack model keeps the unpicklers' fence: SETITEM cannot take a dict from below the last mark. Such a pickle
    (which no pickler writes) is refused by the walk, as the unpickler refuses it."""
    pkl = b"\x80\x02}(K\x01K\x02s0."  # PROTO 2, EMPTY_DICT, MARK, 1, 2, SETITEM (dict below the mark), POP, STOP
    with pytest.raises(pickle.UnpicklingError, match="unexpected MARK found"):
        pickle.loads(pkl)
    with pytest.raises(CheckpointFormatError, match=r"malformed pickle: SETITEM at byte 8 takes more than the stack"):
        check_pickle(io.BytesIO(pkl))


@pytest.mark.parametrize("kind", ["legacy", "zip"])
def test_colliding_keys_in_a_checkpoint_file_are_a_weights_error(tmp_path, kind):
    """Through load(): the zip format is walked before torch.load unpickles it, the legacy format by this reader."""
    m = _random_model(depth=3, channels=4)
    path = tmp_path / "w.pth"
    torch.save({"model": m.state_dict(), "junk": {k: 0 for k in _colliding(3000)}}, path,
               _use_new_zipfile_serialization=kind == "zip")  # fmt: skip
    with pytest.raises(WeightsError, match="more than 2048 dict keys or set elements inserted among keys whose hashes"):
        vdsr_fast.load(path)


@pytest.mark.parametrize("kind", ["legacy", "zip"])
def test_a_pickle_past_32_mib_is_refused(tmp_path, kind):
    """A checkpoint's pickle is its structure (a few KB; the tensors' bytes are stored beside it): one past 32 MiB is
    refused, a zip's from its directory before it is read, a legacy file's by the walk (~0.8 s per MB, and the
    unpickling after it, were bounded only by the 2 GiB a file may have)."""
    m = _random_model(depth=3, channels=4)
    path = tmp_path / "w.pth"
    obj = {"model": m.state_dict(), "notes": ["x" * 1024] * 64 + [f"{i:01023d}" for i in range(33 * 1024)]}
    torch.save(obj, path, _use_new_zipfile_serialization=kind == "zip")
    match = "is 3[0-9]{7} bytes, a pickle of more than 32 MiB" if kind == "zip" else "a pickle of more than 32 MiB"
    with pytest.raises(WeightsError, match=match):
        vdsr_fast.load(path)
    obj["notes"] = obj["notes"][: 30 * 1024]  # 30 MiB: walked, then loaded
    torch.save(obj, path, _use_new_zipfile_serialization=kind == "zip")
    _same_model(m, vdsr_fast.load(path))


def test_an_unreadable_weights_path_is_a_weights_error(tmp_path):
    """A name too long (or a file without read permission) raised an OSError the command line did not catch: a
    traceback. It is a WeightsError naming the path and the reason."""
    with pytest.raises(WeightsError, match="cannot read it .*File name too long"):
        vdsr_fast.load(tmp_path / ("x" * 300 + ".safetensors"))


def test_a_sequential_with_a_layer_missing_from_the_middle_is_refused():
    """nn.Sequential indices 0, 2, 6, 8 (4 missing) loaded as a 4-layer VDSR without a word."""
    m = _random_model(depth=5, channels=4)
    seq = nn.Sequential(*[mod for conv in m.layers for mod in (conv, nn.ReLU())][:-1])
    sd = {k: v for k, v in seq.state_dict().items() if not k.startswith("4.")}
    with pytest.raises(WeightsError, match=r"missing key '4\.weight' \(a layer missing from the file: the others are every 2"):
        from_state_dict(sd)
    _same_model(from_state_dict(seq.state_dict()), m)  # whole, it loads


@pytest.mark.parametrize("keys, message", [
    (["layers.0.weight", "layers.00.weight"], "unexpected key 'layers.00.weight'"),  # one tensor was dropped
    (["layers.0.weight", "layers.\u0661.weight"], "unexpected key 'layers.\u0661.weight'"),  # Arabic-Indic 1
    (["input.weight", "residual_layer.0.conv.weight", "residual_layer.00.conv.weight", "output.weight"],
     "unexpected key 'residual_layer.00.conv.weight'"),
    (["0.weight", "00.weight", "2.weight"], "unexpected key '00.weight'"),
])  # fmt: skip
def test_two_keys_for_one_layer_are_refused(keys, message):
    """Leading zeros and other scripts' digits named one layer twice: the last tensor won, silently."""
    sd = {k: torch.zeros(4, 4, 3, 3) for k in keys}
    with pytest.raises(WeightsError, match=message):
        from_state_dict(sd)


def test_a_sequential_under_a_non_ascii_name_and_several_prefixes():
    """Index digits are ASCII, a module's name need not be (`self.réseau = nn.Sequential(...)` loads); a head, body
    and tail of several Sequentials is a mix of layouts (not "two keys for one layer")."""
    m = _random_model(depth=3, channels=4)
    seq = nn.Sequential(*[mod for conv in m.layers for mod in (conv, nn.ReLU())][:-1])
    _same_model(from_state_dict({f"réseau.{k}": v for k, v in seq.state_dict().items()}), m)
    mixed = {"head.0.weight": m.layers[0].weight, "body.0.weight": m.layers[1].weight, "tail.0.weight": m.layers[2].weight}
    with pytest.raises(WeightsError, match="keys mix several layouts"):
        from_state_dict(mixed)


def test_a_safetensors_header_with_a_key_twice_is_refused(tmp_path):
    """JSON allows a key twice; the safetensors library keeps the last entry, other readers may keep the first."""
    path = vdsr_fast.save(_random_model(depth=3, channels=4), tmp_path / "w.safetensors")
    data = path.read_bytes()
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    first = next(k for k in header if k != "__metadata__")
    text = json.dumps(header)
    dup = text[:-1] + f', "{first}": ' + json.dumps(header[first]) + "}"
    dup = dup.encode().ljust(len(dup.encode()) + (-len(dup.encode())) % 8)
    path.write_bytes(len(dup).to_bytes(8, "little") + dup + data[8 + n :])
    with pytest.raises(WeightsError, match=f"the safetensors header names '{first}' twice"):
        vdsr_fast.load(path)


def test_a_safetensors_layout_is_checked_before_its_tensors_are_read(tmp_path, monkeypatch):
    """400,000 empty tensors took 29 s to build before the layout error; the keys are checked first, and more than
    two per layer of the largest model are refused."""
    save_file({f"t{i}": torch.zeros(0) for i in range(5000)}, str(tmp_path / "many.safetensors"))
    with pytest.raises(WeightsError, match="5000 tensors: more than a VDSR of at most 1024 layers has"):
        vdsr_fast.load(tmp_path / "many.safetensors")
    save_file({f"t{i}": torch.zeros(0) for i in range(3)}, str(tmp_path / "odd.safetensors"))
    import safetensors

    read = []
    real = safetensors.safe_open

    class Spy:
        def __init__(self, *a, **k):
            self.f = real(*a, **k)

        def __enter__(self):
            self.inner = self.f.__enter__()
            return self

        def __exit__(self, *exc):
            return self.f.__exit__(*exc)

        def __getattr__(self, name):
            return getattr(self.inner, name)

        def get_tensor(self, key):
            read.append(key)
            return self.inner.get_tensor(key)

    monkeypatch.setattr(safetensors, "safe_open", Spy)
    with pytest.raises(WeightsError, match="unexpected key 't0'"):
        vdsr_fast.load(tmp_path / "odd.safetensors")
    assert read == []


def test_errors_found_after_reading_name_the_file(tmp_path):
    """A NaN, a wrong shape or too few layers were reported without the file's name (the command line printed only
    "key 'layers.0.weight' contains NaN")."""
    m = _random_model(depth=3, channels=4)
    with torch.no_grad():
        m.layers[0].weight[0, 0, 0, 0] = float("nan")
    path = tmp_path / "nan.safetensors"
    save_file({k: v.contiguous() for k, v in m.state_dict().items()}, str(path))
    with pytest.raises(WeightsError, match=rf"^{path}: key 'layers\.0\.weight' contains NaN"):
        vdsr_fast.load(path)


def test_the_bytes_decide_the_format_not_the_suffix(tmp_path):
    """A torch.save zip named *.safetensors was read as safetensors ("header too large"), also by torch.load itself
    when given the path; the same bytes named .pth loaded."""
    m = _random_model(depth=3, channels=4)
    torch.save(m.state_dict(), tmp_path / "w.safetensors")
    _same_model(vdsr_fast.load(tmp_path / "w.safetensors"), m)


def test_a_long_global_name_is_cut_in_the_error(tmp_path):
    """A 1 MB GLOBAL name gave a 1 MB error line."""
    path = tmp_path / "long.pth"
    path.write_bytes(b"\x80\x02c" + b"m" * 100_000 + b"\nf\n.")
    with pytest.raises(WeightsError) as err:
        vdsr_fast.load(path)
    assert "not on the allow-list" in str(err.value) and len(str(err.value)) < 600


def test_the_walks_shared_empty_tuple_is_never_grown():
    """The walk models every empty tuple by one object: a SETITEM on one (which no pickler writes) is refused, and the
    object stays empty for the next file (a review found a key counted into it for every later walk)."""
    from vdsr_fast import torch_pickle

    with pytest.raises(CheckpointFormatError, match="adds to a number, a string or an empty tuple"):
        check_pickle(io.BytesIO(b"\x80\x02)G@\t\x00\x00\x00\x00\x00\x00K\x01s."))  # (), 3.14, 1, SETITEM
    assert (torch_pickle._EMPTY_TUPLE.size, torch_pickle._EMPTY_TUPLE.tainted) == (0, 0)


def _shared_halves(n: int, leaf: bytes = b"K\x00") -> bytes:
    """Opcodes that leave T_n on the stack, T_0 = ``leaf``, T_k = (T_{k-1}, T_{k-1}): 2**n leaves in 13 bytes a level."""
    out = leaf
    for i in range(n):
        out += b"r" + struct.pack("<I", i) + b"j" + struct.pack("<I", i) + b"\x86"  # LONG_BINPUT, LONG_BINGET, TUPLE2
    return out


@pytest.mark.parametrize("case", ["persistent-id", "string-key"])
def test_what_torch_hashes_or_formats_counts_whatever_it_holds(case, tmp_path):
    """A fourth review: torch hashes a persistent id and formats it into a record name, and OrderedDict(pairs) hashes
    its keys, chosen or not: an id of 2**24 shared halves (a 1 KB file) took torch.load 10 s and 815 MB, a key of
    strings nested 28 deep 5 s in either unpickler. Their whole weight counts: refused at once, zip and legacy."""
    if case == "persistent-id":
        body = b"(" + _text("storage") + b"ctorch\nFloatStorage\n" + _shared_halves(24) + _text("cpu") + b"K\x00tQ"
    else:
        body = b"ccollections\nOrderedDict\n]" + _shared_halves(28, _text("a")) + _text("v") + b"\x86a\x85R"
    pkl = b"\x80\x02" + body + b"."
    t = time.perf_counter()
    with pytest.raises(CheckpointFormatError, match="elements hashed in keys"):
        check_pickle(io.BytesIO(pkl))
    path = _zip_checkpoint(tmp_path / "z.pth", pkl)
    for load in (torch_load_walked, vdsr_fast.load):
        with pytest.raises((CheckpointFormatError, WeightsError), match="elements hashed in keys"):
            load(path)
    legacy = b"".join(pickle.dumps(v, protocol=2) for v in (LEGACY_MAGIC, 1001, {})) + pkl
    with pytest.raises(CheckpointFormatError, match="elements hashed in keys"):
        read_checkpoint(legacy)
    assert time.perf_counter() - t < 5


def test_a_legacy_files_five_pickles_share_one_budget():
    """The opcode, call and load bounds hold for a legacy file's five pickles together (a review padded each to just
    under the bound: five walks of ~1.3 s)."""
    pad = b"K\x00K\x00K\x00\x870" * 20_000  # 100,000 opcodes a pickle: each alone within the bound
    parts = [pickle.dumps(LEGACY_MAGIC, 2)[2:], pickle.dumps(1001, 2)[2:], b"}.", b"}.", b"]."]
    with pytest.raises(CheckpointFormatError, match="more than 262144 opcodes"):
        read_checkpoint(b"".join(b"\x80\x02" + pad + part for part in parts))


def test_a_pickled_model_of_shared_modules_is_bounded_by_what_flattening_it_makes():
    """A module shared under two names at each of 15 levels is 32,768 visits, within the module bound, and a leaf
    with one 32 KB parameter name made 1.2 GB of names (a fourth review: 10.9 s); entries and name characters are
    bounded together now, and a name that is not a string is refused (formatting one could cost 2**depth)."""
    from vdsr_fast.torch_pickle import ModuleRecord
    from vdsr_fast.weights import _record_state_dict

    def module(state: dict) -> ModuleRecord:
        m = ModuleRecord()
        m.__setstate__(state)
        return m

    node = module({"_parameters": {"p" * 32_768: None}, "_modules": {}})
    for _ in range(15):
        node = module({"_modules": {"a": node, "b": node}})
    t = time.perf_counter()
    with pytest.raises(WeightsError, match="more than 1048576 entries and characters of names"):
        _record_state_dict(node)
    assert time.perf_counter() - t < 2
    with pytest.raises(WeightsError, match="a _parameters name is a tuple"):
        _record_state_dict(module({"_parameters": {(1, 2): None}}))
