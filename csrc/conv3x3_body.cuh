// conv3x3 (64 -> 64) + bias + ReLU on tensor cores: the 18 body layers of VDSR -- the kernel template.
// Instantiated per storage dtype in conv3x3_body_fp16.cu / conv3x3_body_bf16.cu (two files so the
// build compiles them in parallel); variant table and dispatch in conv3x3_body.cu.
//
//   out[b][y][x][n] = relu( bias[n] + sum_{ky,kx,c} w[ky*3+kx][n][c] * in[b][y+ky-1][x+kx-1][c] )
//
// with zero padding (pixels outside the image read as 0).  in/out are NHWC fp16 or bf16, w is the
// packed [9][64][64] layer in the same dtype, bias is fp32, accumulation is fp32 (mma.sync).
//
// Implicit GEMM: M = output pixels, N = 64 out channels, K = 9 taps x 64 in channels.
//
// Shape of the kernel (persistent, weight-stationary CTAs, as many as fit on the GPU at once):
//   * The CTA copies the layer's 72 KB of weights into shared memory once (cp.async) and keeps them.
//   * Output tiles are TILE_H x 16 pixels of one image.  The CTA walks tiles blockIdx.x,
//     blockIdx.x + gridDim.x, ...; for each it loads the (TILE_H + 2) x 18 pixel halo (all 64
//     channels, zero-filled outside the image) into one of STAGES shared buffers with cp.async,
//     STAGES - 1 tiles ahead of the tile being computed.
//   * Because every tap of every output pixel is already in shared memory, the K loop needs no
//     im2col: ldmatrix takes one shared address per A row, so row r of the A fragment for tap
//     (ky, kx) simply points at halo pixel (tile_row + ky, r + kx).
//   * WARPS_M x WARPS_N warps.  Warp (wm, wn) computes tile rows wm*MI .. wm*MI + MI - 1 (one m16
//     fragment = one tile row of 16 pixels) times out channels wn*NCOLS .. wn*NCOLS + NCOLS - 1
//     (NCOLS = 64 / WARPS_N, i.e. NCOLS / 8 n8 tiles).  The variants (tile size, warps, stages) are
//     listed in VDSR_BODY_VARIANTS at the end of this file; each is one template instantiation.
//   * Epilogue: bias + ReLU in fp32 from the accumulators, rounded to T and stored straight to
//     global memory (two channels = 4 bytes per store, 16 contiguous bytes per group of 4 lanes).
//
// Shared-memory layout (no padding; an XOR swizzle keeps ldmatrix conflict-free):
//   [0, 73728)                weights: row r = tap*64 + n holds w[tap][n][0..63] (128 bytes); its
//                             16-byte chunk j (channels 8j .. 8j+7) sits at chunk slot j ^ (r & 7).
//   then STAGES halo buffers: row p = hy*18 + hx holds in[y0-1+hy][x0-1+hx][0..63]; chunk j at slot
//                             j ^ (p & 7).
//   The 8 rows one ldmatrix phase reads are 8 consecutive n (weights) or 8 consecutive pixels of a
//   halo row (activations), so their (r & 7) differ, their chunks land in 8 different 16-byte bank
//   groups, and each phase is one conflict-free 128-byte wavefront.

#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "device_utils.cuh"
#include "vdsr_kernels.h"

namespace vdsr {
namespace body {

constexpr int kC = 64;              // channels in and out
constexpr int kRowBytes = kC * 2;   // one pixel (or one weight row) of 64 16-bit values = 128 bytes
constexpr int kChunks = kRowBytes / 16;  // 8 chunks of 16 bytes per row
constexpr int kTaps = 9;
constexpr int kWeightBytes = kTaps * kC * kRowBytes;  // 73,728
constexpr int kTileW = 16;          // one m16 fragment = one tile row

// One kernel variant.  WARPS_M x WARPS_N warps; each warp computes MI tile rows (m16 fragments) times
// NCOLS = 64 / WARPS_N out channels (NI = NCOLS / 8 n8 tiles).  Per 16-channel k-step a warp issues
// MI + NI/2 ldmatrix.x4 for MI * NI mma: bigger warp tiles need fewer shared-memory bytes per mma.
template <int WARPS_M, int WARPS_N, int MI, int STAGES>
struct BodyTile {
  static_assert(WARPS_N == 1 || WARPS_N == 2 || WARPS_N == 4, "64 out channels split over 1, 2 or 4 warps");
  static_assert(STAGES >= 2, "need at least double buffering");
  static constexpr int kThreads = 32 * WARPS_M * WARPS_N;
  static constexpr int kStages = STAGES;
  static constexpr int kNCols = kC / WARPS_N;  // out channels per warp
  static constexpr int kNI = kNCols / 8;       // n8 tiles per warp
  static_assert(kNI % 2 == 0, "B fragments are loaded two n8 tiles per ldmatrix.x4");
  static constexpr int kTileH = WARPS_M * MI;  // output rows per tile
  static constexpr int kTileW = body::kTileW;
  static constexpr int kHaloH = kTileH + 2;
  static constexpr int kHaloW = kTileW + 2;
  static constexpr int kHaloPix = kHaloH * kHaloW;
  static constexpr int kStageBytes = kHaloPix * kRowBytes;
  static constexpr int kSmemBytes = kWeightBytes + STAGES * kStageBytes;
};

// Byte offset of 16-byte chunk j of shared row `row` (the XOR swizzle described above).
__device__ __forceinline__ uint32_t swz(int row, int j) {
  return static_cast<uint32_t>(row * kRowBytes + ((j ^ (row & 7)) << 4));
}

struct TileCoord {
  int b, y0, x0;  // image and the top-left output pixel of the tile
};

template <int TILE_H>
__device__ __host__ __forceinline__ TileCoord tile_coord(int tile, int tiles_x, int tiles_y) {
  const int tx = tile % tiles_x;
  const int rest = tile / tiles_x;
  return {rest / tiles_y, (rest % tiles_y) * TILE_H, tx * kTileW};
}

// Issue the cp.async copies of one tile's halo into the stage at `dst` (no commit).
template <typename K, typename T>
__device__ __forceinline__ void load_halo(uint32_t dst, const T* __restrict__ in, const TileCoord& tc, int H,
                                          int W) {
  const T* img = in + static_cast<int64_t>(tc.b) * H * W * kC;
  for (int i = threadIdx.x; i < K::kHaloPix * kChunks; i += K::kThreads) {
    const int p = i >> 3;  // halo pixel
    const int j = i & 7;   // 16-byte chunk: channels 8j .. 8j+7
    const int hy = p / K::kHaloW;
    const int hx = p - hy * K::kHaloW;
    const int y = tc.y0 - 1 + hy;
    const int x = tc.x0 - 1 + hx;
    const bool inside = static_cast<unsigned>(y) < static_cast<unsigned>(H) &&
                        static_cast<unsigned>(x) < static_cast<unsigned>(W);
    const T* src = inside ? img + (static_cast<int64_t>(y) * W + x) * kC + j * 8 : in;
    cp_async_16(dst + swz(p, j), src, inside);
  }
}

// Pieces shared by the persistent tile kernels (this one and winograd_body.cuh).  K describes the
// kernel: kThreads, kTileH, kHaloW, kHaloPix, kStageBytes, kStages.

// A layer's weights into shared memory, once per CTA: `rows` rows of 64 values (cp.async, no commit).
template <int THREADS, typename T>
__device__ __forceinline__ void load_weights(uint32_t smem_w, const T* __restrict__ w, int rows) {
  for (int i = threadIdx.x; i < rows * kChunks; i += THREADS) {
    const int row = i >> 3;
    const int j = i & 7;
    cp_async_16(smem_w + swz(row, j), w + row * kC + j * 8, true);
  }
}

// This thread's bias values for its mma C columns: out channels n0 + 8*ni + {0, 1}.
template <int NI>
__device__ __forceinline__ void load_bias(float (&bias_r)[NI][2], const float* __restrict__ bias, int n0) {
#pragma unroll
  for (int ni = 0; ni < NI; ++ni) {
    bias_r[ni][0] = bias[n0 + ni * 8];
    bias_r[ni][1] = bias[n0 + ni * 8 + 1];
  }
}

// Pipeline prologue: halos of this CTA's first kStages - 1 tiles (one group each, empty past the end
// so the group count, and with it the wait in halo_next, stays uniform).
template <typename K, typename T>
__device__ __forceinline__ void halo_prologue(uint32_t smem_halo, const T* __restrict__ in, int H, int W,
                                              int tiles_x, int tiles_y, int num_tiles) {
#pragma unroll
  for (int s = 0; s < K::kStages - 1; ++s) {
    const int tile = blockIdx.x + s * gridDim.x;
    if (tile < num_tiles) {
      load_halo<K>(smem_halo + s * K::kStageBytes, in, tile_coord<K::kTileH>(tile, tiles_x, tiles_y), H, W);
    }
    cp_async_commit();
  }
}

// Start of iteration `it` (tile `tile`): prefetch the tile kStages - 1 ahead into the stage the previous
// iteration read (the caller's last reads of it must be behind a barrier), then wait for this tile's halo.
// Groups committed so far: weights, then one per tile up to it + kStages - 1.  Allowing the newest
// kStages - 1 to be pending means the weights and this tile's halo have landed (for this thread); the
// barrier makes every thread's copies visible to the whole CTA.  Returns this tile's halo stage.
// ASYNC_PROXY: the kernel reads shared memory through wgmma descriptors (the async proxy): each thread
// fences its landed copies (fence.proxy.async) before the barrier.
template <typename K, bool ASYNC_PROXY = false, typename T>
__device__ __forceinline__ uint32_t halo_next(uint32_t smem_halo, const T* __restrict__ in, int tile, int it, int H,
                                              int W, int tiles_x, int tiles_y, int num_tiles) {
  const int next = tile + (K::kStages - 1) * gridDim.x;
  if (next < num_tiles) {
    load_halo<K>(smem_halo + ((it + K::kStages - 1) % K::kStages) * K::kStageBytes, in,
                 tile_coord<K::kTileH>(next, tiles_x, tiles_y), H, W);
  }
  cp_async_commit();
  cp_async_wait<K::kStages - 1>();
  if (ASYNC_PROXY) fence_proxy_async();
  __syncthreads();
  return smem_halo + (it % K::kStages) * K::kStageBytes;
}

// Epilogue: two adjacent out channels + bias, ReLU (NaN kept), rounded to T, one 4-byte store.
template <typename T>
__device__ __forceinline__ void store_relu2(T* dst, float v0, float v1, const float (&bias)[2]) {
  *reinterpret_cast<uint32_t*>(dst) = Storage<T>::pack2(relu_keep_nan(v0 + bias[0]), relu_keep_nan(v1 + bias[1]));
}

template <typename T, int WARPS_M, int WARPS_N, int MI, int STAGES>
__global__ void __launch_bounds__(BodyTile<WARPS_M, WARPS_N, MI, STAGES>::kThreads, 1)
    conv3x3_body_kernel(const T* __restrict__ in, T* __restrict__ out, const T* __restrict__ w,
                        const float* __restrict__ bias, int H, int W, int tiles_x, int tiles_y, int num_tiles) {
  using K = BodyTile<WARPS_M, WARPS_N, MI, STAGES>;
  constexpr int TILE_H = K::kTileH;
  constexpr int kThreads = K::kThreads;
  constexpr int kNI = K::kNI;
  constexpr int kNCols = K::kNCols;
  extern __shared__ __align__(128) unsigned char smem[];
  const uint32_t smem_w = smem_addr(smem);
  const uint32_t smem_halo = smem_w + kWeightBytes;

  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int warp_m = warp / WARPS_N;  // tile rows warp_m*MI .. warp_m*MI + MI - 1
  const int warp_n = warp % WARPS_N;  // out channels warp_n*kNCols .. + kNCols - 1
  const int g = lane >> 2;            // mma groupID
  const int t = lane & 3;             // mma threadID_in_group

  // 1. The layer's weights (row tap*64 + n), once per CTA (cp.async group 0).
  load_weights<kThreads>(smem_w, w, kTaps * kC);
  cp_async_commit();

  // This thread's bias values: out channels n = warp_n*kNCols + ni*8 + 2t + {0, 1} (its C columns).
  float bias_r[kNI][2];
  load_bias(bias_r, bias, warp_n * kNCols + 2 * t);

  // 2. Pipeline prologue (halos of this CTA's first STAGES - 1 tiles).
  halo_prologue<K>(smem_halo, in, H, W, tiles_x, tiles_y, num_tiles);

  // Per-lane parts of the ldmatrix row addresses (see device_utils.cuh for the fragment layouts).
  //   A, matrices 0..3 = (rows 0-7, k 0-7), (rows 8-15, k 0-7), (rows 0-7, k 8-15), (rows 8-15, k 8-15)
  //   -> a[0..3].  Lane l addresses A row (l & 15) = tile pixel x offset, k half (l >> 4).
  const int a_row = lane & 15;
  const int a_khalf = lane >> 4;
  //   B is stored n-major (w[tap][n][k], k contiguous): an 8(n) x 8(k) block read without .trans gives
  //   lane l the pair (n = l/4, k = 2(l%4) + {0,1}), exactly b[0] (or b[1] for k 8-15) of the n8 tile.
  //   Matrices 0..3 = (n 0-7, k 0-7), (n 0-7, k 8-15), (n 8-15, k 0-7), (n 8-15, k 8-15)
  //   -> b[ni][0], b[ni][1], b[ni+1][0], b[ni+1][1].
  const int b_n = (lane & 7) + ((lane >> 4) << 3);
  const int b_khalf = (lane >> 3) & 1;

  int it = 0;
  for (int tile = blockIdx.x; tile < num_tiles; tile += gridDim.x, ++it) {
    // 3. Prefetch the tile STAGES - 1 ahead into the stage freed at the end of the last iteration; wait
    //    for this tile's halo.
    const uint32_t halo = halo_next<K>(smem_halo, in, tile, it, H, W, tiles_x, tiles_y, num_tiles);
    float acc[MI][kNI][4];
#pragma unroll
    for (int mi = 0; mi < MI; ++mi)
#pragma unroll
      for (int ni = 0; ni < kNI; ++ni)
#pragma unroll
        for (int e = 0; e < 4; ++e) acc[mi][ni][e] = 0.0f;

#pragma unroll
    for (int tap = 0; tap < kTaps; ++tap) {
      const int ky = tap / 3;
      const int kx = tap % 3;
#pragma unroll
      for (int kk = 0; kk < kC / 16; ++kk) {  // 16 input channels per mma
        uint32_t a[MI][4];
#pragma unroll
        for (int mi = 0; mi < MI; ++mi) {
          // Output pixel (tile row r, x offset a_row) reads halo pixel (r + ky, a_row + kx) for this tap.
          const int p = (warp_m * MI + mi + ky) * K::kHaloW + a_row + kx;
          ldmatrix_x4(a[mi], halo + swz(p, kk * 2 + a_khalf));
        }
        uint32_t b[kNI][2];
#pragma unroll
        for (int np = 0; np < kNI / 2; ++np) {
          const int n = warp_n * kNCols + np * 16 + b_n;
          uint32_t r[4];
          ldmatrix_x4(r, smem_w + swz(tap * kC + n, kk * 2 + b_khalf));
          b[2 * np][0] = r[0];
          b[2 * np][1] = r[1];
          b[2 * np + 1][0] = r[2];
          b[2 * np + 1][1] = r[3];
        }
#pragma unroll
        for (int mi = 0; mi < MI; ++mi)
#pragma unroll
          for (int ni = 0; ni < kNI; ++ni) mma_16816<T>(acc[mi][ni], a[mi], b[ni][0], b[ni][1]);
      }
    }
    // Every warp is done reading this stage: the next iteration's prefetch may overwrite it.
    __syncthreads();

    // 4. Epilogue from registers: acc[mi][ni][e] is output pixel (y0 + tile row, x0 + g + 8*(e >= 2)),
    //    out channel warp_n*kNCols + ni*8 + 2t + (e & 1).
    const TileCoord tc = tile_coord<TILE_H>(tile, tiles_x, tiles_y);
#pragma unroll
    for (int mi = 0; mi < MI; ++mi) {
      const int y = tc.y0 + warp_m * MI + mi;
      if (y >= H) continue;
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const int x = tc.x0 + g + 8 * half;
        if (x >= W) continue;
        T* dst = out + ((static_cast<int64_t>(tc.b) * H + y) * W + x) * kC + warp_n * kNCols + 2 * t;
#pragma unroll
        for (int ni = 0; ni < kNI; ++ni) {
          store_relu2(dst + ni * 8, acc[mi][ni][2 * half + 0], acc[mi][ni][2 * half + 1], bias_r[ni]);
        }
      }
    }
  }
  // Drain the (empty) trailing groups before the CTA exits.
  cp_async_wait<0>();
}

constexpr int kMaxDevices = 64;

inline void check_device_index(int device) {
  if (device < 0 || device >= kMaxDevices) {
    throw std::invalid_argument("vdsr_fast._C: device index " + std::to_string(device) + " out of range");
  }
}

template <typename T>
using TileKernel = void (*)(const T*, T*, const T*, const float*, int, int, int, int, int);

// Every kernel's launcher owns one ResidentCtas table (a static of its own instantiation).
using ResidentCtas = int[kMaxDevices];

// The persistent grid of a tile kernel described by K (K::kThreads, K::kTileH x K::kTileW pixels per tile,
// K::kSmemBytes) over n images of h x w_: one CTA per tile, at most as many as fit on the GPU at once.
struct PersistentGrid {
  int grid, tiles_x, tiles_y, num_tiles;
};

template <typename K, typename Kernel>
PersistentGrid persistent_grid(Kernel kernel, ResidentCtas& resident_ctas, int n, int h, int w_, int device) {
  check_device_index(device);
  // Once per device and kernel (the module is called with the GIL held, so no race): opt in to
  // > 48 KB of dynamic shared memory (a per-function, per-context attribute) and compute how many
  // CTAs fit on the GPU at once -- the persistent grid size.  Cached in the kernel's own table (the
  // caller's: kernels that share a tile shape K, like strip variants 6-9, must not share it -- run 7 on an
  // H200 launched variant 7 after 6 with 6's cache and no opt-in: 'invalid argument') so that a forward pass
  // makes no host-side CUDA queries (cheap launches, and nothing but launches inside a graph capture).
  if (resident_ctas[device] == 0) {
    VDSR_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, K::kSmemBytes));
    int sms = 0;
    VDSR_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
    int per_sm = 0;
    VDSR_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, K::kThreads, K::kSmemBytes));
    if (per_sm < 1) {
      throw std::runtime_error("vdsr_fast._C: body kernel variant with " + std::to_string(K::kSmemBytes) +
                               " bytes of shared memory cannot run on device " + std::to_string(device));
    }
    resident_ctas[device] = sms * per_sm;
  }
  const int tiles_x = (w_ + K::kTileW - 1) / K::kTileW;
  const int tiles_y = (h + K::kTileH - 1) / K::kTileH;
  const int64_t num_tiles64 = static_cast<int64_t>(n) * tiles_x * tiles_y;
  if (num_tiles64 > INT32_MAX) {
    throw std::invalid_argument("vdsr_fast._C: input too large for the tiled kernels (" +
                                std::to_string(num_tiles64) + " tiles)");
  }
  const int num_tiles = static_cast<int>(num_tiles64);
  return {num_tiles < resident_ctas[device] ? num_tiles : resident_ctas[device], tiles_x, tiles_y, num_tiles};
}

// Launch a persistent tile kernel of the TileKernel signature (persistent_grid).
template <typename K, typename T>
void launch_persistent(TileKernel<T> kernel, ResidentCtas& resident_ctas, const void* in, void* out, const void* w,
                       const float* b, int n, int h, int w_, int device, cudaStream_t stream) {
  const PersistentGrid g = persistent_grid<K>(kernel, resident_ctas, n, h, w_, device);
  kernel<<<g.grid, K::kThreads, K::kSmemBytes, stream>>>(static_cast<const T*>(in), static_cast<T*>(out),
                                                         static_cast<const T*>(w), b, h, w_, g.tiles_x, g.tiles_y,
                                                         g.num_tiles);
  VDSR_CHECK_LAUNCH(kernel);
}

template <typename T, int WARPS_M, int WARPS_N, int MI, int STAGES>
void launch_variant(const void* in, void* out, const void* w, const float* b, int n, int h, int w_, int device,
                    cudaStream_t stream, bool /*pdl*/) {
  static ResidentCtas resident = {};
  launch_persistent<BodyTile<WARPS_M, WARPS_N, MI, STAGES>, T>(conv3x3_body_kernel<T, WARPS_M, WARPS_N, MI, STAGES>,
                                                               resident, in, out, w, b, n, h, w_, device, stream);
}

// The variants: (warps along M, warps along N, tile rows per warp, pipeline stages).  Index = variant id.
// Tiles are always 16 pixels wide (one m16 fragment per tile row).
#define VDSR_BODY_VARIANTS(X)                                                                    \
  X(4, 2, 4, 3) /* 0: 16x16 px, 8 warps of 64 px x 32 ch, 3 stages (194 KB: Hopper)      */ \
  X(4, 2, 4, 2) /* 1: 16x16 px, 8 warps of 64 px x 32 ch, 2 stages (153 KB: A100 too)    */ \
  X(4, 2, 2, 2) /* 2: 8x16 px,  8 warps of 32 px x 32 ch, 2 stages (117 KB)              */
// (A 4-warp variant with 64 px x 64 ch warp tiles, X(4, 1, 4, 3), halves the ldmatrix bytes per mma but
// spills registers with the fully unrolled K loop; not built.)

// The same kernel with 4 x 16-pixel tiles, for the GPUs that allow 99 KB (101,376 bytes) of shared memory per
// block -- sm_86 and sm_89 (RTX 30xx/40xx, A10, A40, L4, L40S): the weights (73,728) and two 6 x 18-pixel halo
// stages (2 x 13,824) fill it exactly.  Listed after every other variant (ids kFirstSmallVariant ..) so that the
// ids of the others stay as the benchmark results name them; the automatic choice takes them only where nothing
// else fits.  Not timed: no such GPU has been at hand.  15 is first in kAutoOrder because its warp tile (32 px x
// 32 ch) reads 4 ldmatrix.x4 per 8 mma against 16's 3 per 4; 16 has twice the warps to hide latency with.
#define VDSR_SMALL_BODY_VARIANTS(X)                                                         \
  X(2, 2, 2, 2) /* 15: 4x16 px, 4 warps of 32 px x 32 ch, 2 stages (99 KB: sm_86/sm_89) */ \
  X(2, 4, 2, 2) /* 16: 4x16 px, 8 warps of 32 px x 16 ch, 2 stages (99 KB: sm_86/sm_89) */

#define VDSR_BODY_COUNT(WM, WN, MI, S) +1
constexpr int kNumVariants = 0 VDSR_BODY_VARIANTS(VDSR_BODY_COUNT);
constexpr int kNumSmallVariants = 0 VDSR_SMALL_BODY_VARIANTS(VDSR_BODY_COUNT);

// (..., device, stream, pdl): pdl launches with programmatic stream serialization (Hopper's programmatic dependent
// launch); only the wgmma strip kernels take it (the others launch as always).
using LaunchFn = void (*)(const void*, void*, const void*, const float*, int, int, int, int, cudaStream_t, bool);

// cudaFuncGetAttributes of one fp16 body kernel: fails when the build has no image for the device.
cudaError_t probe_kernel_image(cudaFuncAttributes* attr);

}  // namespace body
}  // namespace vdsr
