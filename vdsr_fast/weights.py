"""Load, validate and save VDSR weights. Weights are data: nothing here unpickles code.

Accepted files (see SECURITY.md):

* **safetensors** (native): tensors ``layers.{i}.weight`` / ``layers.{i}.bias`` plus string metadata.
* **PyTorch state_dicts** saved with ``torch.save`` (read with ``torch.load(weights_only=True)``) in
  the common key layouts: this package's ``layers.{i}.*``; the popular PyTorch port's
  ``input.*``, ``residual_layer.{k}.conv.*``, ``output.*`` (it has no biases: a file with no bias at all
  reads as zero biases; one missing only some is refused, naming them);
  ``nn.Sequential`` indices (``0.weight``, ``2.weight``, ... with any common prefix). A ``module.`` or
  ``_orig_mod.`` prefix and a wrapping ``{"state_dict": ...}`` / ``{"model": ...}`` are undone.
* **the port's checkpoint** ``{"epoch": n, "model": <vdsr.Net>}``, zip or legacy (Python 2) format,
  read by :mod:`vdsr_fast.torch_pickle`'s restricted unpickler.

Every load checks the layer chain (head ``C x 1 x 3 x 3``, body ``C x C x 3 x 3``, tail ``1 x C x 3 x 3``,
biases ``(out,)``), floating dtypes (fp16, bf16, fp8 are widened to float32), dense tensors that the file's
bytes really hold (no sparse, meta or expanded ones) and finiteness, all before the model is built, and names
the offending key when one is wrong. The model's ``metadata`` is what the loader found (``source_layout``,
``biases``, ``source``), updated with a safetensors file's own (a converted file keeps its provenance).
"""

from __future__ import annotations

import json
import os
import pickle
import re
from collections.abc import Mapping
from datetime import date
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from .images import _atomic
from .reference import VDSR
from .torch_pickle import (
    _MAX_BYTES,
    CheckpointFormatError,
    ModuleRecord,
    UnsafeCheckpointError,
    read_checkpoint,
    torch_load_walked,
)

__all__ = ["WeightsError", "load", "save", "from_state_dict", "default_weights_path", "DEFAULT_WEIGHTS"]

MAX_DEPTH, MAX_CHANNELS = 1024, 4096  # the largest model a file may describe (VDSR: 20 layers of 64 channels)

DEFAULT_WEIGHTS = "vdsr_x234.safetensors"


class WeightsError(ValueError):
    """A weights file or state_dict that cannot be used, with the reason and the key involved."""


def default_weights_path() -> Path:
    """Path of the weights shipped inside the package (``vdsr_fast/weights/vdsr_x234.safetensors``)."""
    return Path(str(resources.files("vdsr_fast") / "weights" / DEFAULT_WEIGHTS))


# --------------------------------------------------------------------------------------------------
# state_dict layouts -> ordered list of (weight_key, weight, bias_key, bias)

_N = r"(0|[1-9][0-9]*)"  # an index as Python writes it: one key per layer (not "01", nor other scripts' digits)
_OURS = re.compile(rf"^layers\.{_N}\.(weight|bias)$")
_PORT = re.compile(rf"^(?:(input)|residual_layer\.{_N}\.conv|(output))\.(weight|bias)$")
_SEQ = re.compile(rf"^((?:[A-Za-z_][\w]*\.)*?){_N}\.(weight|bias)$")
_PREFIXES = ("module.", "_orig_mod.")
_WRAPPERS = ("state_dict", "model", "model_state_dict", "params", "net", "params_ema")


def _unwrap(sd: Mapping[str, Any]) -> Mapping[str, Any]:
    for _ in range(3):  # a training checkpoint: {"model": state_dict, "optimizer": ..., "rng": tensor, ...}
        found = [k for k in _WRAPPERS if isinstance(sd.get(k), Mapping)]
        if found == ["params", "params_ema"]:  # BasicSR run with an EMA saves both: its network's own weights, which
            found = ["params"]  # BasicSR's load_network reads by default (as vdsr-fast train's "model" beside "ema")
        if len(found) != 1:
            break
        sd = sd[found[0]]
    for prefix in _PREFIXES:
        if sd and all(isinstance(k, str) and k.startswith(prefix) for k in sd):
            sd = {k[len(prefix) :]: v for k, v in sd.items()}
    return sd


def _layers_by_index(sd: Mapping[str, Any]) -> tuple[str, dict[int, dict[str, str]]]:
    """Recognise the key layout; return its name and {layer order key: {"weight"|"bias": key}}."""
    keys = list(sd)
    if not keys:
        raise WeightsError("the state_dict is empty")
    bad = [k for k in keys if not isinstance(k, str)]
    if bad:  # its type only: the repr of a 5000-digit int raises, of a long bytes fills the screen
        raise WeightsError(f"state_dict key of type {type(bad[0]).__name__} is not a string")

    def group(pattern, order_of) -> dict[int, dict[str, str]] | None:
        layers: dict[int, dict[str, str]] = {}
        for k in keys:
            m = pattern.match(k)
            if m is None:
                return None
            layers.setdefault(order_of(m), {})[m.groups()[-1]] = k
        return layers

    layers = group(_OURS, lambda m: int(m.group(1)))
    if layers is not None:
        _check_contiguous(layers, "layers.{}.weight")
        return "vdsr_fast", layers
    res_idx = [int(m.group(2)) for m in map(_PORT.match, keys) if m is not None and m.group(2) is not None]
    n_res = max(res_idx, default=-1) + 1
    port = group(_PORT, lambda m: 0 if m.group(1) else (n_res + 1 if m.group(3) else int(m.group(2)) + 1))
    if port is not None:
        res = {i - 1: v for i, v in port.items() if 0 < i <= n_res}
        _check_contiguous(res, "residual_layer.{}.conv.weight")
        for name, idx in (("input", 0), ("output", n_res + 1)):
            if idx not in port:
                raise WeightsError(f"missing key '{name}.weight' (the port's {name} layer)")
        return "pytorch-vdsr", port
    seq = group(_SEQ, lambda m: int(m.group(2)))
    if seq is not None and len({_SEQ.match(k).group(1) for k in keys}) == 1:
        idx = sorted(seq)  # the convolutions of a Sequential, every `step` modules (conv, ReLU): none left out
        step = idx[1] - idx[0] if len(idx) > 1 else 1
        gap = next((i + step for i, j in zip(idx, idx[1:]) if j - i != step), None)
        if gap is not None:
            raise WeightsError(f"missing key '{_SEQ.match(keys[0]).group(1)}{gap}.weight' (a layer missing from the "
                               f"file: the others are every {step} modules)")
        return "sequential", seq
    unknown = [k for k in keys if not (_OURS.match(k) or _PORT.match(k) or _SEQ.match(k))]
    hint = f"unexpected key '{unknown[0]}'" if unknown else f"keys mix several layouts (e.g. '{keys[0]}', '{keys[-1]}')"
    raise WeightsError(
        f"unrecognised VDSR state_dict layout: {hint}; expected 'layers.N.weight', the port's "
        "'input/residual_layer.N.conv/output.weight', or nn.Sequential 'N.weight' keys"
    )


def _check_contiguous(layers: dict[int, dict[str, str]], fmt: str) -> None:
    for i in range(max(layers, default=-1) + 1):
        if i not in layers or "weight" not in layers[i]:
            raise WeightsError(f"missing key '{fmt.format(i)}' (layer missing from the file)")


def from_state_dict(sd: Mapping[str, Any], *, source: str = "state_dict") -> VDSR:
    """Build a validated float32 :class:`VDSR` (eval mode, no grad) from a state_dict in any supported layout."""
    if not isinstance(sd, Mapping):
        raise WeightsError(f"expected a state_dict (a mapping of names to tensors), got {type(sd).__name__}")
    sd = _unwrap(sd)
    layout, layers = _layers_by_index(sd)
    order = sorted(layers)
    wkeys = []
    for i in order:
        if "weight" not in layers[i]:
            raise WeightsError(f"key '{layers[i]['bias']}' has no matching weight")
        wkeys.append(layers[i]["weight"])
    for k, v in sd.items():
        if not torch.is_tensor(v):
            raise WeightsError(f"value of key '{k}' is a {type(v).__name__}, not a tensor")
        if not torch.is_floating_point(v):
            raise WeightsError(f"key '{k}' has dtype {v.dtype}; expected a floating-point tensor")
        if v.is_meta:
            raise WeightsError(f"key '{k}' is a meta tensor (it holds no values); expected a dense tensor")
        if v.layout != torch.strided:
            raise WeightsError(f"key '{k}' has layout {v.layout}; expected a dense (strided) tensor")
    depth = len(order)
    if depth < 2:
        raise WeightsError(f"found {depth} conv layer(s) ({', '.join(wkeys)}); VDSR needs at least a head and a tail")
    if depth > MAX_DEPTH:
        raise WeightsError(f"found {depth} conv layers; this loader takes at most {MAX_DEPTH} (VDSR has 20)")
    head = sd[wkeys[0]]
    if head.dim() != 4 or head.shape[1:] != (1, 3, 3) or not 1 <= head.shape[0] <= MAX_CHANNELS:
        raise WeightsError(f"key '{wkeys[0]}' has shape {tuple(head.shape)}; expected (C, 1, 3, 3) for the first layer, "
                           f"C from 1 to {MAX_CHANNELS} (VDSR has 64)")
    c = head.shape[0]
    no_bias = [w[: -len("weight")] + "bias" for i, w in zip(order, wkeys) if "bias" not in layers[i]]
    if 0 < len(no_bias) < depth:  # zero biases are for a file with none at all (the port's layout)
        missing = ", ".join(f"'{k}'" for k in no_bias)
        raise WeightsError(f"missing key{'s' * (len(no_bias) > 1)} {missing} (other layers have biases)")
    # Every tensor is checked before the model is built, so nothing is allocated for a size the file only claims.
    for n, i in enumerate(order):
        cin = 1 if n == 0 else c
        cout = 1 if n == depth - 1 else c
        for kind, expected in (("weight", (cout, cin, 3, 3)), ("bias", (cout,))):
            key = layers[i].get(kind)
            if key is None:
                continue
            t = sd[key]
            if tuple(t.shape) != expected:
                raise WeightsError(f"key '{key}' has shape {tuple(t.shape)}; expected {expected} (layer {n} of {depth})")
            if t.numel() * t.element_size() > t.untyped_storage().nbytes():
                raise WeightsError(
                    f"key '{key}' has {t.numel()} elements but its storage only {t.untyped_storage().nbytes()} bytes "
                    "(an expanded or corrupt tensor)"
                )
            if not torch.isfinite(t.float()).all():  # .float(): isfinite has no fp8 kernels
                raise WeightsError(f"key '{key}' contains NaN or Inf values")
    # Views of one storage (torch.load keeps a file's sharing) could describe a model far larger than the file.
    tensors = [sd[k] for layer in layers.values() for k in layer.values()]
    held = sum({t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}.values())
    if (described := sum(t.numel() * t.element_size() for t in tensors)) > held:
        raise WeightsError(f"the layers' tensors share storage: they hold {held} bytes between them but describe "
                           f"{described} (views of one tensor, not weights)")
    model = VDSR(depth=depth, channels=c)
    with torch.no_grad():
        for conv, i in zip(model.layers, order):
            conv.weight.copy_(sd[layers[i]["weight"]].float())
            if "bias" in layers[i]:
                conv.bias.copy_(sd[layers[i]["bias"]].float())
            else:  # the port has no biases: a missing bias is zero
                conv.bias.zero_()
    has_bias = not no_bias
    model.metadata = {"source_layout": layout, "source": source, "biases": "yes" if has_bias else "none (zero)"}
    return model.requires_grad_(False).eval()


_MAX_ENTRIES = 1 << 20  # entries read and characters of names made flattening a pickled model (a VDSR: ~100, ~2,000)


def _record_state_dict(rec: ModuleRecord, prefix: str = "", out: dict | None = None, depth: int = 0,
                       visits: list | None = None) -> dict:
    """Flatten a pickled module tree (as :class:`ModuleRecord`) into a state_dict. A module may appear more than once
    (one ReLU in every block), but the walk stops after :data:`_MAX_ENTRIES` entries and characters of the names it
    makes (a file nesting shared modules could make 2**depth of them); a name given twice (a buffer beside a parameter
    of its name) is refused."""
    out = {} if out is None else out
    visits = [0] if visits is None else visits
    if depth > 32:
        raise WeightsError("pickled model nests modules too deeply")
    for kind in ("_parameters", "_buffers", "_modules"):
        entries = rec.state.get(kind) or {}
        if not isinstance(entries, Mapping):
            where = prefix.rstrip(".") or rec.qualname
            raise WeightsError(f"module '{where}': {kind} is a {type(entries).__name__}, not a mapping")
        for name, v in entries.items():
            if not isinstance(name, str):  # (and a tuple of shared halves would cost 2**depth to format)
                raise WeightsError(f"module '{prefix.rstrip('.') or rec.qualname}': a {kind} name is a {type(name).__name__}")
            key = f"{prefix}{name}"
            visits[0] += 1 + len(key)  # shared modules' names are made at every visit: 2**depth of them
            if visits[0] > _MAX_ENTRIES:
                raise WeightsError(f"the pickled model's modules hold more than {_MAX_ENTRIES} entries and characters "
                                   "of names (shared ones counted where they appear)")
            if key in out:
                raise WeightsError(f"'{key}' is given twice in the pickled model")
            if v is None:
                continue
            if kind != "_modules":
                out[key] = v
            elif isinstance(v, ModuleRecord):
                _record_state_dict(v, f"{key}.", out, depth + 1, visits)
            else:
                raise WeightsError(f"submodule '{key}' is a {type(v).__name__}, not a module")
    return out


def _from_pickled(obj: Any, path: str) -> VDSR:
    if isinstance(obj, ModuleRecord):
        return from_state_dict(_record_state_dict(obj), source=f"{os.path.basename(path)} ({obj.qualname} object)")
    if isinstance(obj, Mapping):
        model = obj.get("model")
        if isinstance(model, ModuleRecord):
            epoch = obj.get("epoch")
            m = from_state_dict(_record_state_dict(model), source=f"{os.path.basename(path)} ({model.qualname} object)")
            if isinstance(epoch, int):
                m.metadata["epoch"] = str(epoch)
            return m
        return from_state_dict(obj, source=os.path.basename(path))
    raise WeightsError(f"{path}: the checkpoint holds a {type(obj).__name__}, not a VDSR model or state_dict")


# --------------------------------------------------------------------------------------------------
# files


def load(path: str | os.PathLike | None = None) -> VDSR:
    """Load VDSR weights from a file (any supported format) into a float32 :class:`VDSR` on the CPU.

    With no argument, loads the weights shipped with the package. Raises :class:`WeightsError` with the
    reason (and key) for anything unusable, and :class:`FileNotFoundError` for a missing file.
    """
    path = default_weights_path() if path is None else Path(os.fsdecode(path))
    try:
        if not path.exists():
            raise FileNotFoundError(f"weights file not found: {path}")
        if not path.is_file():
            raise WeightsError(f"{path}: not a regular file (a directory?); expected a weights file")
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError as e:
        if isinstance(e, FileNotFoundError) and not e.filename:  # ours, above
            raise
        raise WeightsError(f"{path}: cannot read it ({e.strerror or e})") from None
    if not head:
        raise WeightsError(f"{path}: the file is empty (0 bytes)")
    try:  # by the bytes the file starts with; the suffix only where they say nothing
        if head[:4] == b"PK\x03\x04":
            return _load_zip(path)
        if len(head) >= 9 and head[8:9] == b"{":  # safetensors: an 8-byte header length, then its JSON
            return _load_safetensors(path)
        if head[:1] == b"\x80":  # pickle protocol >= 2: the legacy torch.save format
            return _load_pickled(path)
        if path.suffix == ".safetensors":
            return _load_safetensors(path)
    except WeightsError as e:  # the checks after reading (a NaN, a shape) name the key; the file is named here
        raise e if str(e).startswith(f"{path}: ") else WeightsError(f"{path}: {e}") from None
    except Exception as e:  # whatever else a malformed file makes a reader raise: one line naming the file
        raise WeightsError(f"{path}: malformed weights file ({type(e).__name__}: {e})") from None
    raise WeightsError(
        f"{path}: unrecognised file format (expected a .safetensors file, a torch.save zip checkpoint, or a "
        f"legacy torch.save file; the file starts with {head[:8]!r})"
    )


def _load_safetensors(path: Path) -> VDSR:
    from safetensors import SafetensorError, safe_open

    _check_safetensors_header(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
            keys = list(f.keys())
            if len(keys) > 2 * MAX_DEPTH:
                raise WeightsError(f"{len(keys)} tensors: more than a VDSR of at most {MAX_DEPTH} layers has")
            _layers_by_index(_unwrap(dict.fromkeys(keys)))  # the layout, before any tensor is read
            sd = {k: f.get_tensor(k) for k in keys}
    except WeightsError:  # ours, above (a ValueError)
        raise
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise WeightsError(f"{path}: not a valid safetensors file ({e})") from None
    model = from_state_dict(sd, source=path.name)
    # a converted file keeps its provenance (source, source_layout, biases); the shape is what the tensors say
    model.metadata = {**model.metadata, **meta, "depth": str(model.depth), "channels": str(model.channels)}
    return model


def _check_safetensors_header(path: Path) -> None:
    """Refuse a header that names a key twice (JSON lets it: the safetensors library keeps the last, other readers
    may keep the first, so two programs would load different weights from one file); the rest is the library's."""

    def no_twice(pairs):
        seen = set()
        for k, _ in pairs:
            if k in seen:
                raise WeightsError(f"{path}: the safetensors header names '{k:.100}' twice")
            seen.add(k)
        return dict(pairs)

    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        if n > path.stat().st_size:
            return  # the library says what is wrong with it
        header = f.read(n)
    try:
        json.loads(header, object_pairs_hook=no_twice)
    except WeightsError:
        raise
    except (ValueError, RecursionError):  # not JSON: the library says what is wrong with it
        return


def _load_zip(path: Path) -> VDSR:
    try:
        obj = torch_load_walked(path)
    except CheckpointFormatError as e:
        raise WeightsError(f"{path}: {e}") from None
    except pickle.UnpicklingError:
        return _load_pickled(path)  # e.g. a pickled model object: the restricted reader decides
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise WeightsError(f"{path}: a zip file but not a readable torch.save checkpoint ({e})") from None
    return _from_pickled(obj, str(path))


def _load_pickled(path: Path) -> VDSR:
    if (size := path.stat().st_size) > _MAX_BYTES:
        raise WeightsError(f"{path}: {size} bytes: too large for a VDSR checkpoint")  # before reading it
    try:
        obj = read_checkpoint(path.read_bytes())
    except UnsafeCheckpointError as e:
        raise WeightsError(f"{path}: {e}") from None
    except CheckpointFormatError as e:
        raise WeightsError(f"{path}: {e}") from None
    return _from_pickled(obj, str(path))


def _canonical(blob: bytes) -> bytes:
    """``blob`` (a safetensors file) with its JSON header's keys sorted: the writer orders the metadata as its hash
    map iterates, which differs from one process to the next, so the same weights saved twice gave other bytes.
    The tensors' bytes and offsets are left as they are (the writer lays them out in a fixed order)."""
    n = int.from_bytes(blob[:8], "little")
    header = json.dumps(json.loads(blob[8:8 + n]), sort_keys=True, separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)  # the data starts 8-byte aligned, as the writer pads it
    return len(header).to_bytes(8, "little") + header + blob[8 + n:]


def save(model: VDSR, path: str | os.PathLike, metadata: Mapping[str, Any] | None = None) -> Path:
    """Save ``model`` as safetensors (float32) with metadata.

    Metadata values that are not strings are stored as JSON. The model's own ``metadata`` is kept,
    overridden by ``metadata``; ``arch``, ``depth``, ``channels`` and ``format`` are always written.
    The file is written to a temporary name and renamed, so a crash never leaves half a file; its header's keys are
    sorted, so the same model and metadata give the same bytes in every process. Raises
    :class:`FileNotFoundError` when ``path``'s directory does not exist and :class:`TypeError` naming the key
    for a metadata value that is neither a string nor JSON-serialisable.
    """
    from safetensors.torch import save as to_bytes

    if not isinstance(model, VDSR):
        raise TypeError(f"save: expected a vdsr_fast VDSR model, got {type(model).__name__}")
    tensors = {f"layers.{i}.{kind}": getattr(conv, kind).detach().float().cpu().contiguous()
               for i, conv in enumerate(model.layers) for kind in ("weight", "bias")}
    for k, t in tensors.items():
        if not torch.isfinite(t).all():
            raise WeightsError(f"refusing to save: '{k}' contains NaN or Inf values")
    meta = {k: str(v) for k, v in model.metadata.items()}
    for k, v in (metadata or {}).items():
        try:
            meta[str(k)] = v if isinstance(v, str) else json.dumps(v)
        except (TypeError, ValueError) as e:
            raise TypeError(f"save: metadata key '{k}': {type(v).__name__} value is neither a string nor JSON-serialisable ({e})") from None
    meta.setdefault("date", date.today().isoformat())
    meta.update(format="vdsr_fast", arch="vdsr", depth=str(model.depth), channels=str(model.channels))
    path = Path(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"save: directory {path.parent} does not exist (writing {path})")
    data = _canonical(to_bytes(tensors, metadata=meta))
    try:
        with _atomic(path) as tmp, open(tmp, "wb") as f:
            f.write(data)
    except OSError as e:
        raise OSError(f"save: cannot write {path}: {e.strerror or e}") from None
    return path
