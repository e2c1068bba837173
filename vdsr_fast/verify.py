"""``vdsr-fast verify``: the fast backends against the float64 reference, on this machine's GPU.

The test suite proves the kernels on the developers' GPUs; this proves them on yours, with the same rule
(DESIGN.md §6), on fresh random inputs and both the shipped weights and random ones::

    err(fast) <= 2 * err(PyTorch, same dtype) + ATOL[dtype] * max(1, max |ref64|)

``err = max |out - ref64|``, ref64 = the whole network in float64 on the same weights and input.
ATOL per dtype is one unit in the last place of the storage dtype at magnitude 1: the fast path and PyTorch
each round the fp32 accumulator to the storage dtype once per layer and may round to neighbouring values (a
rounding that lands on the other neighbour can propagate through the following layers); fp32: 1e-5, far
above fp32 summation-order noise (~1e-6 over 20 layers of 576-term dot products) yet far below any indexing
or masking bug (those are O(1)).
float8_e4m3fn (opt-in, :mod:`vdsr_fast.fp8`): PyTorch's same dtype is the FP8 scheme emulated in fp32, whose own
error (0.01-0.15 on random inputs: 3 mantissa bits per layer) dominates the bound; 2**-8 covers a rounding flip of
the fp16 last activation. As that bound is loose, the mean error must also stay within 1.25x the emulation's +
1e-4 (an FP8 rounding flip carries on through the network, so the fast outputs are as accurate as the emulation's,
not equal to them). The tests also hold the FP8 kernels to the emulation itself, layer by layer.

Each fast run starts from activation buffers filled with NaN (and, on a GPU, from NaN-filled allocator blocks
of the output's size), so a pixel a kernel fails to write, or reads before it is written, shows as NaN; it is
run twice, poisoned again in between, and once more on a separate engine without CUDA graphs: the three
outputs must be the same bits.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass

import torch

from .cli import _DTYPES, CliError, _device, _model, size_arg
from .reference import VDSR, vdsr_forward

__all__ = ["ATOL", "Comparison", "compare", "fill_nan", "ref64", "random_vdsr", "verify", "main"]

ATOL = {torch.float32: 1e-5, torch.float16: 2.0**-10, torch.bfloat16: 2.0**-7, torch.float8_e4m3fn: 2.0**-8}
FP8_MEAN_FACTOR = 1.25  # float8_e4m3fn: mean |fast - ref64| <= this x the emulation's + 1e-4 (compare)
BF16_DOT_REASON = "the Triton interpreter computes tl.dot wrongly on bf16 operands: bf16 is checked on GPU only"


def ref64(model: VDSR, x: torch.Tensor) -> torch.Tensor:
    """The whole VDSR network in float64 (:func:`vdsr_forward`) on the model's weights and input ``x``."""
    return vdsr_forward(x.double(), [w.double() for w in model.weights], [b.double() for b in model.biases])


def random_vdsr(depth: int = 20, channels: int = 64, seed: int = 0) -> VDSR:
    """A random VDSR as the equivalence checks use it: He init (as the paper), biases U(-0.05, 0.05), and the
    last layer scaled by 0.1 so the residual has the size a trained VDSR predicts. The global RNG is left as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        m = VDSR(depth=depth, channels=channels)
        with torch.no_grad():
            for conv in m.layers:
                conv.bias.uniform_(-0.05, 0.05)
            m.layers[-1].weight.mul_(0.1)
    return m.eval()


@dataclass
class Comparison:
    err: float  # max |fast - ref64|
    bound: float  # 2 * same_err + ATOL[dtype] * scale
    same_err: float  # max |PyTorch same dtype - ref64|
    scale: float
    where: list[int]  # index of the largest error
    nonfinite: int  # outputs that are NaN or infinite
    mean_err: float | None = None  # float8_e4m3fn: mean |fast - ref64| ...
    mean_bound: float | None = None  # ... and FP8_MEAN_FACTOR x PyTorch's (the emulation's) + 1e-4; else None

    @property
    def mean_ok(self) -> bool:
        return self.mean_bound is None or self.mean_err <= self.mean_bound

    @property
    def ok(self) -> bool:
        return self.nonfinite == 0 and self.err <= self.bound and self.mean_ok


def compare(fast: torch.Tensor, same: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype, *, scaled: bool = True) -> Comparison:
    """DESIGN.md §6 for ``fast`` against the float64 ``ref``, ``same`` being PyTorch's output in the same dtype
    (for float8_e4m3fn also the mean error: see the module docstring).

    ``scaled=False``: ATOL is absolute (``scale = 1``), for outputs known to be of order 1.
    """
    if fast.shape != ref.shape:
        raise ValueError(f"shape {tuple(fast.shape)} != reference {tuple(ref.shape)}")
    fast, same, ref = fast.double(), same.double().to(ref.device), ref
    fast = fast.to(ref.device)
    nonfinite = int((~torch.isfinite(fast)).sum())
    err = (fast - ref).abs().nan_to_num(nan=float("inf"))
    same_err = (same - ref).abs().max().item()
    scale = max(1.0, ref.abs().max().item()) if scaled else 1.0
    where = torch.unravel_index(err.flatten().argmax(), err.shape)
    c = Comparison(err.max().item(), 2 * same_err + ATOL[dtype] * scale, same_err, scale, [int(i) for i in where], nonfinite)
    if dtype == torch.float8_e4m3fn:  # the max rule is loose there (the emulation's own error is large): the mean too
        c.mean_err, c.mean_bound = err.mean().item(), FP8_MEAN_FACTOR * (same - ref).abs().mean().item() + 1e-4
    return c


@dataclass
class Row:
    weights: str
    backend: str
    dtype: str
    shape: tuple[int, int, int, int]
    status: str  # "ok", "FAIL: why", "reference" (PyTorch fp32 against float64), "skipped: why"
    err: float | None = None
    bound: float | None = None
    same_err: float | None = None


def fill_nan(t: torch.Tensor) -> torch.Tensor:
    """Fill ``t`` with NaN in place, float8_e4m3fn too (its NaN bit pattern, 0x7F: not every torch build's ``fill_``
    takes 8-bit floats)."""
    if t.dtype == torch.float8_e4m3fn:
        t.view(torch.uint8).fill_(0x7F)
    else:
        t.fill_(float("nan"))
    return t


def _poison(engine, x: torch.Tensor) -> None:
    """NaN into the engine's activation buffers for ``x``'s shape and, on a GPU, into freed allocator blocks of
    the sizes the call allocates (so a fresh output that is not fully written holds NaN)."""
    impl = engine._impl
    if hasattr(impl, "buffers"):
        engine.reserve(*x.shape[:1], *x.shape[2:])
        for buf in impl.buffers(x.shape[0], x.shape[2], x.shape[3]):
            fill_nan(buf)
    if x.device.type == "cuda":  # the next allocation of the output's size reuses this block
        del_me = torch.full_like(x, float("nan"))
        del del_me


def _dtype_name(dtype: torch.dtype) -> str:
    return next(name for name, d in _DTYPES.items() if d == dtype)


def _not_checked(backend: str, dtype: torch.dtype, device: torch.device) -> str | None:
    """Why ``backend`` in ``dtype`` is not checked on ``device`` (known before it runs), or None."""
    from .engine import _backend_class, _why_unavailable

    if (why := _why_unavailable(backend, device)) is not None:
        return why
    if dtype not in _backend_class(backend).dtypes:
        return "not a dtype of this backend"
    if dtype == torch.bfloat16 and backend == "triton" and device.type != "cuda":
        return BF16_DOT_REASON
    return None


def verify(
    models: dict[str, VDSR] | None = None,
    device: str | torch.device | None = None,
    backends: list[str] | None = None,
    dtypes: list[torch.dtype] | None = None,
    shapes: list[tuple[int, int, int]] | None = None,
    seed: int | None = None,
    report=None,
) -> dict:
    """Check every fast backend that runs on ``device`` in each of its dtypes against the float64 reference.

    ``models``: name -> VDSR (default: the shipped weights and :func:`random_vdsr`); ``backends``: default every
    available one but the PyTorch reference; ``shapes``: (N, H, W) inputs (default 45x38, a batch of 3 of 33x70,
    and on a GPU a 1080p plane); ``seed``: of the random inputs (default: a fresh one, reported). ``report``: called
    with each :class:`Row` as it is done. Returns ``{"device", "seed", "rows", "ok", "checked", "unavailable"}``
    (``checked``: the fast-backend checks that ran, passed or not; ``unavailable``: the backends not checked because
    they cannot run on ``device``, with the reason).
    """
    from .engine import BACKENDS, Engine, _why_unavailable, resolve_device

    device = resolve_device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    cuda = device.type == "cuda"
    if models is None:
        from .weights import load

        models = {"shipped": load(), "random": random_vdsr(seed=1)}
    if shapes is None:
        shapes = [(1, 45, 38), (3, 33, 70)] + ([(1, 1080, 1920)] if cuda else [])
    if backends is None:
        backends = [b for b in BACKENDS if b != "torch" and _why_unavailable(b, device) is None]
    seed = int.from_bytes(os.urandom(4), "little") if seed is None else seed
    g = torch.Generator().manual_seed(seed)
    rows: list[Row] = []

    def add(row: Row) -> None:
        rows.append(row)
        if report is not None:
            report(row)

    for wname, model in models.items():
        model = model.to(device).eval()
        for n, h, w in shapes:
            shape = (n, 1, h, w)
            x = torch.rand(shape, generator=g).to(device)
            with torch.no_grad():
                ref = ref64(model, x)
            same = {dtype: Engine(model, backend="torch", dtype=dtype, device=device)(x)
                    for dtype in dict.fromkeys([torch.float32, *(dtypes or ATOL)])}
            c = compare(same[torch.float32], same[torch.float32], ref, torch.float32)
            # The reference itself in fp32: within ATOL of float64 (its "2 * same_err" is its own error).
            ok = c.nonfinite == 0 and c.err <= ATOL[torch.float32] * c.scale
            add(Row(wname, "torch", "fp32", shape, "reference" if ok else "FAIL: PyTorch fp32 is not within "
                    f"{ATOL[torch.float32]:.0e} of float64", c.err, ATOL[torch.float32] * c.scale, c.err))  # fmt: skip
            for backend in backends:
                for dtype in dtypes or list(ATOL):
                    row = Row(wname, backend, _dtype_name(dtype), shape, "")
                    if (why := _not_checked(backend, dtype, device)) is not None:
                        row.status = f"skipped: {why}"
                    else:
                        row.status = _check(model, backend, dtype, device, x, same[dtype], ref, row)
                    add(row)
    unavailable = {b: why for b in BACKENDS if b not in backends and (why := _why_unavailable(b, device)) is not None}
    checked = sum(r.backend != "torch" and not r.status.startswith("skipped") for r in rows)
    return {"device": str(device), "seed": seed, "rows": rows, "ok": all(not r.status.startswith("FAIL") for r in rows),
            "checked": checked, "unavailable": unavailable}


def _check(model, backend, dtype, device, x, same, ref, row: Row) -> str:
    from .engine import BackendUnavailable, Engine, SelfCheckFailed

    graphs = {"cuda_graphs": True} if device.type == "cuda" else {}  # as upscale() runs them
    try:
        engine = Engine(model, backend=backend, dtype=dtype, device=device, **graphs)
        eager = Engine(model, backend=backend, dtype=dtype, device=device) if graphs else engine
    except BackendUnavailable as e:
        # Its self-check failed on this device: a wrong kernel. Any other refusal is a model, dtype or GPU the backend
        # does not take (FP8 below compute capability 8.9, the CUDA kernels on a model not 64 channels wide): not checked.
        return f"{'FAIL' if isinstance(e, SelfCheckFailed) else 'skipped'}: {e}"
    outs = []
    for run in (engine, engine, eager):
        _poison(run, x)
        outs.append(run(x).clone())
    c = compare(outs[0], same, ref, dtype)
    row.err, row.bound, row.same_err = c.err, c.bound, c.same_err
    if c.nonfinite:
        return f"FAIL: {c.nonfinite} NaN/Inf outputs (pixels never written or stale memory read), first near {c.where}"
    if c.err > c.bound:
        return f"FAIL: max error {c.err:.3g} at {c.where} > bound {c.bound:.3g}"
    if not c.mean_ok:
        return f"FAIL: mean error {c.mean_err:.3g} > bound {c.mean_bound:.3g} ({FP8_MEAN_FACTOR} x the FP8 emulation's + 1e-4)"
    if not torch.equal(outs[0], outs[1]):
        return "FAIL: a second run on NaN-poisoned buffers gave other bits (stale memory read)"
    if not torch.equal(outs[0], outs[2]):
        return "FAIL: the eager engine's bits differ from the CUDA-graph replay's"
    return "ok"


_NAMED = {"720p": (720, 1280), "1080p": (1080, 1920), "4k": (2160, 3840)}


def shape_arg(text: str) -> tuple[int, int, int]:
    """``WxH`` (as ``--size`` takes it) or 720p / 1080p / 4k, optionally ``:N`` for a batch of N: -> (N, H, W)."""
    size, colon, batch = text.strip().lower().partition(":")
    try:
        h, w = _NAMED[size] if size in _NAMED else size_arg(size)[::-1]
        if colon and not (batch.isdigit() and int(batch) >= 1):
            raise argparse.ArgumentTypeError
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT or 720p/1080p/4k, optionally :BATCH, got {text!r}") from None
    return (int(batch) if colon else 1, h, w)


def seed_arg(text: str) -> int:
    """``--seed``: a whole number from 0 to 2**64 - 1 (what torch's generator takes)."""
    try:
        seed = int(text)
    except ValueError:
        seed = -1
    if not 0 <= seed < 2**64:
        raise argparse.ArgumentTypeError(f"expected a whole number from 0 to 2**64 - 1, got {text!r}")
    return seed


EXIT_STATUS = ("Exit status: 0 every check passed (without --backend/--dtype also where no fast backend runs: then only "
               "the PyTorch reference is checked, as the last line says); 1 a check failed; 2 a usage error, bad "
               "weights, out of memory, or none of the checks asked for by --backend/--dtype can run here.")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="vdsr-fast verify",
        description="Check the fast backends on this machine against the float64 reference (the project's "
        "equivalence rule, README's Equivalence: err <= 2 * err(PyTorch same dtype) + ATOL[dtype] * scale), on fresh random inputs, the shipped weights and "
        "random ones, from NaN-poisoned buffers. " + EXIT_STATUS,
    )
    p.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--backend", action="append", choices=["cuda", "triton"],
                   help="check this backend (repeatable; default: every fast backend that runs here)")
    p.add_argument("--dtype", action="append", choices=["fp16", "bf16", "fp32", "fp8"], help="only this dtype (repeatable)")
    p.add_argument("--sizes", nargs="+", type=shape_arg, metavar="SIZE",
                   help="inputs as WxH or 720p/1080p/4k, :N for a batch (default: 38x45 70x33:3, and 1080p on a GPU)")
    p.add_argument("--weights", "-w", help="check these weights instead of the shipped ones (random ones are checked too)")
    p.add_argument("--seed", type=seed_arg,
                   help="seed of the random inputs, 0 to 2**64 - 1 (default: a fresh one, printed: pass it to repeat a run)")
    p.add_argument("--json", action="store_true", help="print one JSON object (non-finite errors as null)")
    return p


def _out_of_memory(e: BaseException) -> bool:
    return isinstance(e, torch.OutOfMemoryError) or "can't allocate memory" in str(e)  # the latter: the CPU allocator


def main(argv: list[str] | None = None) -> int:
    from .engine import BACKENDS, _why_unavailable

    args = build_parser().parse_args(sys.argv[1:] if argv is None else list(argv))
    dtypes = list(dict.fromkeys(_DTYPES[d] for d in args.dtype or [])) or None
    backends = [b for b in BACKENDS if b in args.backend] if args.backend else None
    try:
        device = _device(args.device)
        for b in backends or []:  # as upscale --backend does (was: every row skipped and exit status 0)
            if (why := _why_unavailable(b, device)) is not None:
                raise CliError(f"--backend {b} cannot run on {device}: {why}")
        if args.backend or args.dtype:  # checks asked for: refused before any work where none can run here
            fast = {b: _why_unavailable(b, device) for b in BACKENDS if b != "torch"}
            if backends is None and all(fast.values()):
                raise CliError(f"nothing to check: no fast backend runs on {device} ("
                               + "; ".join(f"{b}: {why}" for b, why in fast.items()) + ")")  # fmt: skip
            pairs = {(b, d): _not_checked(b, d, device) for b in backends or [b for b, why in fast.items() if why is None]
                     for d in dtypes or list(ATOL)}  # fmt: skip
            if all(pairs.values()):
                raise CliError("nothing to check: " + "; ".join(f"{b} {_dtype_name(d)}: {why}" for (b, d), why in pairs.items()))
        models = {"shipped" if args.weights is None else "given": _model(args.weights), "random": random_vdsr(seed=1)}
    except CliError as e:
        print(f"vdsr-fast verify: error: {e}", file=sys.stderr)
        return 2

    def show(r: Row) -> None:
        n, _, h, w = r.shape
        size = f"{w}x{h}" + (f":{n}" if n > 1 else "")
        nums = f"{r.err:10.3e} {r.bound:10.3e} {r.same_err:10.3e}" if r.err is not None else f"{'':32s}"
        print(f"{r.weights:8s} {r.backend:7s} {r.dtype:5s} {size:>12s} {nums}  {r.status}", flush=True)

    if not args.json:
        print(f"{'weights':8s} {'backend':7s} {'dtype':5s} {'size':>12s} {'max err':>10s} {'bound':>10s} {'torch err':>10s}  result")
    t0 = time.perf_counter()
    try:
        r = verify(models, device, backends, dtypes, args.sizes, args.seed, None if args.json else show)
    except (torch.OutOfMemoryError, RuntimeError) as e:  # was: a traceback and exit status 1, a check's failure
        if not _out_of_memory(e):
            raise
        print(f"vdsr-fast verify: error: out of memory on {device} ({str(e).splitlines()[0][:200]}): the float64 "
              "reference takes about 1 KB per pixel of an input; give smaller --sizes", file=sys.stderr)  # fmt: skip
        return 2
    failed = sum(x.status.startswith("FAIL") for x in r["rows"])
    # --backend/--dtype asked for checks and none ran (e.g. skipped at run time: FP8 below compute capability 8.9)
    nothing = not failed and not r["checked"] and (args.backend or args.dtype)
    if args.json:
        rows = [{k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in asdict(x).items()} for x in r["rows"]]
        print(json.dumps({**r, "rows": rows}, indent=1))  # strict JSON: an infinite error is null, its status says why
    else:
        checked = sum(x.status == "ok" for x in r["rows"])
        for name, why in r["unavailable"].items():
            print(f"not checked: {name}: {why}")
        if failed:
            verdict = f"{failed} check(s) FAILED"
        elif checked:
            verdict = f"all {checked} fast-backend checks passed"
        elif nothing:
            verdict = "nothing checked: every check asked for was skipped (above)"
        else:
            verdict = "no fast backend runs here: only the PyTorch reference was checked"
        print(f"{verdict} on {r['device']} in {time.perf_counter() - t0:.1f} s (--seed {r['seed']} repeats it)")
    return 1 if failed else 2 if nothing else 0


if __name__ == "__main__":
    sys.exit(main())
