// conv3x3 (64 -> 64) + bias + ReLU by Winograd F(2x2, 3x3) on tensor cores: an experimental body
// kernel beside the direct one (conv3x3_body.cuh, whose halo loader, tile order and swizzle it reuses).
//
//   out = relu(bias + A^T [ sum_c (B^T d_c B) * U_c ] A)  per 2x2 block of output pixels ("w-tile"),
//   d_c = the 4x4 input patch around it, U = G g G^T packed on the host ([16][64 n][64 c], p = xi*4 + nu),
//   B^T = [[1,0,-1,0],[0,1,1,0],[0,-1,1,0],[0,1,0,-1]],  A^T = [[1,1,1,0],[0,1,-1,-1]].
//
// The channel sum is 16 GEMMs (one per transformed position p) of (w-tiles x 64) by (64 x 64): 2.25x
// fewer tensor-core multiply-adds than the direct convolution's 9 taps per pixel.
//
// Shape of the kernel (persistent, weight-stationary, one CTA of 8 warps per SM):
//   * The CTA copies the layer's 128 KB of transformed weights into shared memory once (cp.async).
//   * Output tiles are 8 x 16 pixels (= 4 x 8 w-tiles) of one image, walked blockIdx.x, + gridDim.x,
//     ...; each tile's 10 x 18 pixel halo goes into one of STAGES buffers with cp.async, STAGES - 1
//     tiles ahead (load_halo of the direct kernel).
//   * Per transformed row xi = 0..3 (unrolled): every thread computes V[xi][nu] = (B^T d B)[xi][nu]
//     for 4 (w-tile, channel pair) items from the halo, in the storage dtype (two roundings: after
//     the row and after the column transform), into a 16 KB V buffer (double-buffered across xi);
//     one __syncthreads; then each warp multiplies V[xi][nu] (16 w-tiles of its half, ldmatrix) by
//     U[xi*4+nu] (16 out channels of its quarter) with mma.sync and folds the result into the four
//     output pixels' fp32 accumulators with A^T: (M A)[xi][0] = M0 + M1 + M2, (M A)[xi][1] =
//     M1 - M2 - M3, added to output row 0 for xi = 0, 1, 2 and to row 1 with sign +, -, - for xi = 1, 2, 3.
//   * Epilogue: bias + ReLU in fp32, rounded to T, 4-byte stores (two channels) per output pixel.
//
// Shared memory (rows of 128 bytes, chunk j of row r at slot j ^ (r & 7), as in the direct kernel):
//   [0, 131072)          U: row p*64 + n holds U[p][n][0..63]
//   then STAGES halos:   row hy*18 + hx holds in[y0-1+hy][x0-1+hx][0..63]
//   then 2 V buffers:    row nu*32 + wt holds V[xi][nu] of w-tile wt (= wy*8 + wx) for channels 0..63
// Synchronisation per tile: one barrier after the halo's wait_group, one after each row's transform.
// A V buffer is rewritten two rows later, after a barrier that follows its last reads; a halo stage is
// refilled one tile later, after the barrier that follows its last reads (row 3's transform).

#pragma once

#include "conv3x3_body.cuh"

namespace vdsr {
namespace body {

constexpr int kWinoPos = 16;                                 // transformed positions (xi, nu)
constexpr int kWinoWeightBytes = kWinoPos * kC * kRowBytes;  // 131,072

template <int STAGES>
struct WinoTile {
  static_assert(STAGES >= 2, "need at least double buffering");
  static constexpr int kThreads = 256;  // 8 warps: 2 (w-tile halves) x 4 (16 out channels each)
  static constexpr int kStages = STAGES;
  static constexpr int kTileH = 8;      // output rows per tile (tiles are 8 x 16 pixels)
  static constexpr int kTileW = body::kTileW;
  static constexpr int kHaloH = kTileH + 2;
  static constexpr int kHaloW = kTileW + 2;
  static constexpr int kHaloPix = kHaloH * kHaloW;
  static constexpr int kStageBytes = kHaloPix * kRowBytes;
  static constexpr int kWTilesX = kTileW / 2;                  // 8
  static constexpr int kWTiles = (kTileH / 2) * kWTilesX;      // 32
  static constexpr int kVBytes = 4 * kWTiles * kRowBytes;      // one row xi: 4 nu x 32 w-tiles x 64 ch
  static constexpr int kSmemBytes = kWinoWeightBytes + STAGES * kStageBytes + 2 * kVBytes;
  static_assert(kWTiles * 32 == 4 * kThreads, "4 transform items (w-tile, channel pair) per thread");
};

// Packed pairs of 16-bit values: a + b, a - b, rounded to T (what __hadd2 / __hsub2 compute).
template <typename T>
struct Pair;

template <>
struct Pair<__half> {
  static __device__ __forceinline__ uint32_t add(uint32_t a, uint32_t b) {
    __half2 r = __hadd2(*reinterpret_cast<__half2*>(&a), *reinterpret_cast<__half2*>(&b));
    return *reinterpret_cast<uint32_t*>(&r);
  }
  static __device__ __forceinline__ uint32_t sub(uint32_t a, uint32_t b) {
    __half2 r = __hsub2(*reinterpret_cast<__half2*>(&a), *reinterpret_cast<__half2*>(&b));
    return *reinterpret_cast<uint32_t*>(&r);
  }
};

template <>
struct Pair<__nv_bfloat16> {
  static __device__ __forceinline__ uint32_t add(uint32_t a, uint32_t b) {
    __nv_bfloat162 r = __hadd2(*reinterpret_cast<__nv_bfloat162*>(&a), *reinterpret_cast<__nv_bfloat162*>(&b));
    return *reinterpret_cast<uint32_t*>(&r);
  }
  static __device__ __forceinline__ uint32_t sub(uint32_t a, uint32_t b) {
    __nv_bfloat162 r = __hsub2(*reinterpret_cast<__nv_bfloat162*>(&a), *reinterpret_cast<__nv_bfloat162*>(&b));
    return *reinterpret_cast<uint32_t*>(&r);
  }
};

__device__ __forceinline__ uint32_t lds32(uint32_t addr) {
  uint32_t v;
  asm volatile("ld.shared.b32 %0, [%1];\n" : "=r"(v) : "r"(addr));
  return v;
}

__device__ __forceinline__ void sts32(uint32_t addr, uint32_t v) {
  asm volatile("st.shared.b32 [%0], %1;\n" ::"r"(addr), "r"(v) : "memory");
}

// Row XI of B^T applied to (v0, v1, v2, v3): v0 - v2, v1 + v2, v2 - v1, v1 - v3.
template <typename T, int XI>
__device__ __forceinline__ uint32_t bt_row(uint32_t v0, uint32_t v1, uint32_t v2, uint32_t v3) {
  if (XI == 0) return Pair<T>::sub(v0, v2);
  if (XI == 1) return Pair<T>::add(v1, v2);
  if (XI == 2) return Pair<T>::sub(v2, v1);
  return Pair<T>::sub(v1, v3);
}

// Address of channel pair cp (channels 2cp, 2cp + 1) of shared row `row` (swizzled 16-byte chunks).
__device__ __forceinline__ uint32_t pair_addr(int row, int cp) { return swz(row, cp >> 2) + ((cp & 3) << 2); }

// V[XI][nu] for nu = 0..3 of this thread's 4 (w-tile, channel pair) items, from the halo at `halo`
// into the V buffer at `vbuf`.
template <typename T, typename K, int XI>
__device__ __forceinline__ void transform_row(uint32_t halo, uint32_t vbuf) {
  constexpr int kA0 = XI == 2 ? 2 : (XI == 0 ? 0 : 1);  // B^T row XI = d[kA0] -/+ d[kA1]
  constexpr int kA1 = XI == 0 ? 2 : (XI == 1 ? 2 : (XI == 2 ? 1 : 3));
#pragma unroll
  for (int r = 0; r < 4; ++r) {
    const int i = threadIdx.x + r * K::kThreads;
    const int wt = i >> 5;  // w-tile 0..31 (a warp's 32 lanes: one w-tile, all 32 channel pairs)
    const int cp = i & 31;  // channel pair
    const int p0 = (2 * (wt / K::kWTilesX)) * K::kHaloW + 2 * (wt % K::kWTilesX);  // patch (0, 0) in the halo
    uint32_t row[4];
#pragma unroll
    for (int b = 0; b < 4; ++b) {
      const uint32_t d0 = lds32(halo + pair_addr(p0 + kA0 * K::kHaloW + b, cp));
      const uint32_t d1 = lds32(halo + pair_addr(p0 + kA1 * K::kHaloW + b, cp));
      row[b] = XI == 1 ? Pair<T>::add(d0, d1) : Pair<T>::sub(d0, d1);  // (B^T d)[XI][b]
    }
    sts32(vbuf + pair_addr(0 * K::kWTiles + wt, cp), bt_row<T, 0>(row[0], row[1], row[2], row[3]));
    sts32(vbuf + pair_addr(1 * K::kWTiles + wt, cp), bt_row<T, 1>(row[0], row[1], row[2], row[3]));
    sts32(vbuf + pair_addr(2 * K::kWTiles + wt, cp), bt_row<T, 2>(row[0], row[1], row[2], row[3]));
    sts32(vbuf + pair_addr(3 * K::kWTiles + wt, cp), bt_row<T, 3>(row[0], row[1], row[2], row[3]));
  }
}

template <typename T, int STAGES>
__global__ void __launch_bounds__(WinoTile<STAGES>::kThreads, 1)
    conv3x3_winograd_kernel(const T* __restrict__ in, T* __restrict__ out, const T* __restrict__ u,
                            const float* __restrict__ bias, int H, int W, int tiles_x, int tiles_y, int num_tiles) {
  using K = WinoTile<STAGES>;
  constexpr int TILE_H = K::kTileH;
  extern __shared__ __align__(128) unsigned char smem[];
  const uint32_t smem_u = smem_addr(smem);
  const uint32_t smem_halo = smem_u + kWinoWeightBytes;
  const uint32_t smem_v = smem_halo + STAGES * K::kStageBytes;

  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int warp_m = warp >> 2;  // w-tiles 16*warp_m .. 16*warp_m + 15 (one m16 fragment)
  const int warp_n = warp & 3;   // out channels 16*warp_n .. 16*warp_n + 15 (two n8 tiles)
  const int g = lane >> 2;
  const int t = lane & 3;

  // 1. The layer's transformed weights (row p*64 + n), once per CTA (cp.async group 0).
  load_weights<K::kThreads>(smem_u, u, kWinoPos * kC);
  cp_async_commit();

  float bias_r[2][2];  // out channels n = 16*warp_n + 8*ni + 2t + {0, 1}
  load_bias(bias_r, bias, warp_n * 16 + 2 * t);

  // 2. Pipeline prologue (conv3x3_body.cuh): halos of this CTA's first STAGES - 1 tiles.
  halo_prologue<K>(smem_halo, in, H, W, tiles_x, tiles_y, num_tiles);

  // ldmatrix lanes (as in the direct kernel): A row (lane & 15) = w-tile 16*warp_m + (lane & 15), k half
  // (lane >> 4); B: out channel 16*warp_n + b_n, k half b_khalf -> b[0][0], b[0][1], b[1][0], b[1][1].
  const int a_row = warp_m * 16 + (lane & 15);
  const int a_khalf = lane >> 4;
  const int b_n = warp_n * 16 + (lane & 7) + ((lane >> 4) << 3);
  const int b_khalf = (lane >> 3) & 1;

  int it = 0;
  for (int tile = blockIdx.x; tile < num_tiles; tile += gridDim.x, ++it) {
    // 3. Prefetch the tile STAGES - 1 ahead (into the stage read by the previous tile, whose last
    //    reads -- row 3's transform -- are behind the barrier that followed them); wait for this one.
    const uint32_t halo = halo_next<K>(smem_halo, in, tile, it, H, W, tiles_x, tiles_y, num_tiles);

    float y[2][2][2][4];  // [output row i][output col j][n8 tile ni][mma C element]
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
      for (int j = 0; j < 2; ++j)
#pragma unroll
        for (int ni = 0; ni < 2; ++ni)
#pragma unroll
          for (int e = 0; e < 4; ++e) y[i][j][ni][e] = 0.0f;

#pragma unroll
    for (int xi = 0; xi < 4; ++xi) {
      const uint32_t vbuf = smem_v + (xi & 1) * K::kVBytes;
      if (xi == 0) transform_row<T, K, 0>(halo, vbuf);
      if (xi == 1) transform_row<T, K, 1>(halo, vbuf);
      if (xi == 2) transform_row<T, K, 2>(halo, vbuf);
      if (xi == 3) transform_row<T, K, 3>(halo, vbuf);
      __syncthreads();

      float m[4][2][4];  // M[xi][nu] for this warp's fragment
#pragma unroll
      for (int nu = 0; nu < 4; ++nu)
#pragma unroll
        for (int ni = 0; ni < 2; ++ni)
#pragma unroll
          for (int e = 0; e < 4; ++e) m[nu][ni][e] = 0.0f;
#pragma unroll
      for (int nu = 0; nu < 4; ++nu) {
#pragma unroll
        for (int kk = 0; kk < kC / 16; ++kk) {
          uint32_t a[4];
          ldmatrix_x4(a, vbuf + swz(nu * K::kWTiles + a_row, kk * 2 + a_khalf));
          uint32_t b[4];
          ldmatrix_x4(b, smem_u + swz((xi * 4 + nu) * kC + b_n, kk * 2 + b_khalf));
          mma_16816<T>(m[nu][0], a, b[0], b[1]);
          mma_16816<T>(m[nu][1], a, b[2], b[3]);
        }
      }
      // A^T on both sides: (M A)[xi][0] = M0 + M1 + M2, (M A)[xi][1] = M1 - M2 - M3, into output row 0
      // (xi = 0, 1, 2) and output row 1 (xi = 1: +, xi = 2, 3: -).
#pragma unroll
      for (int ni = 0; ni < 2; ++ni) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const float ma0 = m[0][ni][e] + m[1][ni][e] + m[2][ni][e];
          const float ma1 = m[1][ni][e] - m[2][ni][e] - m[3][ni][e];
          if (xi < 3) {
            y[0][0][ni][e] += ma0;
            y[0][1][ni][e] += ma1;
          }
          if (xi == 1) {
            y[1][0][ni][e] += ma0;
            y[1][1][ni][e] += ma1;
          } else if (xi >= 2) {
            y[1][0][ni][e] -= ma0;
            y[1][1][ni][e] -= ma1;
          }
        }
      }
    }

    // 4. Epilogue: C element e of w-tile row (g + 8*(e >> 1)) of this warp's half is w-tile
    //    wt = 16*warp_m + g + 8*(e >> 1); its output pixel (i, j) is (y0 + 2*(wt / 8) + i, x0 + 2*(wt % 8) + j),
    //    out channel 16*warp_n + 8*ni + 2t + (e & 1).
    const TileCoord tc = tile_coord<TILE_H>(tile, tiles_x, tiles_y);
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int wt = warp_m * 16 + g + 8 * half;
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        const int py = tc.y0 + 2 * (wt / K::kWTilesX) + i;
        if (py >= H) continue;
#pragma unroll
        for (int j = 0; j < 2; ++j) {
          const int px = tc.x0 + 2 * (wt % K::kWTilesX) + j;
          if (px >= W) continue;
          T* dst = out + ((static_cast<int64_t>(tc.b) * H + py) * W + px) * kC + warp_n * 16 + 2 * t;
#pragma unroll
          for (int ni = 0; ni < 2; ++ni) {
            store_relu2(dst + ni * 8, y[i][j][ni][2 * half + 0], y[i][j][ni][2 * half + 1], bias_r[ni]);
          }
        }
      }
    }
  }
  cp_async_wait<0>();
}

// The Winograd variants (pipeline stages); ids follow the direct ones in body_variants().
// 2 stages: 128 KB weights + 2 x 22.5 KB halos + 2 x 16 KB V = 205 KB (3 stages would need 227.5 KB).
#define VDSR_WINO_VARIANTS(X) X(2) /* 8x16 px, 8 warps of 16 w-tiles x 16 ch, 205 KB: Hopper */

#define VDSR_WINO_COUNT(S) +1
constexpr int kNumWinoVariants = 0 VDSR_WINO_VARIANTS(VDSR_WINO_COUNT);

template <typename T, int STAGES>
void launch_winograd(const void* in, void* out, const void* w, const float* b, int n, int h, int w_, int device,
                     cudaStream_t stream, bool /*pdl*/) {
  static ResidentCtas resident = {};
  launch_persistent<WinoTile<STAGES>, T>(conv3x3_winograd_kernel<T, STAGES>, resident, in, out, w, b, n, h, w_, device,
                                         stream);
}

}  // namespace body
}  // namespace vdsr
