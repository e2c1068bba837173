"""FP8 (e4m3) storage for VDSR's 64 -> 64 body layers: scales, packing, and the PyTorch emulation that is the
reference the FP8 kernels are checked against.

Hopper's 8-bit tensor-core instructions run at twice the fp16 rate (DESIGN.md §7: 1245 against 686 TFLOP/s
measured). On the shipped weights, this scheme moves the paper-protocol PSNR on Set5, Set14 and BSD100 by -0.020
to +0.011 dB, but it is not pixel-equal to fp32: a few percent of the 8-bit outputs move by more than one level
(``benchmarks/quant_quality.py``; the table is in README.md). So it is opt-in.

The scheme (``Engine(model, backend="triton", dtype=torch.float8_e4m3fn)``; ``backend="torch"`` runs
:func:`emulate`, the same arithmetic in PyTorch):

- **activations**: layer ``i``'s input ``a_i >= 0`` (post-ReLU) is stored as ``q_i = e4m3(a_i / s_i)``, one static
  scale per layer. ``s_i = 2 amax_i / 448`` where ``amax_i`` is the layer's largest input on calibration planes
  of random 0/1 pixels (:func:`activation_amax`): every pixel at full contrast against its neighbours, which
  drives the activations 1.3-7x higher than natural images do (measured on T91, Set5 and Set14 for the shipped
  weights), so real content stays inside e4m3's range without any calibration data; the factor 2 is headroom on
  top (it costs only precision below 2**-6 of the scale, where e4m3 turns subnormal). Values above 448 saturate (never inf/NaN).
- **weights**: one scale per output channel, ``w = sw[co] * e4m3(w / sw[co])``, ``sw = amax / 448``.
- **the layer**: ``acc = sum q_i * wq`` (exact products, fp32 sums), then the epilogue
  ``relu(acc * alpha[co] + beta[co])`` with ``alpha = s_i sw / s_{i+1}`` and ``beta = b / s_{i+1}`` (ReLU commutes
  with the positive scale), so its output is already ``a_{i+1} / s_{i+1}``, rounded to e4m3 (nearest, ties to even,
  saturating at 448).
- **head and tail** stay fp32 on CUDA cores as in the fp16 path: the head's weights and bias are divided by
  ``s_1`` so it writes ``q_1``; the last body layer's output (``s_{i+1} = 1``), which only the tail reads, is rounded
  to fp16, and the tail's weights are fp16, as the fp16 path's fused tail.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .reference import VDSR

__all__ = ["E4M3", "E4M3_MAX", "Fp8Weights", "activation_amax", "pack", "quantize_weight", "round_e4m3", "emulate"]

E4M3 = torch.float8_e4m3fn
E4M3_MAX = 448.0
HEADROOM = 2.0  # the calibrated amax maps to E4M3_MAX / HEADROOM
CALIBRATION = (3, 64, 64)  # planes x height x width of random 0/1 pixels
CALIBRATION_SEED = 0


def round_e4m3(x: torch.Tensor) -> torch.Tensor:
    """``x`` rounded to the nearest e4m3 value (ties to even), saturating at ±448, in ``x``'s dtype."""
    return x.clamp(-E4M3_MAX, E4M3_MAX).to(E4M3).to(x.dtype)


def quantize_weight(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A conv weight (C_OUT, C_IN, 3, 3) with one scale per output channel: ``w = sw[co] * q`` with ``sw = amax / 448``;
    returns (``q`` as ``E4M3``, ``sw`` in ``w``'s dtype)."""
    sw = w.abs().amax(dim=(1, 2, 3)).clamp_min(1e-30) / E4M3_MAX
    return (w / sw[:, None, None, None]).clamp(-E4M3_MAX, E4M3_MAX).to(E4M3), sw


@torch.no_grad()
def activation_amax(model: VDSR) -> list[float]:
    """The largest input of each layer (index 0: the network's input) over :data:`CALIBRATION` planes of seeded
    random 0/1 pixels, in fp32 on the CPU: deterministic, and a function of the weights alone."""
    g = torch.Generator().manual_seed(CALIBRATION_SEED)
    h = (torch.rand(CALIBRATION[0], 1, *CALIBRATION[1:], generator=g) < 0.5).float()
    amax = []
    last = len(model.layers) - 1
    for i, conv in enumerate(model.layers):
        amax.append(float(h.abs().max()))
        h = F.conv2d(h, conv.weight.detach().float().cpu(), conv.bias.detach().float().cpu(), padding=1)
        if i < last:
            h = F.relu(h)
    return amax


@dataclass
class Fp8Weights:
    """A VDSR packed for the FP8 scheme (module docstring); tensors on one device.

    ``head_w`` (C, 1, 3, 3) and ``head_b`` (C,) fp32, divided by ``s_1``; ``body_w[i]`` (C, C, 3, 3) e4m3 values
    (as ``E4M3`` tensors); ``alpha[i]``, ``beta[i]`` (C,) fp32 epilogue vectors; ``tail_w`` (1, C, 3, 3) fp16,
    ``tail_b`` (1,) fp32; ``scales`` the activation scales ``s_1 .. s_{L-2}``.
    """

    head_w: torch.Tensor
    head_b: torch.Tensor
    body_w: list[torch.Tensor]
    alpha: list[torch.Tensor]
    beta: list[torch.Tensor]
    tail_w: torch.Tensor
    tail_b: torch.Tensor
    scales: list[float]


@torch.no_grad()
def pack(model: VDSR, device: torch.device | str = "cpu") -> Fp8Weights:
    """Scales and 8-bit weights of ``model`` (computed in float64 on the CPU, rounded once)."""
    if model.depth < 3:
        raise ValueError(f"fp8: VDSR needs at least one 64->64 body layer, got depth {model.depth}")
    ws = [w.detach().double().cpu() for w in model.weights]
    bs = [b.detach().double().cpu() for b in model.biases]
    amax = activation_amax(model)
    s = [max(a, 1e-12) * HEADROOM / E4M3_MAX for a in amax]  # s[i]: layer i's input scale (i >= 1 used)
    last = len(ws) - 1
    body_w, alpha, beta = [], [], []
    for i in range(1, last):
        q, sw = quantize_weight(ws[i])
        body_w.append(q)
        s_next = s[i + 1] if i + 1 < last else 1.0
        alpha.append(s[i] * sw / s_next)
        beta.append(bs[i] / s_next)
    f32 = torch.float32

    def put(t: torch.Tensor, dtype: torch.dtype = f32) -> torch.Tensor:
        return t.to(dtype).to(device).contiguous()

    return Fp8Weights(
        head_w=put(ws[0] / s[1]), head_b=put(bs[0] / s[1]),
        body_w=[w.to(device) for w in body_w], alpha=[put(a) for a in alpha], beta=[put(b) for b in beta],
        tail_w=put(ws[last], torch.float16), tail_b=put(bs[last]), scales=s[1:last],
    )  # fmt: skip


@torch.no_grad()
def emulate(p: Fp8Weights, y: torch.Tensor) -> torch.Tensor:
    """The FP8 network in PyTorch (fp32 arithmetic on the 8-bit values; TF32 off): the kernels' reference.

    ``y`` (N, 1, H, W) any float dtype on ``p``'s device; returns fp32.
    """
    from .engine import tf32_mode

    x = y.float()
    with tf32_mode(False):
        q = round_e4m3(F.relu(F.conv2d(x, p.head_w, p.head_b, padding=1)))
        last = len(p.body_w) - 1
        for i, (w, a, b) in enumerate(zip(p.body_w, p.alpha, p.beta, strict=True)):
            acc = F.conv2d(q, w.float(), padding=1)
            h = F.relu(acc * a[None, :, None, None] + b[None, :, None, None])
            q = round_e4m3(h) if i < last else h.half().float()
        return x + F.conv2d(q, p.tail_w.float(), p.tail_b, padding=1)
