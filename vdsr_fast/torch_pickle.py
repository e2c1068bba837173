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
import os
import pickle
import pickletools
import struct
import zipfile
from collections import OrderedDict
from typing import Any

import torch

__all__ = ["UnsafeCheckpointError", "ModuleRecord", "read_checkpoint", "check_zip", "check_pickle", "torch_load_walked", "LEGACY_MAGIC",
           "LEGACY_PROTOCOL"]

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001
_MAX_BYTES = 1 << 31  # a VDSR checkpoint is ~2.7 MB; refuse anything absurd before reading it
_MAX_DIMS, _MAX_INT = 16, 1 << 62  # a tensor header's dims and values (sizes, strides, offset)
_MAX_NODES = 1_000_000  # objects a checkpoint's structure may hold, each shared one counted once


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


def _refuse_build(self, state: Any) -> None:
    """BUILD on an object of the allow-list: the file would change the reader itself (for the next file too)."""
    raise CheckpointFormatError(f"the checkpoint sets the state of {self!r}, an object of the reader (not a tensor or module)")


class _StorageType:
    __slots__ = ("dtype",)
    __setstate__ = _refuse_build

    def __init__(self, dtype: torch.dtype) -> None:
        self.dtype = dtype


class _Callable:
    """A function of the allow-list, which a BUILD cannot change (a function's ``__defaults__`` could be set)."""

    __slots__ = ("fn",)
    __setstate__ = _refuse_build

    def __init__(self, fn) -> None:
        self.fn = fn

    def __call__(self, *args: Any) -> Any:
        return self.fn(*args)

    def __repr__(self) -> str:
        return self.fn.__name__


class _Storage:
    """A storage's dtype and element count; ``data`` (a flat tensor) arrives after unpickling."""

    __slots__ = ("dtype", "numel", "data", "view_of")
    __setstate__ = _refuse_build  # a BUILD on a storage set view_of or numel: views of a whole storage, each a copy

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
            # a slice of its base, not a copy (a copy each would let many views of one storage allocate that storage
            # many times over, outside the tensors' budget); LazyTensor offsets count from the slice's start
            self.data, self.view_of = whole[offset : offset + self.numel], None
        if self.data is None:
            raise CheckpointFormatError("a storage's bytes are missing from the file (truncated?)")
        return self.data


class LazyTensor:
    """A tensor described by the pickle (storage, offset, size, stride), built after the bytes are read."""

    def __init__(self, storage: Any, offset: Any, size: Any, stride: Any) -> None:
        if not isinstance(storage, _Storage):
            raise CheckpointFormatError("a tensor refers to something that is not a storage")
        try:
            self.offset, self.size, self.stride = offset, tuple(size), tuple(stride)
        except TypeError as e:
            raise CheckpointFormatError(f"malformed tensor header: {e}") from None
        values = (self.offset, *self.size, *self.stride)
        if (len(self.size) != len(self.stride) or len(self.size) > _MAX_DIMS
                or not all(type(v) is int and 0 <= v <= _MAX_INT for v in values)):  # fmt: skip
            raise CheckpointFormatError(f"malformed tensor header: size {self.size!r:.200}, stride {self.stride!r:.200}, "
                                        f"offset {self.offset!r:.40} (ints from 0 to 2**62, at most {_MAX_DIMS} dims)")
        self.storage = storage

    def __setstate__(self, state: Any) -> None:  # Parameter BUILD state (requires_grad, hooks): ignored
        pass

    def materialize(self, budget: list[int]) -> torch.Tensor:
        """The tensor, its bytes taken from ``budget[0]`` (refused when they exceed it)."""
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
        budget[0] -= numel * flat.element_size()
        if budget[0] < 0:
            raise CheckpointFormatError(
                "the checkpoint's tensors would take more memory than the file holds bytes (many tensors over one "
                "storage?); refused before allocating them"
            )
        return flat.as_strided(self.size, self.stride, flat.storage_offset() + self.offset).clone()


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
    ("torch._utils", "_rebuild_tensor"): _Callable(_rebuild_tensor),
    ("torch._utils", "_rebuild_tensor_v2"): _Callable(_rebuild_tensor),
    ("torch._utils", "_rebuild_parameter"): _Callable(_rebuild_parameter),
    ("torch._utils", "_rebuild_parameter_with_state"): _Callable(_rebuild_parameter),
    ("torch.nn.parameter", "Parameter"): _Callable(_parameter),
    ("torch.nn.backends.thnn", "_get_thnn_function_backend"): _Callable(_thnn_backend),
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
                f"refusing to load: the checkpoint references '{module:.100}.{name:.100}', which is not on the allow-list "
                "of a VDSR checkpoint (loading it could run code from the file)"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        if not isinstance(pid, tuple) or not pid:
            raise CheckpointFormatError(f"unexpected persistent id {type(pid).__name__}")
        kind = pid[0]
        if kind == "module" and len(pid) == 4 and isinstance(pid[1], type) and issubclass(pid[1], ModuleRecord):
            return pid[1]  # legacy format: ('module', class, source file, source); the source is ignored
        if (kind != "storage" or len(pid) not in (5, 6) or not isinstance(pid[1], _StorageType)
                or not isinstance(pid[2], (str, int))):  # (a key of nested tuples would cost 2**depth to format)
            raise CheckpointFormatError(f"unexpected persistent id ({', '.join(type(v).__name__ for v in pid[:3])})")
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
            if not isinstance(view_key, (str, int)):
                raise CheckpointFormatError(f"unexpected storage view key ({type(view_key).__name__})")
            view = self._storages.get(str(view_key))
            if view is None:
                view = _Storage(stype.dtype, view_size)
                view.view_of = (st, int(offset))
                self._storages[str(view_key)] = view
            return view
        return st


def _materialize(obj: Any, nbytes: int) -> Any:
    """Replace every LazyTensor in a nested structure by a real tensor. An object the pickle shares (memoised, as
    ``[x, x]``) is materialised once and stays shared, so a file of nested shared lists cannot make this walk 2**depth
    objects; all together may hold at most :data:`_MAX_NODES` objects and their tensors ``nbytes`` plus 1 MiB (a
    tensor takes at most its storage's bytes, which the file holds; views of one storage by many tensors would not)."""
    memo: dict[int, Any] = {}
    budget, nodes = [nbytes + (1 << 20)], [0]

    def walk(obj: Any, depth: int) -> Any:
        if depth > 64:
            raise CheckpointFormatError("object nesting too deep")
        if id(obj) in memo:
            return memo[id(obj)]
        nodes[0] += 1
        if nodes[0] > _MAX_NODES:
            raise CheckpointFormatError(f"the checkpoint holds more than {_MAX_NODES} objects")
        if isinstance(obj, LazyTensor):
            out = obj.materialize(budget)
        elif isinstance(obj, ModuleRecord):
            memo[id(obj)] = obj  # before its state: a record that contains itself ends here
            obj.state = {k: walk(v, depth + 1) for k, v in obj.state.items()}
            return obj
        elif isinstance(obj, dict):
            out = {k: walk(v, depth + 1) for k, v in obj.items()}  # insertion order is kept
        elif isinstance(obj, (list, tuple)):
            out = type(obj)(walk(v, depth + 1) for v in obj)
        else:
            return obj
        memo[id(obj)] = out
        return out

    return walk(obj, 0)


def _byteswap(storages: dict[str, _Storage]) -> None:
    for st in storages.values():
        if st.data is not None and st.data.element_size() > 1:
            arr = st.data.view(torch.uint8).numpy().view(f"u{st.data.element_size()}").byteswap()
            st.data = torch.from_numpy(arr.copy()).view(st.dtype)


_MEMO_OPS = ("PUT", "BINPUT", "LONG_BINPUT")
_INT_OPS = ("INT", "LONG", "LONG1", "LONG4")
_MAX_INT_BITS = 1024  # a checkpoint's widest ints: 128-bit generator states (numpy's PCG64), the legacy magic (77)
# Insertions of dict keys and set elements among keys whose hash the file could choose (_Sym, _StackModel), in all
# of a pickle: 2,048 keys that share one hash take 0.05 s to insert, 16,000 took 2.7 s and it grows with the square
# (SECURITY.md). A checkpoint's keys are strings (randomised hashes) and small integers (their own values).
_MAX_CHOSEN_INSERTS = 2048
# A checkpoint's pickle holds its structure, not its tensors' bytes (stored beside it): a few KB for VDSR's weights,
# a training checkpoint with its history ~100 KB. Past this, the walk (~0.8 s per MB) and the unpickling are refused.
_MAX_PICKLE_BYTES = 32 << 20
_TEXT_OPS = frozenset({"STRING", "BINSTRING", "SHORT_BINSTRING", "UNICODE", "SHORT_BINUNICODE", "BINUNICODE",
                       "BINUNICODE8"})  # fmt: skip
_BYTES_OPS = frozenset({"BINBYTES", "SHORT_BINBYTES", "BINBYTES8", "BYTEARRAY8"})
# Work the model bounds besides the collisions: keys hashed (a tuple hashes every element each time: a tuple of two
# shared halves, nested 30 deep, is 2**30 of them in 947 bytes) and elements handed to calls (one shared list given
# to thousands of calls), each in all of a pickle.
_MAX_HASH_WORK = _MAX_HANDED = 1 << 22
# What an unpickler does per opcode, and what torch.load does per call and per storage it loads, in all of a pickle
# (a review: 3M one-byte opcodes took the walk 22 s; 1M loads of one empty storage, 3 bytes each, torch.load 53 s;
# 600K tensors from one shared argument tuple 21 s). A training checkpoint's history is ~13 opcodes a record, one
# per 50 steps and one per evaluation (60,000 steps: 16,000 opcodes; train() refuses a run whose history would pass
# the bound), and a checkpoint holds a few hundred tensors, each two calls (its rebuild, its OrderedDict's) and one
# load. At the bounds the walk takes up to ~2 s (7 us per opcode of the costliest kind) and torch.load ~1 s.
_MAX_OPS, _MAX_CALLS, _MAX_LOADS = 1 << 18, 1 << 15, 1 << 14
# A zip checkpoint's directory: an entry per storage and 7 more, each a name of the file's stem and the record's
# ("archive/data/123") and no extra field (torch.save writes none there; zip64 needs 28 bytes). Python's reader copies
# an entry's extra field at each of its records (quadratic: 64 KB ones took it 2 s), so that is bounded before it reads.
_MAX_ENTRIES, _MAX_NAME, _MAX_EXTRA = _MAX_LOADS + 64, 1024, 256
_NUMBER_OPS = frozenset({"BININT", "BININT1", "BININT2", "FLOAT", "BINFLOAT", "NONE", "NEWTRUE", "NEWFALSE", *_INT_OPS})
_SATURATE = 1 << 40  # counts that shared objects nested deep would double at each level stop here


class _Sym:
    """What :func:`check_pickle`'s model of the unpickler's stack holds for one object.

    ``chosen``: whether the file could choose its hash: an integer of 32 bits or more (its hash is its value modulo
    2**61 - 1), a float, a tuple or frozenset holding a number, a bool, None, bytes, "" or such an object (their
    hashes are fixed, or shared between a string and its bytes, and a tuple's or frozenset's can be inverted), an
    object made by a call or named by a global. Strings hash with a per-process random key. A small integer, a bool
    or None hashes to a fixed value that distinct ones never share, but a chosen key can share it.
    ``size`` and ``tainted``: the keys a dict, set or object holds, and how many of them are chosen: once one is,
    every key in it may sit on one chain of a shared hash, so each insertion into it (and each copy of it) costs up
    to the chain's length. ``items``: a tuple's, list's or frozenset's elements. ``weight``: what hashing or
    comparing it costs (a tuple's elements, shared ones at each use).
    """

    __slots__ = ("kind", "chosen", "size", "tainted", "items", "weight")

    def __init__(self, kind: str, chosen: bool = False, items: list[_Sym] | None = None) -> None:
        self.kind, self.chosen, self.size, self.tainted, self.items = kind, chosen, 0, 0, items
        # what hashing or comparing it costs: a tuple's or frozenset's elements, nested ones in full (not cached)
        self.weight = min(1 + sum(e.weight for e in items), _SATURATE) if items and kind in ("tuple", "frozenset") else 1

    def insert(self, keys: list[_Sym], copies: int = 0) -> int:
        """``keys`` and ``copies`` more (the keys of what it is built from) put in it; returns what that costs: each
        of them, by its weight (a probe compares equal-hash keys in full), if it holds a chosen key by then (one
        probe per key in the chain), nothing otherwise."""
        self.size = min(self.size + len(keys) + copies, _SATURATE)
        self.tainted = min(self.tainted + sum(k.chosen for k in keys), _SATURATE)
        return min(sum(k.weight for k in keys) + copies, _SATURATE) if self.tainted else 0


def _copied(arg: _Sym) -> tuple[int, int]:
    """(keys, chosen keys) a call or a BUILD may insert from one argument: a dict's, set's or object's own (all of
    them, if any is chosen: a copy puts them all in one table), or a list's or tuple's elements taken as keys or as
    ``(key, value)`` pairs (``set(list)``, ``OrderedDict(pairs)``), with what those hold in turn."""
    if arg.items is None:
        return (arg.size, arg.tainted) if arg.tainted else (0, 0)
    chosen = sum(e.chosen or bool(e.kind in ("tuple", "list") and e.items and e.items[0].chosen) for e in arg.items)
    nested = [(e.size, e.tainted) for e in arg.items if e.items is None and e.tainted]
    n, c = sum(e.weight for e in arg.items) + sum(t[0] for t in nested), chosen + sum(t[1] for t in nested)
    return (min(n, _SATURATE), c) if c else (0, 0)


# a str; bytes (hash(b"ab") == hash("ab"), and b"" and "" hash to 0: a tuple of them chosen from both kinds is
# chosen); an int below 2**32 in magnitude, a bool, None or ""; a float or a wider int. Shared: never grown (a
# container has a _Sym of its own)
_TEXT, _BYTES, _SMALL, _NUMBER = _SCALARS = (_Sym("str"), _Sym("bytes"), _Sym("small"), _Sym("number", True))
_FIXED = (_BYTES, _SMALL)  # not chosen alone, but a tuple or frozenset holding one is
_EMPTY_TUPLE = _Sym("tuple", False, [])  # one for all
_SHARED = (*_SCALARS, _EMPTY_TUPLE)  # never grown: what is added to them or built on them is refused or charged
_SEQUENCES = {"TUPLE": "tuple", "TUPLE1": "tuple", "TUPLE2": "tuple", "TUPLE3": "tuple", "EMPTY_TUPLE": "tuple",
              "LIST": "list", "EMPTY_LIST": "list"}  # fmt: skip
_TABLES = {"DICT": "dict", "EMPTY_DICT": "dict", "EMPTY_SET": "set", "FROZENSET": "frozenset"}


def _scalar(op: pickletools.OpcodeInfo, arg: Any) -> _Sym:
    if op.name in _TEXT_OPS or op.name in _BYTES_OPS:
        return _SMALL if not arg else _TEXT if op.name in _TEXT_OPS and isinstance(arg, str) else _BYTES
    if op.name in ("FLOAT", "BINFLOAT") or (op.name in _INT_OPS and abs(int(arg)) >= 1 << 32):
        return _NUMBER
    return _SMALL  # BININT*, NONE, NEWTRUE, NEWFALSE, INT/LONG below 2**32 (INT's arg is a bool for "I01")


class _Unfollowable(Exception):
    """The pickle takes from the stack what the model does not have there."""


class _StackModel:
    """The unpickler's stack, marks and memo, modelled with :class:`_Sym` as :func:`pickletools.dis` models them with
    types, to count before anything is built what inserting keys into hash tables will cost where the file could
    choose their hashes: each key of a dict, set, frozenset or object (SETITEM(S), ADDITEMS, APPEND(S) on what is not
    a list) that holds a chosen key, and each key a call or a BUILD copies from its arguments or state when any of
    them is chosen (``OrderedDict(pairs)``, ``set(list)``, ``OrderedDict(d)`` again and again, torch's
    ``__dict__.update(state)``). A mark is a fence: an opcode takes nothing below the topmost one (as in both of
    Python's unpicklers and torch's). A pickle the model cannot follow is refused (the unpicklers fail there too)."""

    def __init__(self) -> None:
        self.begin()
        self.ops = 0  # opcodes, in all the pickles walked with this model (a legacy file's five share the bounds)
        self.cost = 0  # insertions into tables that hold a chosen key, so far (by weight)
        self.work = 0  # keys hashed anywhere, by weight
        self.handed = 0  # elements of the lists and tuples handed to calls and BUILDs
        self.calls = self.loads = 0  # calls (REDUCE, NEWOBJ, ...), and persistent loads (torch: a storage each)

    def begin(self) -> None:
        """A new pickle: its own stack, marks and memo (the counts go on)."""
        self.stack: list[_Sym] = []
        self.marks: list[int] = []
        self.memo: dict[int, _Sym] = {}

    def step(self, op: pickletools.OpcodeInfo, arg: Any) -> None:
        name, before, stack = op.name, op.stack_before, self.stack
        if name in _TEXT_OPS or name in _BYTES_OPS:  # the commonest opcodes first
            stack.append(_scalar(op, arg))
            return
        items: list[_Sym] = []
        if pickletools.markobject in before:
            if not self.marks:
                raise _Unfollowable("has no mark before it")
            at = self.marks.pop()
            items, stack[at:] = stack[at:], []
            before = before[: before.index(pickletools.markobject)]
        fence = self.marks[-1] if self.marks else 0
        if name == "POP" and len(stack) == fence and self.marks:
            self.marks.pop()  # POP right after MARK drops the mark
            return
        if len(stack) - fence < max(len(before), name in _MEMO_OPS):
            raise _Unfollowable("takes more than the stack holds above its last mark")
        popped = stack[len(stack) - len(before) :]
        del stack[len(stack) - len(popped) :]
        if name in _MEMO_OPS:
            self.memo[arg] = stack[-1]
        elif name == "MEMOIZE":
            self.memo[len(self.memo)] = popped[0]
            stack += popped
        elif name in ("GET", "BINGET", "LONG_BINGET"):
            stack.append(self.memo.get(arg) or _Sym("object", True))  # (never stored: the unpickler fails)
        elif name == "MARK":
            self.marks.append(len(stack))
        elif name == "DUP":
            stack += popped * 2
        elif not op.stack_after:  # POP, POP_MARK, STOP, PROTO, FRAME
            pass
        elif name == "EMPTY_TUPLE":
            stack.append(_EMPTY_TUPLE)
        elif name in _SEQUENCES:
            elems = items or popped
            kind = _SEQUENCES[name]
            stack.append(_Sym(kind, kind == "tuple" and any(e.chosen or e in _FIXED for e in elems), elems))
        elif name in _TABLES:
            kind = _TABLES[name]
            sym = _Sym(kind, kind == "frozenset" and any(e.chosen or e in _FIXED for e in items),
                       items if kind == "frozenset" else None)
            keys = items[::2] if kind == "dict" else items
            self.work += sum(k.weight for k in keys)
            self.cost += sym.insert(keys)
            stack.append(sym)
        elif name in ("APPEND", "APPENDS", "SETITEM", "SETITEMS", "ADDITEMS"):
            container, *added = popped
            added += items
            if container in _SHARED:
                raise _Unfollowable("adds to a number, a string or an empty tuple")
            if container.kind == "list" and name.startswith("APPEND"):
                container.items.extend(added)  # (a list given to a call later: its elements)
            else:  # a dict's or set's keys, or an object's (its __setitem__, add, append or extend)
                keys = added[::2] if name.startswith("SETITEM") else added
                self.work += sum(k.weight for k in keys)
                self.cost += container.insert(keys)
            stack.append(container)
        elif name in ("REDUCE", "NEWOBJ", "NEWOBJ_EX", "OBJ", "INST", "BUILD"):
            if name == "BUILD":  # the state set on the object: __dict__.update(state) or __setstate__(state), and a
                # pair (state, slots) split (torch's BUILD updates __dict__ with the first: pairs too)
                target, state = popped[0], popped[1]
                handed = [state, *(state.items if state.kind == "tuple" and state.items and len(state.items) == 2 else [])]
            else:
                target = _BYTES if name == "REDUCE" and popped[0].kind == "global _codecs encode" else _Sym("object", True)
                args = popped[1] if name in ("REDUCE", "NEWOBJ", "NEWOBJ_EX") else _Sym("tuple", False, items[name == "OBJ" :])
                handed = (args.items if args.items is not None else [args]) + popped[2:]  # torch: func(*args), any iterable
                self.calls += 1
                # and what those hold one level down (torch's _rebuild_from_type_v2(func, type, args, state) calls
                # func(*args)): counted before they are listed (one tuple holding one list of m elements m times
                # is m * m of them: a review's 48 KB pickle took the walk 80 s and 2.4 GB)
                self._hand(sum(len(h.items) for h in handed if h.kind in ("tuple", "list") and h.items))
                handed += [e for h in handed if h.kind in ("tuple", "list") and h.items for e in h.items]
            self._hand(sum(len(h.items) for h in handed if h.items))
            # what the call may hash (OrderedDict(pairs), set(list)): every element in full, chosen or not (a key of
            # strings nested as (T, T) 28 deep is 2**28 of them in 353 bytes: a review, 5 s in either unpickler)
            self.work += min(sum(e.weight for h in handed if h.items for e in h.items), _SATURATE)
            copies = [_copied(h) for h in handed]
            n, chosen = sum(c[0] for c in copies), sum(c[1] for c in copies)
            if n:
                self.work += n
                if target in _SHARED:  # (bytes at protocols 0-2: _codecs.encode(str, "latin1"))
                    self.cost += n
                else:
                    target.tainted = min(target.tainted + chosen, _SATURATE)
                    self.cost += target.insert([], n)
            stack.append(target)
        elif name in _NUMBER_OPS:
            stack.append(_scalar(op, arg))
        elif name == "GLOBAL":
            stack.append(_Sym(f"global {arg}", True))
        else:  # STACK_GLOBAL, PERSID, BINPERSID, EXT*, buffers: an object
            self.loads += name in ("PERSID", "BINPERSID")
            if name == "BINPERSID":  # torch hashes the id and formats it into a name: its whole weight (a review:
                self.work += popped[0].weight  # a 1 KB file's id of 2**24 shared strings, 10 s and 815 MB)
            stack += [_Sym("object", True) for _ in op.stack_after]

    def _hand(self, n: int) -> None:
        self.handed += n
        if self.handed > _MAX_HANDED:
            raise CheckpointFormatError(
                f"malformed pickle: more than {_MAX_HANDED} elements handed to calls in lists and tuples (shared ones "
                "counted at each use; a checkpoint's are a few thousand); refused before unpickling")


def check_pickle(f: io.BytesIO, model: _StackModel | None = None) -> None:
    """Walk the next pickle in ``f`` opcode by opcode (:func:`pickletools.genops`, which builds nothing) and rewind,
    before an unpickler runs it: refused (:class:`CheckpointFormatError`) are what would make an unpickler allocate
    or work far beyond the file's size. A memo index beyond the opcodes before it (a pickler numbers its memo
    entries in order; Python's C unpickler allocates and zeroes a memo of twice the index: 9 bytes took 4 GB), an
    integer wider than ``_MAX_INT_BITS`` (a 5000-digit one is parsed and printed in quadratic time), a length past
    the data (a bytearray8 of petabytes), an unknown opcode, a pickle past ``_MAX_PICKLE_BYTES``, more than
    ``_MAX_CHOSEN_INSERTS`` insertions of dict keys or set elements among keys whose hashes the file could choose
    (integers crafted to share one hash make building a dict quadratic in its size; :class:`_StackModel`), and more
    than the bounds of opcodes, calls, storage loads, hashing and elements handed to calls. ``model``: the counts of
    the pickles walked before this one, which the bounds take together (a legacy file's five)."""
    start, ops = f.tell(), 0
    if model is None:
        model = _StackModel()
    else:
        model.begin()
    try:
        for op, arg, pos in pickletools.genops(f):
            ops += 1
            model.ops += 1
            if pos - start > _MAX_PICKLE_BYTES:
                raise CheckpointFormatError(f"a pickle of more than {_MAX_PICKLE_BYTES >> 20} MiB (a checkpoint's holds its "
                                            "structure, a few KB, and its tensors' bytes beside it); refused")
            if op.name in _MEMO_OPS and not 0 <= arg < ops:
                raise CheckpointFormatError(f"malformed pickle: memo index {arg} after {ops - 1} opcodes (refused "
                                            "before unpickling: it would allocate a memo that large)")
            if op.name in _INT_OPS and isinstance(arg, int) and arg.bit_length() > _MAX_INT_BITS:
                raise CheckpointFormatError(f"malformed pickle: an integer of {arg.bit_length()} bits (a checkpoint's "
                                            f"are at most {_MAX_INT_BITS})")
            try:
                model.step(op, arg)
            except _Unfollowable as e:
                raise CheckpointFormatError(f"malformed pickle: {op.name} at byte {pos} {e}") from None
            if model.work > _MAX_HASH_WORK:
                raise CheckpointFormatError(
                    f"malformed pickle: more than {_MAX_HASH_WORK} elements hashed in keys (shared ones counted at each "
                    "use; a checkpoint's are a few thousand); refused before unpickling")
            if (over := next((f"{bound} {what}" for n, bound, what in (
                    (model.ops, _MAX_OPS, "opcodes (a training history takes ~13 per record, one per 50 steps)"),
                    (model.calls, _MAX_CALLS, "calls (a checkpoint makes two per tensor)"),
                    (model.loads, _MAX_LOADS, "storages loaded (a checkpoint loads one per tensor)")) if n > bound),
                    None)) is not None:  # fmt: skip
                raise CheckpointFormatError(f"malformed pickle: more than {over}; refused before unpickling")
            if model.cost > _MAX_CHOSEN_INSERTS:
                raise CheckpointFormatError(
                    f"malformed pickle: more than {_MAX_CHOSEN_INSERTS} dict keys or set elements inserted among keys "
                    "whose hashes the file chooses (numbers, tuples of them, objects; a checkpoint's keys are strings "
                    "and small integers): keys crafted to share one hash take quadratic time; refused before "
                    "unpickling")
    except CheckpointFormatError:
        raise
    except (ValueError, struct.error) as e:  # genops' own: a length past the data, an unknown opcode, a bad number
        raise CheckpointFormatError(f"corrupt or truncated pickle ({e})") from None
    f.seek(start)


def check_zip(zf: zipfile.ZipFile, nbytes: int) -> tuple[str, bytes]:
    """Before torch.load or this reader unpacks anything of an archive of ``nbytes``: refuse one whose entries unpack
    to more than 4x that (a zip bomb: torch.save stores its entries uncompressed, and weights hardly compress) or that
    has no single ``<archive>/data.pkl``, then walk that pickle (:func:`check_pickle`). Returns its name and bytes."""
    total = sum(info.file_size for info in zf.infolist())
    if total > 4 * nbytes + (1 << 20):
        raise CheckpointFormatError(f"the archive's entries unpack to {total} bytes, more than 4x its {nbytes} bytes "
                                    "(a zip bomb?); refused before reading them")
    names = zf.namelist()
    if len({n.lower() for n in names}) != len(names):  # torch's reader finds a name in any case: it could read another
        raise CheckpointFormatError("the archive holds names that differ only in case (torch.load could read another "
                                    "entry than the one checked); refused")
    end = zipfile._EndRecData(zf.fp)  # the directory torch's reader uses: where the end record says, no data before it
    if end is None or _directory_at(end) != end[zipfile._ECD_OFFSET]:
        raise CheckpointFormatError("the archive's central directory is not where its end record says (two "
                                    "directories, or data before the archive: readers could disagree); refused")
    pkl = [n for n in names if n.endswith("data.pkl") and n.count("/") == 1]
    if len(pkl) != 1:
        raise CheckpointFormatError("a zip file, but not a torch.save checkpoint (no '<archive>/data.pkl')")
    if (size := zf.getinfo(pkl[0]).file_size) > _MAX_PICKLE_BYTES:
        raise CheckpointFormatError(f"'{pkl[0]}' is {size} bytes, a pickle of more than {_MAX_PICKLE_BYTES >> 20} MiB "
                                    "(a checkpoint's holds its structure, a few KB; its tensors are stored beside it)")
    data = _read_entry(zf, pkl[0])
    check_pickle(io.BytesIO(data))
    return pkl[0], data


def torch_load_walked(path: str | os.PathLike, map_location: Any = "cpu") -> Any:
    """``torch.load(weights_only=True)`` of a zip checkpoint, walked first (:func:`check_zip`): the one way this
    package hands a file to torch.load. The file is read once and torch unpacks the very bytes that were walked
    (no second open that could find another file). It must start as a zip's first entry does, which is where
    torch.load tells its formats apart: a legacy file with a zip appended is a zip to Python's reader (the walk
    would check the zip) and legacy to torch's (which would read the rest, unwalked).

    Raises :class:`CheckpointFormatError` for a file that is not such a zip or that the walk refuses, ``OSError``
    for one that cannot be read, and torch.load's own errors (``pickle.UnpicklingError`` for a global outside its
    allow-list, ``RuntimeError``/``EOFError`` for a damaged archive)."""
    with open(path, "rb") as f:
        if (size := os.fstat(f.fileno()).st_size) > _MAX_BYTES:
            raise CheckpointFormatError(f"{size} bytes: too large for a VDSR checkpoint")  # before reading it
        data = f.read()
    if data[:4] != b"PK\x03\x04":
        raise CheckpointFormatError("not a zip archive as torch.save writes them (it starts with no zip entry)")
    zf = _open_zip(data)
    pkl, _ = check_zip(zf, len(data))
    _same_records(zf, pkl[: -len("data.pkl")], torch._C.PyTorchFileReader(io.BytesIO(data)))
    return torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)


def _same_records(zf: zipfile.ZipFile, prefix: str, reader: Any) -> None:
    """Refuse an archive unless torch's zip reader (miniz: ``reader``) finds the very records Python's found, each
    stored (uncompressed, as torch.save writes them) at the same offset with the same size. The two find an
    archive's directory by different rules (zip64 records: Python's 76 bytes before the end record, miniz's where
    the locator points), and a review gave each reader a directory of its own: torch.load unpickled a data.pkl the
    walk never saw, or inflated storages of 1 GiB that Python's directory did not list."""
    ours = {}
    for info in zf.infolist():
        if not info.filename.startswith(prefix) or info.compress_type != zipfile.ZIP_STORED:
            raise CheckpointFormatError(f"the archive's entry '{info.filename}' is "
                                        + ("compressed" if info.filename.startswith(prefix) else "outside its folder")
                                        + " (torch.save stores its entries uncompressed, in one folder); refused")
        ours[info.filename[len(prefix):]] = info
    try:
        theirs = sorted(reader.get_all_records())
        agree = theirs == sorted(ours) and all(
            (reader.get_record_offset(n), reader.get_record_size(n)) == (_data_offset(zf, ours[n]), ours[n].file_size)
            for n in theirs)  # fmt: skip
    except RuntimeError:
        agree = False
    if not agree:
        raise CheckpointFormatError("torch's zip reader finds other records in this archive than Python's (a file "
                                    "made for the two readers to disagree); refused")


def _data_offset(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> int:
    """Where an entry's data starts: after its local header, whose name and extra field lengths are its own."""
    zf.fp.seek(info.header_offset + 26)
    names, extra = struct.unpack("<2H", zf.fp.read(4))
    return info.header_offset + 30 + names + extra


def _directory_at(end: list) -> int:
    """Where Python's zip reader takes an archive's central directory to start, by its end record (``end``, as
    ``zipfile._EndRecData`` gives it): right before the end record, and before the 76 bytes of zip64 records where
    there are some. Data before the archive moves it from where the end record says (check_zip refuses that)."""
    zip64 = end[zipfile._ECD_SIGNATURE] == zipfile.stringEndArchive64
    return end[zipfile._ECD_LOCATION] - end[zipfile._ECD_SIZE] - 76 * zip64


def _open_zip(data: bytes) -> zipfile.ZipFile:
    """Python's reader of an archive's bytes, once its central directory is known to be a checkpoint's: at most
    ``_MAX_ENTRIES`` entries, names of ``_MAX_NAME`` bytes and extra fields of ``_MAX_EXTRA`` (Python's reader copies
    an extra field at each of its records: a review's 45 entries with 64 KB ones took it 2 s, before any check)."""
    f = io.BytesIO(data)
    end = zipfile._EndRecData(f)
    if end is not None:
        # Python's reader reads entries from where it takes the directory to start, as many as the directory's size
        # holds (not as many as the end record says)
        at, count = _directory_at(end), 0
        stop = min(at + end[zipfile._ECD_SIZE], len(data))
        while 0 <= at and at + 46 <= stop and data[at : at + 4] == b"PK\x01\x02":
            count += 1
            if count > _MAX_ENTRIES:
                raise CheckpointFormatError(f"the archive has more than {_MAX_ENTRIES} entries (a checkpoint's: one "
                                            "per tensor and 7 more); refused")
            names, extra, comment = struct.unpack_from("<3H", data, at + 28)
            if names > _MAX_NAME or extra > _MAX_EXTRA:
                raise CheckpointFormatError(f"an entry of the archive's directory has a name of {names} bytes and an "
                                            f"extra field of {extra} (a checkpoint's: names of a few dozen, extra "
                                            f"fields of at most {_MAX_EXTRA}); refused")
            at += 46 + names + extra + comment
    try:
        return zipfile.ZipFile(f)
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as e:
        raise CheckpointFormatError(f"corrupt zip archive: {e}") from None


def _read_entry(zf: zipfile.ZipFile, name: str) -> bytes:
    try:
        info = zf.getinfo(name)
        if info.file_size > _MAX_BYTES:
            raise CheckpointFormatError(f"'{name}' is {info.file_size} bytes: too large for a VDSR checkpoint")
        return zf.read(name)
    except KeyError:
        raise CheckpointFormatError(f"the checkpoint lacks '{name}' (truncated or corrupt)") from None
    except (zipfile.BadZipFile, OSError, EOFError, RuntimeError, NotImplementedError) as e:  # CRC errors,
        raise CheckpointFormatError(f"cannot read '{name}': {e}") from None  # truncation, encryption, compression


def _read_zip(data: bytes) -> Any:
    zf = _open_zip(data)
    names = zf.namelist()
    pkl, pickled = check_zip(zf, len(data))  # the pickle read once: walked there, unpickled here
    prefix = pkl[: -len("data.pkl")]
    storages: dict[str, _Storage] = {}
    obj = _Unpickler(io.BytesIO(pickled), storages, lambda key: _read_entry(zf, f"{prefix}data/{key}")).load()
    if f"{prefix}byteorder" in names and _read_entry(zf, f"{prefix}byteorder").strip() == b"big":
        _byteswap(storages)
    return _materialize(obj, len(data))


def _read_legacy(data: bytes) -> Any:
    f = io.BytesIO(data)
    storages: dict[str, _Storage] = {}

    model = _StackModel()  # one budget for the five

    def unpickle() -> Any:  # the next of the file's five pickles, walked first
        check_pickle(f, model)
        return _Unpickler(f, storages).load()

    magic = unpickle()
    if magic != LEGACY_MAGIC:
        raise CheckpointFormatError("not a torch.save checkpoint (wrong magic number)")
    version = unpickle()
    if version != LEGACY_PROTOCOL:
        shown = repr(version)[:100] if isinstance(version, (int, str)) else type(version).__name__
        raise CheckpointFormatError(f"unsupported legacy torch.save protocol version {shown}")
    sys_info = unpickle()
    little = not isinstance(sys_info, dict) or sys_info.get("little_endian", True)
    obj = unpickle()
    keys = unpickle()
    if not isinstance(keys, list):
        raise CheckpointFormatError("legacy checkpoint: the storage key list is missing")
    for key in keys:
        if not isinstance(key, (str, int)):
            raise CheckpointFormatError(f"legacy checkpoint: a storage key is a {type(key).__name__}")
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
    return _materialize(obj, len(data))


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
    except (ValueError, TypeError, KeyError, IndexError, AttributeError, struct.error, RecursionError, MemoryError,
            RuntimeError, OverflowError) as e:  # RuntimeError: torch refusing a tensor (an overflowing stride, ...)
        raise CheckpointFormatError(f"malformed checkpoint ({type(e).__name__}: {e})") from None
