// conv3x3 (64 -> 64) + bias + ReLU on Hopper's wgmma with the implicit GEMM turned around: M = the 64
// out channels (the weights, operand A), N = 128 output pixels of one image row (the activations, operand
// B), K = 9 taps x 64 in channels.  Both operands by shared-memory descriptor: body variants 6-11 (sm_90a;
// 6 is the one described here, 7-11 change its schedule: see VDSR_STRIP_VARIANTS and strip_step).  Variants
// 12-13 keep the weights in registers instead (StripTile<true>: A from registers, 64-pixel strips).
//
// Why: the m64n64k16 kernels (wgmma_body.cuh) feed 64 pixels x 64 channels per instruction and take A
// through ldmatrix: 2 KB of A + 2 KB of B per 64K multiply-adds (1/16 byte each) plus the ldmatrix
// instructions.  With the channels as M, one m64n128k16 reads 2 KB of weights + 4 KB of pixels per 128K
// multiply-adds (3/64 byte each) and no register operand at all (with the weights in registers, variants 12-13:
// 2 KB of pixels per 64K, 1/32 byte each).  The price: the shifted tap windows are
// B operands, so the activations are stored without swizzle (any 16-byte aligned start is a valid
// descriptor), and D holds (channel, pixel) fragments, stored NHWC through a stmatrix transpose.
//
// Shape (persistent, weight-stationary, 8 warps = 2 warpgroups, one CTA per SM):
//   * Work item = a pair of output rows (2p, 2p+1) of a 128-pixel strip (x0 .. x0+127) of one image;
//     items are ordered (image, strip, pair) and each CTA takes a contiguous range (tiles_y = pairs per
//     strip, tiles_x = strips), so consecutive items of a CTA share halo rows.  Warpgroup wg computes
//     row 2p + wg.
//   * Halo rows (input rows y - 1 .. y + 1 of the strip, 130 pixels: x0 - 1 .. x0 + 128, zero outside
//     the image) live in a ring of 6 row slots; halo row h (input row h - 1) is in slot h % 6.  Item p
//     reads halo rows 2p .. 2p+3; the next item needs 2 new rows.  A slot holds 8 planes (one per 16-byte
//     chunk of channels, 130 x 16 bytes each): chunk j of pixel px at j * kPlane + px * 16.  Then the B
//     operand of tap (ky, kx), channels 16kk .. 16kk+15, for output row y is the interleave-layout
//     matrix at slot(y + ky) + 2kk * kPlane + kx * 16 (8-pixel core matrices 128 bytes apart, the two
//     channel halves kPlane apart).
//   * The 72 KB of weights: the direct kernel's swizzled rows tap*64 + n at a 1024-byte boundary = the
//     canonical K-major 128-byte-swizzle layout of A (as wgmma_body.cuh's B).
//   * Per item, each warpgroup: 36 wgmma m64n128k16 (9 taps x 4 channel slices) into one of two
//     accumulator sets, one commit group; while they run, the epilogue of the previous item from the
//     other set (wait_group 1): bias + ReLU in fp32, rounded, stmatrix .trans into the warpgroup's 16 KB
//     staging tile ([pixel][64 channels], the kernels' XOR swizzle), a warpgroup barrier, then 16-byte
//     coalesced stores.
//   * Per item two CTA barriers: (A) the item's halo rows have landed (cp.async wait, then
//     fence.proxy.async: cp.async writes through the generic proxy, wgmma reads through the async one);
//     (D) after both warpgroups waited for the previous item's wgmmas, its 2 exclusive rows are free:
//     the next item's 2 rows are loaded into them (cp.async), landing while this item's wgmmas run
//     (variant 6: after the epilogue; 7 and 8: before it).
//   * TAIL (the last body layer of a fused tail, launch_strip_tail): the epilogue's staging tile is read back
//     by pixel instead of stored, and each thread writes its pixel's nine per-tap partial sums of the tail
//     conv (tail weights in 3 KB of shared memory behind the staging tiles); head_tail.cu gathers them.
//   * HEAD (the first body layer of a fused head, launch_strip_head): `in` is the fp32 Y plane, and the halo
//     rows are computed instead of copied: the head conv (1 -> 64) + bias + ReLU of their pixels, in the head
//     kernel's arithmetic (the same bits), by all 256 threads from the head weights in 2.6 KB of shared memory
//     behind the staging tiles.  The head's activation tensor is then never written or read.

#pragma once

#include <tuple>

#include "wgmma_body.cuh"

namespace vdsr {
namespace body {

// RS = false: the weights (A) by descriptor from 72 KB of shared memory, 128-pixel strips (m64n128k16, two
// accumulator sets of 64 registers).  RS = true (variants 12, 13): the weights in registers, each thread's A
// fragments of all 36 k-steps (144 registers, loaded once per CTA from global memory), 64-pixel strips
// (m64n64k16 with A from registers, two sets of 32): per 64K multiply-adds the tensor cores then read 2 KB of
// pixels from shared memory and nothing else (SS at N = 128: 6 KB per 128K, 3/64 byte against 1/32), and the
// 72 KB of weights leave shared memory.
template <bool RS, bool HEAD = false>
struct StripTile {
  static constexpr bool kRegs = RS;                 // A (the weights) from registers
  static constexpr bool kHead = HEAD;               // the halo rows computed from the Y plane (a fused head)
  static constexpr int kThreads = 256;              // 2 warpgroups
  static constexpr int kLoaders = kThreads;         // the threads that copy an item's halo rows
  static constexpr int kTileW = RS ? 64 : 128;      // pixels per row segment: the wgmma N
  static constexpr int kTileH = 2;                  // rows per item: one per warpgroup
  static constexpr int kHaloW = kTileW + 2;         // 130 (66)
  static constexpr int kPlane = kHaloW * 16;        // one 16-byte channel chunk of a halo row: 2080 (1056) bytes
  static constexpr int kHaloRowBytes = kChunks * kPlane;  // 16,640 (8,448): a multiple of 128
  static constexpr int kRing = 6;                   // halo row slots
  static constexpr int kStages = kRing;             // (the variant table's "stages")
  static constexpr int kStagingBytes = kTileW * kRowBytes;  // one warpgroup's output row: 16 (8) KB
  static constexpr int kAcc = kTileW / 2;           // fp32 accumulators per thread and set
  static constexpr int kASteps = RS ? 36 : 1;       // A fragments held in registers (k-steps)
  static constexpr int kAlign = RS ? 128 : 1024;    // the swizzled weights need a 1024-byte boundary
  static constexpr int kWeightSmem = RS ? 0 : kWeightBytes;
  static constexpr int kSmemBytes = kAlign + kWeightSmem + kRing * kHaloRowBytes + 2 * kStagingBytes;
  static_assert(kSmemBytes <= 227 * 1024, "Hopper's opt-in shared memory per block");
  static_assert(kPlane < (1 << 18) && (kHaloRowBytes % 128) == 0, "descriptor fields, staging alignment");
};

// TAIL (the last body layer of a fused tail): the tail conv's weights behind the staging tiles, fp32, channel
// c's nine taps at [c][0..8] of rows of kTailStride floats (three 16-byte loads per channel; 9..11 zero).
constexpr int kTailStride = 12;
constexpr int kTailBytes = kC * kTailStride * 4;  // 3 KB
// HEAD (the first body layer of a fused head): the head conv's weights and biases behind the staging tiles, fp32,
// kHeadStride floats per 16-byte channel chunk j: w0 of channels 8j .. 8j+7 as [tap][8] (72), their 8 biases, 4
// pad (a warp's threads on different chunks then read 8 distinct 16-byte bank groups).
constexpr int kHeadStride = 84;
constexpr int kHeadBytes = kChunks * kHeadStride * 4;  // 2,688
// TAIL with SPREAD (tail_spread): each warpgroup stages its row's partial sums [pixel][9] fp32 behind the tail weights.
template <bool RS>
constexpr int kZStageBytes = StripTile<RS>::kTileW * 9 * 4;  // 4,608 (2,304)
template <bool TAIL, bool RS, bool HEAD = false, bool SPREAD = false>
struct StripLaunch : StripTile<RS, HEAD> {  // the launch's shared memory
  static_assert(!(TAIL && HEAD), "one layer is either the first or the last");
  static_assert(TAIL || HEAD || !SPREAD, "SPREAD is a schedule of the TAIL epilogue or of the HEAD rows");
  static constexpr int kSmemBytes = StripTile<RS, HEAD>::kSmemBytes + (TAIL ? kTailBytes : 0) + (HEAD ? kHeadBytes : 0) +
                                    (TAIL && SPREAD ? 2 * kZStageBytes<RS> : 0);
};
static_assert(StripLaunch<true, false>::kSmemBytes <= 227 * 1024, "Hopper's opt-in shared memory per block");
static_assert(StripLaunch<false, false, true>::kSmemBytes <= 227 * 1024, "Hopper's opt-in shared memory per block");
static_assert(StripLaunch<true, false, false, true>::kSmemBytes <= 227 * 1024, "Hopper's opt-in shared memory per block");

// Where a TAIL epilogue writes: z[N][H][W][9] fp32, from the weights at shared address tw.
struct StripTail {
  float* __restrict__ z;
  uint32_t tw;
};

// cp.async of halo unit i (16 bytes: chunk i % 8 of pixel i / 8 of the rows from h0 on) into its ring slot
// (chunk j of pixel px at j * kPlane + px * 16).
template <typename K, typename T>
__device__ __forceinline__ void strip_load_unit(uint32_t ring, const T* __restrict__ in, const T* img, int x0, int h0,
                                                int i, int H, int W) {
  const int j = i & 7;  // chunk: channels 8j .. 8j+7
  const int p = i >> 3;
  const int r = p / K::kHaloW;
  const int px = p - r * K::kHaloW;
  const int h = h0 + r;
  const int y = h - 1;
  const int x = x0 - 1 + px;
  const bool inside = static_cast<unsigned>(y) < static_cast<unsigned>(H) &&
                      static_cast<unsigned>(x) < static_cast<unsigned>(W);
  const T* src = inside ? img + (static_cast<int64_t>(y) * W + x) * kC + j * 8 : in;
  cp_async_16(ring + (h % K::kRing) * K::kHaloRowBytes + static_cast<uint32_t>(j * K::kPlane + px * 16), src,
              inside);
}

// cp.async of halo rows h0 .. h0 + rows - 1 (input rows h - 1, pixels x0 - 1 .. x0 + kTileW) of image b into
// their ring slots by the K::kLoaders threads (the CTA, or one warpgroup); zero-filled outside the image.  No
// commit.  ROLLED keeps the loop rolled (fewer live registers: the LOADS_FIRST schedules copy while two
// accumulator sets are live).
template <typename K, bool ROLLED, typename T>
__device__ __forceinline__ void strip_load_rows(uint32_t ring, const T* __restrict__ in, int b, int x0, int h0,
                                                int rows, int H, int W) {
  const T* img = in + static_cast<int64_t>(b) * H * W * kC;
  const int units = rows * K::kHaloW * kChunks;
  const int t = K::kLoaders == K::kThreads ? static_cast<int>(threadIdx.x) : threadIdx.x % K::kLoaders;
  if (ROLLED) {
#pragma unroll 1
    for (int i = t; i < units; i += K::kLoaders) strip_load_unit<K>(ring, in, img, x0, h0, i, H, W);
  } else {
    for (int i = t; i < units; i += K::kLoaders) strip_load_unit<K>(ring, in, img, x0, h0, i, H, W);
  }
}

// HEAD: the head weights [64][9] and biases [64] (fp32, global) -> kHeadStride floats per chunk at shared address
// hw, by the CTA's 256 threads (read after a barrier).
__device__ __forceinline__ void strip_store_head_weights(uint32_t hw, const float* __restrict__ head_w,
                                                         const float* __restrict__ head_b) {
  for (int i = threadIdx.x; i < kChunks * kHeadStride; i += 256) {
    const int j = i / kHeadStride;
    const int k = i - j * kHeadStride;
    float v = 0.0f;
    if (k < kTaps * 8) v = head_w[(8 * j + k % 8) * kTaps + k / 8];  // [tap][c]: channel 8j + k % 8, tap k / 8
    else if (k < kTaps * 8 + 8) v = head_b[8 * j + k - kTaps * 8];
    asm volatile("st.shared.f32 [%0], %1;\n" ::"r"(hw + 4 * i), "f"(v) : "memory");
  }
}

// HEAD: halo rows h0 .. h0 + rows - 1 (input rows h - 1, pixels x0 - 1 .. x0 + kTileW) of image b into their ring
// slots, computed from the fp32 Y plane y: chunk j of pixel (h - 1, x) = the head's channels 8j .. 8j+7,
// relu(b0[c] + sum_tap w0[c][tap] * Y[h - 2 + tap / 3][x - 1 + tap % 3]) in the head kernel's order (fp32, the
// bias first, taps 0..8 by fmaf, Y zero outside the image: the same bits), rounded to T; zero for a pixel outside
// the image (the body conv's padding).  Unit i is chunk i / (rows kHaloW) of pixel i % (rows kHaloW), so a warp's
// threads take consecutive pixels of one chunk: the weights are one address (a broadcast), the Y loads 32
// consecutive floats, the 16-byte stores 32 consecutive slots of one plane (no bank conflict).  The st.shared
// writes reach the wgmmas (async proxy) through the fence.proxy.async and barrier of the item that reads them.
// PART of PARTS: units PART U / PARTS .. (PART + 1) U / PARTS - 1 of the U = rows kHaloW kChunks (the HEAD SPREAD
// schedule computes one part after each epilogue part; the others all at once).
template <typename K, typename T, int PARTS = 1>
__device__ __forceinline__ void strip_head_rows(uint32_t ring, uint32_t hw, const float* __restrict__ y, int b, int x0,
                                                int h0, int rows, int H, int W, int part = 0) {
  const float* img = y + static_cast<int64_t>(b) * H * W;
  const int pixels = rows * K::kHaloW;
  const int units = pixels * kChunks;
#pragma unroll 1
  for (int i = units * part / PARTS + threadIdx.x; i < units * (part + 1) / PARTS; i += K::kThreads) {
    const int j = i / pixels;
    const int p = i - j * pixels;
    const int r = p / K::kHaloW;
    const int px = p - r * K::kHaloW;
    const int h = h0 + r;
    const int yy = h - 1;
    const int xx = x0 - 1 + px;
    uint32_t packed[4] = {0u, 0u, 0u, 0u};
    if (static_cast<unsigned>(yy) < static_cast<unsigned>(H) && static_cast<unsigned>(xx) < static_cast<unsigned>(W)) {
      const uint32_t wj = hw + j * kHeadStride * 4;
      float acc[8];
      asm volatile("ld.shared.v4.f32 {%0, %1, %2, %3}, [%4];\n"
                   : "=f"(acc[0]), "=f"(acc[1]), "=f"(acc[2]), "=f"(acc[3])
                   : "r"(wj + kTaps * 8 * 4));
      asm volatile("ld.shared.v4.f32 {%0, %1, %2, %3}, [%4];\n"
                   : "=f"(acc[4]), "=f"(acc[5]), "=f"(acc[6]), "=f"(acc[7])
                   : "r"(wj + kTaps * 8 * 4 + 16));
#pragma unroll
      for (int tap = 0; tap < kTaps; ++tap) {
        const int sy = yy + tap / 3 - 1;
        const int sx = xx + tap % 3 - 1;
        const bool in = static_cast<unsigned>(sy) < static_cast<unsigned>(H) &&
                        static_cast<unsigned>(sx) < static_cast<unsigned>(W);
        const float v = in ? __ldg(img + static_cast<int64_t>(sy) * W + sx) : 0.0f;
        float w[8];
        asm volatile("ld.shared.v4.f32 {%0, %1, %2, %3}, [%4];\n"
                     : "=f"(w[0]), "=f"(w[1]), "=f"(w[2]), "=f"(w[3])
                     : "r"(wj + tap * 32));
        asm volatile("ld.shared.v4.f32 {%0, %1, %2, %3}, [%4];\n"
                     : "=f"(w[4]), "=f"(w[5]), "=f"(w[6]), "=f"(w[7])
                     : "r"(wj + tap * 32 + 16));
#pragma unroll
        for (int c = 0; c < 8; ++c) acc[c] = fmaf(w[c], v, acc[c]);
      }
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        packed[k] = Storage<T>::pack2(relu_keep_nan(acc[2 * k]), relu_keep_nan(acc[2 * k + 1]));
      }
    }
    const uint32_t dst = ring + (h % K::kRing) * K::kHaloRowBytes + static_cast<uint32_t>(j * K::kPlane + px * 16);
    asm volatile("st.shared.v4.b32 [%0], {%1, %2, %3, %4};\n" ::"r"(dst), "r"(packed[0]), "r"(packed[1]),
                 "r"(packed[2]), "r"(packed[3])
                 : "memory");
  }
}

// The halo rows of an item: copied from the activation `in` (cp.async, not committed), or (K::kHead) computed from
// the Y plane `in` with the head weights at hw.
template <typename K, bool ROLLED, typename T>
__device__ __forceinline__ void strip_fill_rows(uint32_t ring, uint32_t hw, const T* __restrict__ in, int b, int x0,
                                                int h0, int rows, int H, int W) {
  if constexpr (K::kHead) {
    strip_head_rows<K, T>(ring, hw, reinterpret_cast<const float*>(in), b, x0, h0, rows, H, W);
  } else {
    strip_load_rows<K, ROLLED>(ring, in, b, x0, h0, rows, H, W);
  }
}

// Issue this warpgroup's wgmmas of one output row whose tap row 0 is halo row h, as one commit group: part
// PART of SPLIT (wgmmas 36 PART / SPLIT .. 36 (PART + 1) / SPLIT - 1 in the order (ky, kx, 16-channel slice);
// part 0 zeroes the accumulators).  A: the weights at smem_w, or (K::kRegs) the fragments wa[wgmma index].
template <typename K, typename T, int SPLIT, int PART>
__device__ __forceinline__ void strip_mma(float (&acc)[K::kAcc], uint32_t smem_w, const uint32_t (&wa)[K::kASteps][4],
                                          uint32_t ring, int h) {
  constexpr int kFirst = 36 * PART / SPLIT;
  constexpr int kLast = 36 * (PART + 1) / SPLIT;
  if (PART == 0) {
#pragma unroll
    for (int i = 0; i < K::kAcc; ++i) acc[i] = 0.0f;
  }
  wgmma_pin(acc);
  wgmma_fence();
#pragma unroll
  for (int q = kFirst; q < kLast; ++q) {
    const int ky = q / 12;
    const int kx = (q / 4) % 3;
    const int kk = q % 4;
    const uint32_t row = ring + ((h + ky) % K::kRing) * K::kHaloRowBytes;
    const uint64_t db = wgmma_desc_interleave(row + 2 * kk * K::kPlane + kx * 16, K::kPlane, 128);
    if constexpr (K::kRegs && K::kTileW == 128) {
      wgmma_m64n128k16_rs<T>(acc, wa[q], db);
    } else if constexpr (K::kRegs) {
      wgmma_m64n64k16<T>(acc, wa[q], db);
    } else {
      const uint64_t da = wgmma_desc_sw128(smem_w + (ky * 3 + kx) * kC * kRowBytes + kk * 32);
      wgmma_m64n128k16_ss<T>(acc, da, db);
    }
  }
  wgmma_commit();
  wgmma_pin(acc);
}

// zs[t] += a * (tail weight of tap t of the channel whose row of kTailStride floats is at shared address wc).
__device__ __forceinline__ void tail_fma(float (&zs)[9], float a, uint32_t wc) {
  float w[12];
#pragma unroll
  for (int k = 0; k < 3; ++k) {
    asm volatile("ld.shared.v4.f32 {%0, %1, %2, %3}, [%4];\n"
                 : "=f"(w[4 * k]), "=f"(w[4 * k + 1]), "=f"(w[4 * k + 2]), "=f"(w[4 * k + 3])
                 : "r"(wc + 16 * k));
  }
#pragma unroll
  for (int t = 0; t < 9; ++t) zs[t] = fmaf(a, w[t], zs[t]);
}

// SPREAD (the fused tail's spread schedule): the tail conv's partial sums of the pixels that part PART of SPLIT has
// just staged (pixels kP0 .. kP0 + kNpix - 1 of the row), in that part, so that they run between the item's wgmma
// groups like the rest of the epilogue, where the plain TAIL sums the whole row after the last group.  kQ = 128 /
// kNpix threads per pixel, each over kC / kQ channels (chunks q kC / kQ / 8 ..): the thread of lane l of warp w takes
// pixel kP0 + w (32 / kQ) + l % (32 / kQ) and channel block q = l / (32 / kQ), so the 8 lanes of each quarter-warp
// phase read 8 consecutive pixels of one chunk (8 distinct 16-byte columns of the swizzled tile) and one weight
// vector (a broadcast).  Its activations stay in registers; tap by tap (the tail weights are [tap][64] fp32 here, at
// tail.tw: 16-byte loads of 4 channels) it sums its channels in order, the kQ sums of the pixel meet by __shfl_xor
// over lanes 32 / kQ apart ((s0 + s1) + (s2 + s3): the same value in every lane), and the q = 0 lane stages the tap's
// sum at [pixel][9] (9 odd: a warp's 8 staging lanes hit 8 banks).  One tap's sum live at a time: both accumulator
// sets are live in the parts before the last.  Then a warpgroup barrier and the part's 9 kNpix contiguous words of z
// go out by consecutive threads.  The parts' staging words are disjoint; the next item's parts reach them only after
// their own first barrier.
template <typename K, typename T, int SPLIT, int PART>
__device__ __forceinline__ void strip_tail_part(uint32_t stg, uint32_t zst, const StripTail& tail, int b, int y,
                                                int x0, int H, int W, int wg) {
  constexpr int kPairs = K::kTileW / 16;
  constexpr int kP0 = 16 * (kPairs * PART / SPLIT);
  constexpr int kNpix = 16 * (kPairs * (PART + 1) / SPLIT) - kP0;
  static_assert(kNpix > 0 && 128 % kNpix == 0, "a part's pixels must share the warpgroup's 128 threads evenly");
  constexpr int kQ = 128 / kNpix;           // threads per pixel
  constexpr int kPerWarp = 32 / kQ;         // pixels per warp
  constexpr int kChunksPer = kChunks / kQ;  // 16-byte channel chunks per thread
  static_assert(kQ <= 4, "a quarter-warp phase (8 lanes) must hold one channel block: at most 4 threads per pixel");
  const int tid = threadIdx.x & 127;
  const int lane = tid & 31;
  const int px = kP0 + (tid >> 5) * kPerWarp + lane % kPerWarp;  // pixel in the row
  const int q = lane / kPerWarp;                                   // channel block
  named_barrier(1 + wg, 128);  // the part's activations are staged
  const bool live = y < H && x0 + px < W;
  uint32_t u[kChunksPer][4];
#pragma unroll
  for (int jj = 0; jj < kChunksPer; ++jj) {
    u[jj][0] = u[jj][1] = u[jj][2] = u[jj][3] = 0u;
    if (live) {
      asm volatile("ld.shared.v4.b32 {%0, %1, %2, %3}, [%4];\n"
                   : "=r"(u[jj][0]), "=r"(u[jj][1]), "=r"(u[jj][2]), "=r"(u[jj][3])
                   : "r"(stg + swz(px, q * kChunksPer + jj)));
    }
  }
#pragma unroll
  for (int t = 0; t < kTaps; ++t) {
    float zt = 0.0f;
#pragma unroll
    for (int jj = 0; jj < kChunksPer; ++jj) {
      const uint32_t wrow = tail.tw + 4 * (t * kC + 8 * (q * kChunksPer + jj));  // channels 8j .. 8j+7 of tap t
#pragma unroll
      for (int h2 = 0; h2 < 2; ++h2) {
        float w4[4];
        asm volatile("ld.shared.v4.f32 {%0, %1, %2, %3}, [%4];\n"
                     : "=f"(w4[0]), "=f"(w4[1]), "=f"(w4[2]), "=f"(w4[3])
                     : "r"(wrow + 16 * h2));
#pragma unroll
        for (int k = 0; k < 2; ++k) {
          const float2 a = Storage<T>::unpack2(u[jj][2 * h2 + k]);  // channels 8j + 4h2 + 2k, + 1
          zt = fmaf(a.x, w4[2 * k], zt);
          zt = fmaf(a.y, w4[2 * k + 1], zt);
        }
      }
    }
#pragma unroll
    for (int m = kPerWarp; m < 32; m <<= 1) zt += __shfl_xor_sync(0xffffffffu, zt, m);
    if (live && q == 0) asm volatile("st.shared.f32 [%0], %1;\n" ::"r"(zst + 4 * (9 * px + t)), "f"(zt) : "memory");
  }
  named_barrier(1 + wg, 128);
  if (y >= H) return;
  float* zrow = tail.z + ((static_cast<int64_t>(b) * H + y) * W + x0 + kP0) * 9;
  const int words = 9 * (min(kP0 + kNpix, W - x0) - kP0);
#pragma unroll
  for (int i = tid; i < 9 * kNpix; i += 128) {
    if (i < words) {
      float v;
      asm volatile("ld.shared.f32 %0, [%1];\n" : "=f"(v) : "r"(zst + 4 * (9 * kP0 + i)) : "memory");
      zrow[i] = v;
    }
  }
}

// SPREAD: the tail weights [9][64] (fp32, global) copied as they are to shared address tw, by the CTA's 256 threads
// (read after barrier (A) of the first item).
__device__ __forceinline__ void strip_store_tail_weights_by_tap(uint32_t tw, const float* __restrict__ tail_w) {
  for (int i = threadIdx.x; i < kTaps * kC; i += 256) {
    asm volatile("st.shared.f32 [%0], %1;\n" ::"r"(tw + 4 * i), "f"(tail_w[i]) : "memory");
  }
}

// Epilogue of one output row y (pixels x0 ..) from this warpgroup's accumulators: D[m][n] = channel
// 16 wr + g (+8) at pixel 8i + 2t (+1) in acc[4i .. 4i+3] (warp wr of the group, g = lane / 4, t = lane % 4).
// Part PART of SPLIT: step 1 for the 8-pixel blocks 2 [8 PART / SPLIT] .. 2 [8 (PART + 1) / SPLIT] - 1 (pairs of
// blocks per stmatrix), and after the last part the barrier and step 2 (SPLIT = 1: all of it).
// TAIL: step 2 writes the tail conv's partial sums of the row (tail.z) instead of the activation (out); with SPREAD,
// each part writes those of its own pixels (strip_tail_part) instead.
template <typename K, typename T, int SPLIT = 1, int PART = 0, bool TAIL = false, bool SPREAD = false>
__device__ __forceinline__ void strip_epilogue(const float (&acc)[K::kAcc], uint32_t stg, T* __restrict__ out,
                                               const StripTail& tail, const float (&bias_r)[2], int b, int y, int x0,
                                               int H, int W, int wg, int wr, int lane) {
  // 1. bias + ReLU, rounded to T; stmatrix .trans: matrix (i, half) = channels 16wr + 8half .. +7 x pixels
  //    8i .. 8i+7, stored transposed as 8 pixel rows of 8 channels (16 bytes) at chunk 2wr + half.
  constexpr int kPairs = K::kTileW / 16;  // stmatrix x4 per row: pairs of 8-pixel blocks
  const int mat = lane >> 3;              // this lane addresses row (lane & 7) of matrix mat of each x4
#pragma unroll
  for (int i = 2 * (kPairs * PART / SPLIT); i < 2 * (kPairs * (PART + 1) / SPLIT); i += 2) {
    uint32_t v[4];
#pragma unroll
    for (int m = 0; m < 4; ++m) {
      const int e = 4 * (i + (m >> 1)) + 2 * (m & 1);  // (pixel block i + m/2, channel half m%2)
      const float bb = bias_r[m & 1];
      v[m] = Storage<T>::pack2(relu_keep_nan(acc[e] + bb), relu_keep_nan(acc[e + 1] + bb));
    }
    const int px = 8 * (i + (mat >> 1)) + (lane & 7);
    stmatrix_x4_trans(stg + swz(px, 2 * wr + (mat & 1)), v);
  }
  if constexpr (TAIL && SPREAD) {
    strip_tail_part<K, T, SPLIT, PART>(stg, tail.tw + kTailBytes + wg * kZStageBytes<K::kRegs>, tail, b, y, x0, H, W,
                                       wg);
    return;
  }
  if (PART + 1 < SPLIT) return;
  named_barrier(1 + wg, 128);
  if (y >= H) return;
  const int tid = threadIdx.x & 127;
  if (TAIL) {
    // 2'. Thread tid (< kTileW): the tail conv's nine per-tap partial sums of pixel tid, z[p][t] = sum_c tw[c][t] *
    //     act[p][c], over the row's rounded activations in the staging tile (chunk j of 8 consecutive pixels:
    //     8 distinct 16-byte columns, no bank conflict; the weights: one address for all, a broadcast),
    //     fp32, channels in order 0..63.  Threads past the image's right edge sum zeros (they take part in
    //     the barriers below and store nothing).
    const bool live = tid < K::kTileW && x0 + tid < W;
    float zs[9];
#pragma unroll
    for (int t = 0; t < 9; ++t) zs[t] = 0.0f;
    if (live) {
#pragma unroll
      for (int j = 0; j < kChunks; ++j) {
        uint32_t u[4];
        asm volatile("ld.shared.v4.b32 {%0, %1, %2, %3}, [%4];\n"
                     : "=r"(u[0]), "=r"(u[1]), "=r"(u[2]), "=r"(u[3])
                     : "r"(stg + swz(tid, j)));
#pragma unroll
        for (int k = 0; k < 4; ++k) {
          const float2 a = Storage<T>::unpack2(u[k]);  // channels 8j + 2k, 8j + 2k + 1
          tail_fma(zs, a.x, tail.tw + (8 * j + 2 * k) * kTailStride * 4);
          tail_fma(zs, a.y, tail.tw + (8 * j + 2 * k + 1) * kTailStride * 4);
        }
      }
    }
    // 3'. The row's partials are one contiguous run of z (pixels x0 .. x0 + 127, 9 floats each): staged in the
    //     staging tile (the activations are read: a barrier first) as [pixel][9] (thread tid's 9 words at 9 tid:
    //     9 is odd, so a warp's 32 stores hit 32 banks), then stored by consecutive threads to consecutive words
    //     (a warp writes 128 contiguous bytes; each thread's own 9 scattered words would touch ~36 sectors).
    named_barrier(1 + wg, 128);
    if (live) {
#pragma unroll
      for (int t = 0; t < 9; ++t) {
        asm volatile("st.shared.f32 [%0], %1;\n" ::"r"(stg + 4 * (9 * tid + t)), "f"(zs[t]) : "memory");
      }
    }
    named_barrier(1 + wg, 128);
    float* zrow = tail.z + ((static_cast<int64_t>(b) * H + y) * W + x0) * 9;
    const int words = 9 * min(K::kTileW, W - x0);
#pragma unroll
    for (int i = tid; i < 9 * K::kTileW; i += 128) {
      if (i < words) {
        float v;
        asm volatile("ld.shared.f32 %0, [%1];\n" : "=f"(v) : "r"(stg + 4 * i) : "memory");
        zrow[i] = v;
      }
    }
    return;
  }
  // 2. kTileW pixels x 8 chunks of 16 bytes over the warpgroup's 128 threads: a warp stores 4 whole pixels.
  T* row = out + (static_cast<int64_t>(b) * H + y) * W * kC;
#pragma unroll
  for (int k = 0; k < K::kTileW / 16; ++k) {
    const int u = k * 128 + tid;
    const int px = u >> 3;
    const int j = u & 7;
    uint4 val;
    asm volatile("ld.shared.v4.b32 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(val.x), "=r"(val.y), "=r"(val.z), "=r"(val.w)
                 : "r"(stg + swz(px, j)));
    if (x0 + px < W) *reinterpret_cast<uint4*>(row + static_cast<int64_t>(x0 + px) * kC + j * 8) = val;
  }
}

// One segment of a CTA's items (one strip of one image) and the thread's place in the CTA.  tail.tw: the shared
// address behind the staging tiles (TAIL: the tail weights; HEAD: the head weights).
template <typename T>
struct StripSeg {
  const T* __restrict__ in;
  T* __restrict__ out;
  StripTail tail;
  uint32_t smem_w, ring, stg;
  int b, x0, p0, cnt, H, W, wg, wr, lane;
};

// (D) both warpgroups are past item i - 1 (wait_group): its rows 2p - 2, 2p - 1 are free for item i + 1's.  (HEAD
// with SPREAD: the rows are computed a part at a time after the epilogue parts, strip_parts.)
template <typename K, bool ROLLED, bool SPREAD, typename T>
__device__ __forceinline__ void strip_prefetch(const StripSeg<T>& s, int i, int p) {
  __syncthreads();
  if (!(K::kHead && SPREAD) && i + 1 < s.cnt) {
    strip_fill_rows<K, ROLLED>(s.ring, s.tail.tw, s.in, s.b, s.x0, 2 * p + 4, 2, s.H, s.W);
  }
  cp_async_commit();
}

// After part 0 of an item's wgmmas: (EPI) part P of the previous item's epilogue, then part P + 1 of the wgmmas,
// and so on to the last part (the order of variant 8: epilogue 0, wgmmas 1, epilogue 1).
// HEAD with SPREAD: after the last two epilogue parts (and the wgmma group issued after the first of them), half of
// the next item's halo rows fill_h0, fill_h0 + 1 each (none when fill_h0 < 0: the segment's last item).  Not after
// the earlier parts: there most of the previous item's accumulators are still live beside the current item's, and
// a unit's 8 channel sums spilled.
template <typename K, typename T, bool EPI, int SPLIT, int P, bool TAIL, bool SPREAD>
__device__ __forceinline__ void strip_parts(const StripSeg<T>& s, const uint32_t (&wa)[K::kASteps][4],
                                            float (&cur)[K::kAcc], float (&prev)[K::kAcc], const float (&bias_r)[2],
                                            int h, int y_prev, int fill_h0) {
  if constexpr (P < SPLIT) {
    if (EPI) {
      strip_epilogue<K, T, SPLIT, P, TAIL, SPREAD>(prev, s.stg, s.out, s.tail, bias_r, s.b, y_prev, s.x0, s.H, s.W, s.wg,
                                                s.wr, s.lane);
    }
    if constexpr (P + 1 < SPLIT) strip_mma<K, T, SPLIT, P + 1>(cur, s.smem_w, wa, s.ring, h);
    if constexpr (K::kHead && SPREAD && P + 2 >= SPLIT) {
      if (fill_h0 >= 0) {
        strip_head_rows<K, T, 2>(s.ring, s.tail.tw, reinterpret_cast<const float*>(s.in), s.b, s.x0, fill_h0, 2, s.H,
                                 s.W, P + 2 - SPLIT);
      }
    }
    strip_parts<K, T, EPI, SPLIT, P + 1, TAIL, SPREAD>(s, wa, cur, prev, bias_r, h, y_prev, fill_h0);
  }
}

// Item i of a segment: its wgmmas into `cur`, then (EPI: i > 0) the epilogue of item i - 1 from `prev`.
// The schedule (variants 6-9): LOADS_FIRST issues the next item's row copies before the epilogue instead of
// after it (they then have the epilogue's time too to land); SPLIT > 1 issues the item's wgmmas in SPLIT groups
// with a part of the epilogue after each but the last (in case a warp cannot queue 36 wgmmas ahead).
template <typename K, typename T, bool EPI, bool LOADS_FIRST, int SPLIT, bool TAIL, bool SPREAD>
__device__ __forceinline__ void strip_step(const StripSeg<T>& s, const uint32_t (&wa)[K::kASteps][4], int i,
                                           float (&cur)[K::kAcc], float (&prev)[K::kAcc], const float (&bias_r)[2]) {
  const int p = s.p0 + i;
  const int h = 2 * p + s.wg;
  const int y_prev = 2 * (p - 1) + s.wg;
  cp_async_wait<0>();   // (A) this item's halo rows (and, first, the weights) have landed ...
  fence_proxy_async();  //     ... are visible to the async proxy ...
  __syncthreads();      //     ... and to every thread
  strip_mma<K, T, SPLIT, 0>(cur, s.smem_w, wa, s.ring, h);
  if (EPI) {
    wgmma_wait<1>();  // item i - 1's groups (all but the newest) are complete
    wgmma_pin(prev);
  }
  if (LOADS_FIRST) strip_prefetch<K, true, SPREAD>(s, i, p);
  strip_parts<K, T, EPI, SPLIT, 0, TAIL, SPREAD>(s, wa, cur, prev, bias_r, h, y_prev, i + 1 < s.cnt ? 2 * p + 4 : -1);
  if (!LOADS_FIRST) strip_prefetch<K, false, SPREAD>(s, i, p);
}

// TAIL: the tail weights [9][64] fp32 (global) -> shared rows of kTailStride floats at tw, by the CTA's 256 threads.
__device__ __forceinline__ void strip_store_tail_weights(uint32_t tw, const float* __restrict__ tail_w) {
  for (int i = threadIdx.x; i < kC * kTailStride; i += 256) {
    const int c = i / kTailStride;
    const int t = i - c * kTailStride;
    const float v = t < kTaps ? tail_w[t * kC + c] : 0.0f;
    asm volatile("st.shared.f32 [%0], %1;\n" ::"r"(tw + 4 * i), "f"(v) : "memory");
  }
}

// RS: this thread's A fragments of all 36 k-steps (q = tap * 4 + 16-channel slice) from the weights [tap][n][c] in
// global memory: the mma.m16n8k16 A layout of out channels 16 wr + g (+8), in channels 16 kk + 2t (+1) (+8).
template <typename T>
__device__ __forceinline__ void strip_load_a(uint32_t (&wa)[36][4], const T* __restrict__ w, int wr, int lane) {
  const uint32_t* w32 = reinterpret_cast<const uint32_t*>(w);  // pairs of channels
  const int n = 16 * wr + (lane >> 2);
  const int c2 = lane & 3;  // channel pair 2t / 2
#pragma unroll
  for (int q = 0; q < 36; ++q) {
    const int base = ((q / 4) * kC + n) * (kC / 2) + 8 * (q % 4) + c2;
    wa[q][0] = __ldg(w32 + base);
    wa[q][1] = __ldg(w32 + base + 8 * (kC / 2));
    wa[q][2] = __ldg(w32 + base + 4);
    wa[q][3] = __ldg(w32 + base + 8 * (kC / 2) + 4);
  }
}

// TAIL: the last body layer of a fused tail -- `out` unused; z[N][H][W][9] gets the tail conv's per-tap partial
// sums of the layer's output, with tail_w [9][64] fp32 (vdsr_kernels.h, launch_body_tail_partials).
// HEAD: the first body layer of a fused head -- `in` is the fp32 Y plane [N][H][W] (passed as T*), head_w [64][9] and
// head_b [64] fp32 the head conv's (vdsr_kernels.h, launch_head_body).
template <typename T, bool LOADS_FIRST, int SPLIT, bool RS, bool TAIL, bool HEAD = false, bool SPREAD = false>
__global__ void __launch_bounds__(256, 1)
    conv3x3_strip_kernel(const T* __restrict__ in, T* __restrict__ out, const T* __restrict__ w,
                         const float* __restrict__ bias, const float* __restrict__ tail_w, float* __restrict__ z, int H,
                         int W, int tiles_x, int tiles_y, int num_tiles, const float* __restrict__ head_w,
                         const float* __restrict__ head_b) {
#if VDSR_WGMMA
  using K = StripTile<RS, HEAD>;
  extern __shared__ __align__(128) unsigned char smem[];
  const uint32_t smem_w = (smem_addr(smem) + K::kAlign - 1) & ~static_cast<uint32_t>(K::kAlign - 1);
  const uint32_t ring = smem_w + K::kWeightSmem;
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int wg = warp >> 2;  // warpgroup: output row 2p + wg of item p
  const int wr = warp & 3;   // warp in the group: D rows (out channels) 16wr .. 16wr+15
  const uint32_t stg = ring + K::kRing * K::kHaloRowBytes + wg * K::kStagingBytes;

  uint32_t wa[K::kASteps][4];
  if constexpr (RS) {
    strip_load_a(wa, w, wr, lane);
  } else {
    load_weights<K::kThreads>(smem_w, w, kTaps * kC);  // committed with the first halo rows
  }
  const StripTail tail{z, ring + K::kRing * K::kHaloRowBytes + 2 * K::kStagingBytes};
  if (TAIL && SPREAD) strip_store_tail_weights_by_tap(tail.tw, tail_w);  // read after barrier (A) of the first item
  if (TAIL && !SPREAD) strip_store_tail_weights(tail.tw, tail_w);
  if (HEAD) {
    strip_store_head_weights(tail.tw, head_w, head_b);
    __syncthreads();  // read by every thread from the first halo rows on
  }
  const float bias_r[2] = {bias[16 * wr + (lane >> 2)], bias[16 * wr + (lane >> 2) + 8]};
  // Programmatic dependent launch (launch_strip_kernel's pdl; both are no-ops in a plain launch): the next kernel
  // of the stream may launch now (its CTAs wait for SMs as this grid's exit), and nothing below runs before the
  // previous kernel has completed and its writes are visible -- the first read of `in` (its output) and every
  // write (`out` or `z` may be the buffer it reads) come after this wait; only weights and biases come before.
  asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
  asm volatile("griddepcontrol.wait;\n" ::: "memory");

  // This CTA's items: a contiguous share of the (image, strip, pair) order.
  const int begin = static_cast<int>(static_cast<int64_t>(blockIdx.x) * num_tiles / gridDim.x);
  const int end = static_cast<int>(static_cast<int64_t>(blockIdx.x + 1) * num_tiles / gridDim.x);
  float acc0[K::kAcc], acc1[K::kAcc];
  for (int q = begin; q < end;) {
    // A segment: the items of one strip of one image (the ring restarts per segment).
    const int seg = q / tiles_y;
    const int p0 = q - seg * tiles_y;
    const int cnt = min(end, (seg + 1) * tiles_y) - q;
    const int b = seg / tiles_x;
    const int x0 = (seg - b * tiles_x) * K::kTileW;
    strip_fill_rows<K, LOADS_FIRST>(ring, tail.tw, in, b, x0, 2 * p0, 4, H, W);
    cp_async_commit();

    const StripSeg<T> sg{in, out, tail, smem_w, ring, stg, b, x0, p0, cnt, H, W, wg, wr, lane};
    // Item k accumulates in acc0 (k even) or acc1 (k odd).  Straight-line pairs, so that every read of an
    // accumulator set follows the wait that retired its group on every path (else ptxas serialises).
    strip_step<K, T, false, LOADS_FIRST, SPLIT, TAIL, SPREAD>(sg, wa, 0, acc0, acc1, bias_r);
    int i = 1;
    for (; i + 1 < cnt; i += 2) {
      strip_step<K, T, true, LOADS_FIRST, SPLIT, TAIL, SPREAD>(sg, wa, i, acc1, acc0, bias_r);
      strip_step<K, T, true, LOADS_FIRST, SPLIT, TAIL, SPREAD>(sg, wa, i + 1, acc0, acc1, bias_r);
    }
    const int y_last = 2 * (p0 + cnt - 1) + wg;
    // With LOADS_FIRST a step ends in its epilogue: the barrier keeps the last epilogue's staging writes
    // behind every warp's reads of the one before (a write-after-read race otherwise).
    if (i < cnt) {  // an odd item left: it goes to acc1
      strip_step<K, T, true, LOADS_FIRST, SPLIT, TAIL, SPREAD>(sg, wa, i, acc1, acc0, bias_r);
      wgmma_wait<0>();
      wgmma_pin(acc1);
      if (LOADS_FIRST) __syncthreads();
      strip_epilogue<K, T, 1, 0, TAIL, SPREAD>(acc1, stg, out, tail, bias_r, b, y_last, x0, H, W, wg, wr, lane);
    } else {  // the last item (i - 1, even) is in acc0
      wgmma_wait<0>();
      wgmma_pin(acc0);
      if (LOADS_FIRST) __syncthreads();
      strip_epilogue<K, T, 1, 0, TAIL, SPREAD>(acc0, stg, out, tail, bias_r, b, y_last, x0, H, W, wg, wr, lane);
    }
    __syncthreads();  // the ring and the staging tiles are free for the next segment
    q += cnt;
  }
  cp_async_wait<0>();
#else
  __trap();  // not an sm_90a image: launch_strip refuses to launch it
#endif
}

// The strip variants (LOADS_FIRST, SPLIT: wgmma groups per item, RS: weights in registers and 64-pixel strips);
// ids follow the wgmma ones in body_variants().
#define VDSR_STRIP_VARIANTS(X)                                                                    \
  X(false, 1, false) /* 6: copies after the epilogue, 36 wgmmas per group (timed: runs 5, 8)  */ \
  X(true, 1, false)  /* 7: the next item's copies before the epilogue (timed: run 8)          */ \
  X(true, 2, false)  /* 8: and the wgmmas in two groups around the epilogue's first half (run 8) */ \
  X(true, 3, false)  /* 9: three groups of 12, an epilogue third after each (timed: run 9)     */ \
  X(true, 4, false)  /* 10: four groups of 9, an epilogue quarter after each (run 10)          */ \
  X(true, 6, false)  /* 11: six groups of 6 (epilogue parts of 1 or 2 stmatrix pairs; run 10)  */ \
  X(true, 4, true)   /* 12: weights in registers, 64-pixel strips, four groups of 9            */ \
  X(true, 6, true)   /* 13: weights in registers, 64-pixel strips, six groups of 6             */

#define VDSR_STRIP_COUNT(L, S, R) +1
constexpr int kNumStripVariants = 0 VDSR_STRIP_VARIANTS(VDSR_STRIP_COUNT);

// Launch kKernel (a strip or ping-pong kernel, tile shape K: its own ResidentCtas, see persistent_grid) on its
// persistent grid; pdl: with programmatic stream serialization, so the grid may start while the previous kernel of
// the stream still runs (its CTAs take SMs as that one's exit and load their weights; the kernel's
// griddepcontrol.wait holds them before they touch an activation buffer).
template <typename K, typename T, auto kKernel, typename... Extra>
void launch_wgmma_tiles(const void* in, void* out, const void* w, const float* b, const float* tail_w, float* z, int n,
                        int h, int w_, int device, cudaStream_t stream, bool pdl, Extra... extra) {
  check_device_index(device);
  check_sm90a_image(kKernel, device);
  static ResidentCtas resident = {};
  const PersistentGrid g = persistent_grid<K>(kKernel, resident, n, h, w_, device);
  const auto args = std::make_tuple(static_cast<const T*>(in), static_cast<T*>(out), static_cast<const T*>(w), b,
                                    tail_w, z, h, w_, g.tiles_x, g.tiles_y, g.num_tiles, extra...);
  if (!pdl) {
    std::apply([&](auto... a) { kKernel<<<g.grid, K::kThreads, K::kSmemBytes, stream>>>(a...); }, args);
    VDSR_CHECK_LAUNCH(kKernel);
    return;
  }
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3(g.grid);
  cfg.blockDim = dim3(K::kThreads);
  cfg.dynamicSmemBytes = K::kSmemBytes;
  cfg.stream = stream;
  cfg.attrs = attr;
  cfg.numAttrs = 1;
  std::apply([&](auto... a) { VDSR_CUDA_CHECK(cudaLaunchKernelEx(&cfg, kKernel, a...)); }, args);
}

template <typename T, bool LOADS_FIRST, int SPLIT, bool RS, bool TAIL, bool SPREAD = false>
void launch_strip_kernel(const void* in, void* out, const void* w, const float* b, const float* tail_w, float* z,
                         int n, int h, int w_, int device, cudaStream_t stream, bool pdl) {
  launch_wgmma_tiles<StripLaunch<TAIL, RS, false, SPREAD>, T,
                     conv3x3_strip_kernel<T, LOADS_FIRST, SPLIT, RS, TAIL, false, SPREAD>>(
      in, out, w, b, tail_w, z, n, h, w_, device, stream, pdl, static_cast<const float*>(nullptr),
      static_cast<const float*>(nullptr));
}

template <typename T, bool LOADS_FIRST, int SPLIT, bool RS>
void launch_strip(const void* in, void* out, const void* w, const float* b, int n, int h, int w_, int device,
                  cudaStream_t stream, bool pdl) {
  launch_strip_kernel<T, LOADS_FIRST, SPLIT, RS, false>(in, out, w, b, nullptr, nullptr, n, h, w_, device, stream, pdl);
}

// The last body layer of a fused tail (TailLaunchFn): z instead of an activation.
template <typename T, bool LOADS_FIRST, int SPLIT, bool RS>
void launch_strip_tail(const void* in, float* z, const void* w, const float* b, const float* tail_w, int n, int h,
                       int w_, int device, cudaStream_t stream, bool pdl) {
  launch_strip_kernel<T, LOADS_FIRST, SPLIT, RS, true>(in, nullptr, w, b, tail_w, z, n, h, w_, device, stream, pdl);
}

// The same with the spread schedule of its partial sums (strip_tail_part: each epilogue part sums the pixels it staged,
// between the item's wgmma groups).  Only where the parts split a row's pixels evenly over a warpgroup's 128
// threads in quarter-warp phases of one channel block: the SS strips (RS false) with SPLIT 2 or 4, variants 8 and 10
// (kStripSpreadTail; SPLIT 6's 16-pixel parts would put two channel blocks in a phase, a bank conflict).
template <bool RS, int SPLIT>
constexpr bool kStripSpreadTail = !RS && (SPLIT == 2 || SPLIT == 4);
template <typename T, bool LOADS_FIRST, int SPLIT, bool RS>
void launch_strip_tail_spread(const void* in, float* z, const void* w, const float* b, const float* tail_w, int n,
                              int h, int w_, int device, cudaStream_t stream, bool pdl) {
  static_assert(kStripSpreadTail<RS, SPLIT>, "no spread tail schedule for this variant");
  launch_strip_kernel<T, LOADS_FIRST, SPLIT, RS, true, true>(in, nullptr, w, b, tail_w, z, n, h, w_, device, stream,
                                                             pdl);
}

// The first body layer of a fused head (HeadLaunchFn): the Y plane x in, the head computed on the fly, whatever the
// body variant of the other layers.  Three schedules until a GPU run ranks them (launch_head_body's `schedule`, an
// index into these arrays):
//   0: variant 10's four wgmma groups with an epilogue quarter after each (the backend's), the rows computed after
//      the epilogue, when one accumulator set is live (computing them all before it, beside both, spilled 76 bytes);
//   1: all 36 wgmmas in one group first, so that the epilogue and the rows both run while the tensor cores work
//      through the whole item;
//   2 (SPREAD): variant 10's schedule, the rows half after the third epilogue quarter (and the last wgmma group's
//      issue), half after the fourth, past the barrier that frees their slots (as LOADS_FIRST copies): so that they
//      run while the tensor cores work through the item's last group, not after the whole epilogue.
constexpr bool kHeadLoadsFirst[] = {false, false, true};
constexpr int kHeadSplits[] = {4, 1, 4};
constexpr bool kHeadSpread[] = {false, false, true};
constexpr int kNumHeadSchedules = sizeof(kHeadSplits) / sizeof(kHeadSplits[0]);
template <typename T, int SCHEDULE>
void launch_strip_head(const float* x, void* out, const void* w, const float* b, const float* head_w,
                       const float* head_b, int n, int h, int w_, int device, cudaStream_t stream, bool pdl) {
  constexpr bool kSpread = kHeadSpread[SCHEDULE];
  constexpr auto kKernel = conv3x3_strip_kernel<T, kHeadLoadsFirst[SCHEDULE], kHeadSplits[SCHEDULE], false, false,
                                                true, kSpread>;
  launch_wgmma_tiles<StripLaunch<false, false, true, kSpread>, T, kKernel>(x, out, w, b, nullptr, nullptr, n, h, w_,
                                                                           device, stream, pdl, head_w, head_b);
}

}  // namespace body
}  // namespace vdsr
