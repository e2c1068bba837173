"""Writes checkpoints byte-for-byte in the style of the popular VDSR port's ``model_epoch_*.pth``:
``torch.save({"epoch": n, "model": Net})`` by PyTorch 0.3 under Python 2.7, legacy (pre-zip) format.

We cannot run Python 2 or PyTorch 0.3 here, so this emits the same pickle opcodes they did: Python 2
``str`` as BINSTRING, classes as GLOBALs of modules that no longer exist (``torch.nn.backends.thnn``),
module classes as ``('module', cls, file, source)`` persistent ids, tensors through
``torch._utils._rebuild_tensor`` on ``torch.cuda.FloatStorage`` saved on ``cuda:0``, parameters as
``Parameter(data)`` + BUILD, and after the pickles each storage as an int64 count plus raw bytes.
"""

from __future__ import annotations

import io
import pickle
import struct

import numpy as np

MAGIC = 0x1950A86A20F9469CFC6C


class Global:
    def __init__(self, module: str, name: str) -> None:
        self.module, self.name = module, name


class Reduce:
    def __init__(self, func: Global, args: tuple, state=None) -> None:
        self.func, self.args, self.state = func, args, state


class ModuleObj:
    """An nn.Module pickled with protocol 2: NEWOBJ(cls) + BUILD(__dict__)."""

    def __init__(self, module: str, name: str, state: dict) -> None:
        self.cls, self.state = Global(module, name), state


class Storage:
    def __init__(self, key: str, data: np.ndarray) -> None:
        self.key, self.data = key, data


class View:
    """A storage view of PyTorch <= 0.3: ``size`` elements of ``base`` from ``offset``, pickled under its own key."""

    def __init__(self, base: Storage, key: str, offset: int, size: int) -> None:
        self.base, self.key, self.offset, self.size = base, key, offset, size


def od(items):
    return Reduce(Global("collections", "OrderedDict"), ([[k, v] for k, v in items],))


class Py2Pickler(pickle._Pickler):
    dispatch = pickle._Pickler.dispatch.copy()

    def __init__(self, file, storages: list) -> None:
        super().__init__(file, protocol=2)
        self.storages = storages

    def persistent_id(self, obj):
        view = None
        if isinstance(obj, View):
            obj, view = obj.base, (obj.key, obj.offset, obj.size)
        if isinstance(obj, Storage):
            if obj not in self.storages:
                self.storages.append(obj)
            return ("storage", Global("torch.cuda", "FloatStorage"), obj.key, "cuda:0", obj.data.size, view)
        return None

    def save_py2str(self, obj):
        b = obj.encode("latin-1")
        if len(b) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(b)]) + b)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(b)) + b)
        self.memoize(obj)

    def save_global_ref(self, obj):
        self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())

    def save_reduce_obj(self, obj):
        self.save(obj.func)
        self.save(obj.args)
        self.write(pickle.REDUCE)
        if obj.state is not None:
            self.save(obj.state)
            self.write(pickle.BUILD)

    def save_module(self, obj):
        source = f"class {obj.cls.name}(nn.Module):\n    ...\n"
        self.save(("module", obj.cls, f"/home/user/pytorch-vdsr/{obj.cls.module}.py", source))
        self.write(pickle.BINPERSID)
        self.save(())
        self.write(pickle.NEWOBJ)
        self.save(obj.state)
        self.write(pickle.BUILD)

    dispatch[str] = save_py2str
    dispatch[Global] = save_global_ref
    dispatch[Reduce] = save_reduce_obj
    dispatch[ModuleObj] = save_module


def _base_state(extra: dict) -> dict:
    empty = od([])
    state = {
        "_backend": Reduce(Global("torch.nn.backends.thnn", "_get_thnn_function_backend"), ()),
        "_parameters": od([]),
        "_buffers": empty,
        "_backward_hooks": empty,
        "_forward_hooks": empty,
        "_forward_pre_hooks": empty,
        "_modules": od([]),
        "training": True,
    }
    state.update(extra)
    return state


def rebuild_tensor(storage: Storage | View, offset, size, stride) -> Reduce:
    """``torch._utils._rebuild_tensor(storage, offset, size, stride)``, as PyTorch <= 0.3 pickled a tensor."""
    return Reduce(Global("torch._utils", "_rebuild_tensor"), (storage, offset, tuple(size), tuple(stride)))


def _param(key: str, arr: np.ndarray) -> Reduce:
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    tensor = rebuild_tensor(Storage(key, arr.ravel()), 0, arr.shape, tuple(s // 4 for s in arr.strides))
    return Reduce(Global("torch.nn.parameter", "Parameter"), (tensor,), state=(True, False, od([])))


def _conv(key: str, w: np.ndarray) -> ModuleObj:
    cout, cin = w.shape[:2]
    return ModuleObj(
        "torch.nn.modules.conv",
        "Conv2d",
        _base_state(
            {
                "_parameters": od([("weight", _param(key, w)), ("bias", None)]),
                "in_channels": cin,
                "out_channels": cout,
                "kernel_size": (3, 3),
                "stride": (1, 1),
                "padding": (1, 1),
                "dilation": (1, 1),
                "transposed": False,
                "output_padding": (0, 0),
                "groups": 1,
            }
        ),
    )


def _relu() -> ModuleObj:
    return ModuleObj("torch.nn.modules.activation", "ReLU", _base_state({"threshold": 0, "value": 0, "inplace": True}))


def legacy_bytes(obj, little_endian: bool = True, magic: int = MAGIC, version: int = 1001, keys: list | None = None) -> bytes:
    """``obj`` in the legacy torch.save format: the pickles of the magic number, the protocol version, the system
    info and ``obj``, the sorted storage keys, then each storage as an int64 count and its float32 values, in the
    byte order the system info states (PyTorch on a big-endian machine wrote big-endian files). ``magic``,
    ``version`` and ``keys`` (the key list written; the storages that ``obj`` uses follow in its order) are for
    malformed files."""
    order = "<" if little_endian else ">"
    f = io.BytesIO()
    for header in (magic, version, {"protocol_version": version, "little_endian": little_endian, "type_sizes": {"short": 2, "int": 4, "long": 4}}):
        Py2Pickler(f, []).dump(header)
    storages: list[Storage] = []
    Py2Pickler(f, storages).dump(obj)
    by_key = {s.key: s for s in storages}
    keys = sorted(by_key) if keys is None else keys
    Py2Pickler(f, []).dump(keys)
    for k in (k for k in keys if k in by_key):
        data = by_key[k].data.astype(f"{order}f4")
        f.write(struct.pack(f"{order}q", data.size))
        f.write(data.tobytes())
    return f.getvalue()


def port_checkpoint_bytes(weights: list[np.ndarray], epoch: int = 50, extra_global: Global | None = None,
                          little_endian: bool = True) -> bytes:  # fmt: skip
    """The port's ``{"epoch", "model": Net}`` for conv weights [input, residual..., output] (no biases).

    ``extra_global`` adds a reference to another global inside the model (to test refusals); ``little_endian``
    False writes the file a big-endian machine wrote.
    """
    blocks = [
        (str(i), ModuleObj("vdsr", "Conv_ReLU_Block", _base_state({"_modules": od([("conv", _conv(f"9400{i + 1}", w)), ("relu", _relu())])})))
        for i, w in enumerate(weights[1:-1])
    ]
    net_state = _base_state(
        {
            "_modules": od(
                [
                    ("residual_layer", ModuleObj("torch.nn.modules.container", "Sequential", _base_state({"_modules": od(blocks)}))),
                    ("input", _conv("94000", weights[0])),
                    ("output", _conv("94999", weights[-1])),
                    ("relu", _relu()),
                ]
            )
        }
    )
    if extra_global is not None:
        net_state["hook"] = Reduce(extra_global, ("echo pwned",))
    return legacy_bytes({"epoch": epoch, "model": ModuleObj("vdsr", "Net", net_state)}, little_endian)
