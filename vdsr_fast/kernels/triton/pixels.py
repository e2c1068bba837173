"""Which output pixels a program of the conv, Winograd and tail kernels covers: :func:`program_pixels`
(a ``@triton.jit`` helper, no kernel) and, on the host, :func:`program_count` (the launch grid that matches it)."""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def program_pixels(pid, M, H, W, BLOCK_M: tl.constexpr, TILE_W: tl.constexpr, OUT_M: tl.constexpr):
    """``(img, oh, ow, ok)`` of the ``BLOCK_M`` pixel slots of program ``pid``.

    TILE_W > 0: a 2-D tile of (BLOCK_M // TILE_W) rows x TILE_W columns of one image (tiles in raster
    order, image by image; ``img`` is then one scalar), so the 9 taps' loads of a program overlap in L1.
    TILE_W == 0: ``OUT_M`` consecutive pixels in raster order over N*H*W from ``pid * OUT_M`` (OUT_M <=
    BLOCK_M; the slots beyond OUT_M are masked). ``ok`` masks the slots outside the image or the batch.
    """
    rows = tl.arange(0, BLOCK_M)
    if TILE_W > 0:
        TILE_H: tl.constexpr = BLOCK_M // TILE_W
        tiles_w = tl.cdiv(W, TILE_W)
        tiles = tl.cdiv(H, TILE_H) * tiles_w
        img = pid // tiles
        t = pid - img * tiles
        oh = (t // tiles_w) * TILE_H + rows // TILE_W
        ow = (t % tiles_w) * TILE_W + rows % TILE_W
        ok = (oh < H) & (ow < W)
    else:
        offs_m = pid * OUT_M + rows
        ok = offs_m < M
        if OUT_M < BLOCK_M:
            ok = ok & (rows < OUT_M)
        hw = H * W
        img = offs_m // hw
        rem = offs_m - img * hw
        oh = rem // W
        ow = rem - oh * W
    return img, oh, ow, ok


def program_count(n: int, h: int, w: int, block_m: int, tile_w: int, out_m: int | None = None) -> int:
    """How many programs :func:`program_pixels` needs to cover ``n`` images of ``h`` x ``w`` (same arguments:
    2-D tiles of (block_m // tile_w) x tile_w per image, or runs of ``out_m`` (default block_m) pixels)."""
    if tile_w:
        return n * triton.cdiv(h, block_m // tile_w) * triton.cdiv(w, tile_w)
    return triton.cdiv(n * h * w, out_m or block_m)
