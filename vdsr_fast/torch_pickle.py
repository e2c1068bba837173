"""A restricted reader for ``torch.save`` files that may hold whole pickled model objects.

The most-used PyTorch port of VDSR ships its weights as ``torch.save({"epoch": n, "model": Net})``: a
pickled *model object* (classes ``vdsr.Net``, ``vdsr.Conv_ReLU_Block``), often written by PyTorch
0.2/0.3 under Python 2 in the legacy (pre-zip) format and referencing ``torch.nn.backends.thnn``,
which modern PyTorch no longer has. ``torch.load(weights_only=True)`` refuses it and
``weights_only=False`` would run whatever code the file names. This reader does neither:

* ``find_class`` resolves only an explicit allow-list of names, and every module class in that list
  resolves to an inert :class:`ModuleRecord` that only stores its pickled ``__dict__``. No class of the
  file's is imported or constructed and nothing in it is called; any other global raises
  :class:`UnsafeCheckpointError` naming it.
* tensors are rebuilt from the file's raw storage bytes with bounds checks, never through torch's
  unpickling hooks.

Formats: the zip format (``archive/data.pkl`` + ``archive/data/<key>``) and the legacy format (pickles
of the magic number, protocol version and system info, the object, the storage keys; then each
storage as an int64 element count and its raw bytes).
"""

from __future__ import annotations

import io
import math
import pickle
import struct
import zipfile
from collections import OrderedDict
from typing import Any

import torch

__all__ = ["UnsafeCheckpointError", "ModuleRecord", "read_checkpoint", "LEGACY_MAGIC", "LEGACY_PROTOCOL"]

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001
_MAX_BYTES = 1 << 31  # a VDSR checkpoint is ~2.7 MB; refuse anything absurd before reading it


class UnsafeCheckpointError(pickle.UnpicklingError):
    """The checkpoint references a global outside the allow-list (it could run code)."""


class CheckpointFormatError(ValueError):
    """The file is not a readable torch.save checkpoint (truncated, corrupt, unknown layout)."""


class ModuleRecord:
    """Stands in for a pickled ``nn.Module``: keeps the class name and the pickled attributes only."""

    qualname = "?"
    state: dict[str, Any] = {}  # replaced (never mutated) by __setstate__; NEWOBJ skips __init__

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2:  # (dict, slotstate)
            state = state[0] or {}
        if not isinstance(state, dict):
            raise CheckpointFormatError(f"module {self.qualname}: unexpected pickled state {type(state).__name__}")
        self.state = dict(state)

    def __repr__(self) -> str:
        return f"<ModuleRecord {self.qualname}>"


def _record_class(module: str, name: str) -> type[ModuleRecord]:
    return type(f"Record[{name}]", (ModuleRecord,), {"qualname": f"{module}.{name}"})


class _StorageType:
    def __init__(self, dtype: torch.dtype) -> None:
        self.dtype = dtype


class _Storage:
    """A storage's dtype and element count; ``data`` (a flat tensor) arrives after unpickling."""

    def __init__(self, dtype: torch.dtype, numel: int) -> None:
        self.dtype, self.numel = dtype, int(numel)
        self.data: torch.Tensor | None = None
        self.view_of: tuple[_Storage, int] | None = None  # legacy storage views: (base, offset)

    def tensor(self) -> torch.Tensor:
        if self.view_of is not None:
            base, offset = self.view_of
            whole = base.tensor()
            if offset < 0 or self.numel < 0 or offset + self.numel > whole.numel():
                raise CheckpointFormatError(f"a storage view of {self.numel} elements at {offset} lies outside its "
                                            f"storage of {whole.numel()} (corrupt file)")
            return whole[offset : offset + self.numel].clone()  # its own storage: a tensor's offset counts from here
        if self.data is None:
            raise CheckpointFormatError("a storage's bytes are missing from the file (truncated?)")
        return self.data


class LazyTensor:
    """A tensor described by the pickle (storage, offset, size, stride), built after the bytes are read."""

    def __init__(self, storage: Any, offset: Any, size: Any, stride: Any) -> None:
        if not isinstance(storage, _Storage):
            raise CheckpointFormatError("a tensor refers to something that is not a storage")
        try:
            self.offset = int(offset)
            self.size = tuple(int(s) for s in size)
            self.stride = tuple(int(s) for s in stride)
        except (TypeError, ValueError) as e:
            raise CheckpointFormatError(f"malformed tensor header: {e}") from None
        if len(self.size) != len(self.stride) or self.offset < 0 or min(self.size + self.stride, default=0) < 0:
            raise CheckpointFormatError(f"malformed tensor header: size {self.size}, stride {self.stride}")
        self.storage = storage

    def __setstate__(self, state: Any) -> None:  # Parameter BUILD state (requires_grad, hooks): ignored
        pass

    def materialize(self) -> torch.Tensor:
        flat = self.storage.tensor()
        numel = math.prod(self.size)  # exact: numpy.prod wraps around at 2**63
        if numel == 0:
            return torch.empty(self.size, dtype=flat.dtype)
        if numel > flat.numel():  # only overlapping (expanded) strides can: refused before the clone allocates it
            raise CheckpointFormatError(
                f"a tensor of size {self.size} has {numel} elements but its storage only {flat.numel()} "
                "(an expanded or corrupt tensor; refused before allocating it)"
            )
        last = self.offset + sum((n - 1) * s for n, s in zip(self.size, self.stride))
        if last >= flat.numel():
            raise CheckpointFormatError(
                f"a tensor of size {self.size} reaches element {last} of a storage of {flat.numel()} (corrupt file)"
            )
        return flat.as_strided(self.size, self.stride, self.offset).clone()


def _rebuild_tensor(storage, storage_offset, size, stride, *_ignored):
    # covers torch._utils._rebuild_tensor (4 args) and _rebuild_tensor_v2 (+requires_grad, hooks, metadata)
    return LazyTensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data, *_ignored):
    # torch._utils._rebuild_parameter(data, requires_grad, hooks) and ..._with_state(..., state)
    return data


def _parameter(data=None, *_ignored):
    # ``torch.nn.parameter.Parameter(data[, requires_grad])`` in PyTorch <= 0.4 pickles; the BUILD that
    # follows lands on LazyTensor.__setstate__, which ignores it.
    if not isinstance(data, LazyTensor):
        raise CheckpointFormatError("a Parameter wraps something that is not a tensor")
    return data


def _thnn_backend(*_ignored):
    return None  # PyTorch <= 0.3 pickled each module's ``_backend``; it carries no weights


_STORAGE_DTYPES = {
    "FloatStorage": torch.float32,
    "DoubleStorage": torch.float64,
    "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
    "UntypedStorage": torch.uint8,
}

# Classes of the port and the torch.nn classes its model object contains, by every name they were
# pickled under (``vdsr`` when trained with the port's script, ``__main__`` when run as a script).
_MODULE_CLASSES = [
    ("vdsr", "Net"),
    ("vdsr", "Conv_ReLU_Block"),
    ("__main__", "Net"),
    ("__main__", "Conv_ReLU_Block"),
    ("torch.nn.modules.conv", "Conv2d"),
    ("torch.nn.modules.container", "Sequential"),
    ("torch.nn.modules.activation", "ReLU"),
]

_ALLOWED: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): OrderedDict,
    ("builtins", "set"): set,
    ("__builtin__", "set"): set,
    ("torch", "Size"): tuple,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch.nn.parameter", "Parameter"): _parameter,
    ("torch.nn.backends.thnn", "_get_thnn_function_backend"): _thnn_backend,
    **{(mod, name): _StorageType(dt) for name, dt in _STORAGE_DTYPES.items() for mod in ("torch", "torch.cuda")},
    **{key: _record_class(*key) for key in _MODULE_CLASSES},
}


class _Unpickler(pickle.Unpickler):
    def __init__(self, file, storages: dict[str, _Storage], load_bytes=None) -> None:
        super().__init__(file, encoding="latin1")  # Python 2 str -> latin-1, as torch.load does
        self._storages = storages
        self._load_bytes = load_bytes  # zip format: key -> raw bytes; legacy: None (bytes come later)

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise UnsafeCheckpointError(
                f"refusing to load: the checkpoint references '{module}.{name}', which is not on the allow-list "
                "of a VDSR checkpoint (loading it could run code from the file)"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        if not isinstance(pid, tuple) or not pid:
            raise CheckpointFormatError(f"unexpected persistent id {type(pid).__name__}")
        kind = pid[0]
        if kind == "module" and len(pid) == 4 and isinstance(pid[1], type) and issubclass(pid[1], ModuleRecord):
            return pid[1]  # legacy format: ('module', class, source file, source); the source is ignored
        if kind != "storage" or len(pid) not in (5, 6) or not isinstance(pid[1], _StorageType):
            raise CheckpointFormatError(f"unexpected persistent id {pid[:2]!r}")
        stype, key, numel = pid[1], str(pid[2]), pid[4]
        st = self._storages.get(key)
        if st is None:
            if self._load_bytes is not None:  # zip: bytes are at hand
                raw = self._load_bytes(key)
                el = torch.empty((), dtype=stype.dtype).element_size()
                if len(raw) % el:
                    raise CheckpointFormatError(f"storage '{key}' has {len(raw)} bytes, not a multiple of {el}")
                st = _Storage(stype.dtype, len(raw) // el)
                st.data = torch.frombuffer(bytearray(raw), dtype=stype.dtype) if raw else torch.empty(0, dtype=stype.dtype)
            else:
                st = _Storage(stype.dtype, numel)
            self._storages[key] = st
        if len(pid) == 6 and pid[5] is not None:  # legacy view: (view_key, offset, view_size)
            view_key, offset, view_size = pid[5]
            view = self._storages.get(str(view_key))
            if view is None:
                view = _Storage(stype.dtype, view_size)
                view.view_of = (st, int(offset))
                self._storages[str(view_key)] = view
            return view
        return st


def _materialize(obj: Any, depth: int = 0) -> Any:
    """Replace every LazyTensor in a nested structure by a real tensor."""
    if depth > 64:
        raise CheckpointFormatError("object nesting too deep")
    if isinstance(obj, LazyTensor):
        return obj.materialize()
    if isinstance(obj, ModuleRecord):
        obj.state = {k: _materialize(v, depth + 1) for k, v in obj.state.items()}
        return obj
    if isinstance(obj, dict):
        return {k: _materialize(v, depth + 1) for k, v in obj.items()}  # insertion order is kept
    if isinstance(obj, (list, tuple)):
        return type(obj)(_materialize(v, depth + 1) for v in obj)
    return obj


def _byteswap(storages: dict[str, _Storage]) -> None:
    for st in storages.values():
        if st.data is not None and st.data.element_size() > 1:
            arr = st.data.view(torch.uint8).numpy().view(f"u{st.data.element_size()}").byteswap()
            st.data = torch.from_numpy(arr.copy()).view(st.dtype)


def _read_zip(data: bytes) -> Any:
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
        names = zf.namelist()
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise CheckpointFormatError(f"corrupt zip archive: {e}") from None
    pkl = [n for n in names if n.endswith("data.pkl") and n.count("/") == 1]
    if len(pkl) != 1:
        raise CheckpointFormatError("a zip file, but not a torch.save checkpoint (no '<archive>/data.pkl')")
    prefix = pkl[0][: -len("data.pkl")]

    def read(name: str) -> bytes:
        try:
            info = zf.getinfo(name)
            if info.file_size > _MAX_BYTES:
                raise CheckpointFormatError(f"'{name}' is {info.file_size} bytes: too large for a VDSR checkpoint")
            return zf.read(name)
        except KeyError:
            raise CheckpointFormatError(f"the checkpoint lacks '{name}' (truncated or corrupt)") from None
        except (zipfile.BadZipFile, OSError, EOFError) as e:  # CRC errors, truncation
            raise CheckpointFormatError(f"cannot read '{name}': {e}") from None

    storages: dict[str, _Storage] = {}
    obj = _Unpickler(io.BytesIO(read(pkl[0])), storages, lambda key: read(f"{prefix}data/{key}")).load()
    if f"{prefix}byteorder" in names and read(f"{prefix}byteorder").strip() == b"big":
        _byteswap(storages)
    return _materialize(obj)


def _read_legacy(data: bytes) -> Any:
    f = io.BytesIO(data)
    storages: dict[str, _Storage] = {}
    magic = _Unpickler(f, storages).load()
    if magic != LEGACY_MAGIC:
        raise CheckpointFormatError("not a torch.save checkpoint (wrong magic number)")
    version = _Unpickler(f, storages).load()
    if version != LEGACY_PROTOCOL:
        raise CheckpointFormatError(f"unsupported legacy torch.save protocol version {version!r}")
    sys_info = _Unpickler(f, storages).load()
    little = not isinstance(sys_info, dict) or sys_info.get("little_endian", True)
    obj = _Unpickler(f, storages).load()
    keys = _Unpickler(f, storages).load()
    if not isinstance(keys, list):
        raise CheckpointFormatError("legacy checkpoint: the storage key list is missing")
    for key in keys:
        st = storages.get(str(key))
        if st is None:
            raise CheckpointFormatError(f"legacy checkpoint: storage '{key}' is listed but never used")
        head = f.read(8)
        if len(head) != 8:
            raise CheckpointFormatError(f"legacy checkpoint truncated before storage '{key}'")
        (numel,) = struct.unpack("<q" if little else ">q", head)
        el = torch.empty((), dtype=st.dtype).element_size()
        if numel < 0 or numel * el > len(data) - f.tell():
            raise CheckpointFormatError(f"legacy checkpoint truncated in storage '{key}' ({numel} elements announced)")
        raw = bytearray(f.read(numel * el))
        st.numel = numel
        st.data = torch.frombuffer(raw, dtype=st.dtype) if raw else torch.empty(0, dtype=st.dtype)
    if not little:
        _byteswap(storages)
    return _materialize(obj)


def read_checkpoint(data: bytes) -> Any:
    """Unpickle a ``torch.save`` file's bytes (zip or legacy) without running or importing anything.

    Returns the saved object with tensors materialized and pickled modules as :class:`ModuleRecord`.
    Raises :class:`UnsafeCheckpointError` for a global outside the allow-list and
    :class:`CheckpointFormatError` for anything malformed.
    """
    if len(data) > _MAX_BYTES:
        raise CheckpointFormatError(f"{len(data)} bytes: too large for a VDSR checkpoint")
    try:
        if data[:4] == b"PK\x03\x04":
            return _read_zip(data)
        return _read_legacy(data)
    except (UnsafeCheckpointError, CheckpointFormatError):
        raise
    except (pickle.UnpicklingError, EOFError) as e:
        raise CheckpointFormatError(f"corrupt or truncated pickle: {e}") from None
    except (ValueError, TypeError, KeyError, IndexError, AttributeError, struct.error, RecursionError, MemoryError) as e:
        raise CheckpointFormatError(f"malformed checkpoint ({type(e).__name__}: {e})") from None
