// conv3x3 (64 -> 64) + bias + ReLU on Hopper's warpgroup tensor-core instruction (wgmma, sm_90a): an
// experimental body kernel beside the mma.sync one (conv3x3_body.cuh), the same implicit GEMM
// (M = output pixels, N = 64 out channels, K = 9 taps x 64 in channels) with the same shared-memory
// layout, halo pipeline, tile walk and epilogue; only the multiply changes.
//
// Why: mma.sync reads both operands through registers.  Per 16-channel k-step a warp of the direct
// kernel loads 4 A + 2 B ldmatrix.x4 (3 KB) for 16 mma m16n8k16 (32K multiply-adds): 3/32 byte of
// shared memory per multiply-add, which at 128 bytes per clock per SM caps it at ~2/3 of Hopper's
// tensor peak before any other limit.  wgmma m64n64k16 reads B (the weights) from shared memory by
// descriptor, once per warpgroup instead of once per warp: 2 KB of A (ldmatrix) + 2 KB of B per 64K
// multiply-adds, 1/16 byte each.
//
// Shape (persistent, weight-stationary, 8 warps = 2 warpgroups, one CTA per SM):
//   * The 72 KB of weights sit at a 1024-byte aligned offset (the 128-byte swizzle's atom): rows
//     tap*64 + n with chunk j at slot j ^ (n & 7) are then exactly the canonical K-major SW128 layout
//     of B for every tap: 8 groups of 8 rows, 1024 bytes apart.
//   * Tiles are 16 x 16 pixels, halo pipeline as the direct kernel's (load_halo, STAGES buffers).
//   * Warpgroup wg computes tile rows 8wg .. 8wg+7 as two M-blocks of 64 pixels; each warp supplies one
//     16-pixel row of each block (its A fragment is the direct kernel's ldmatrix of 16 halo pixels).
//     ROW_REUSE = false: block mb = rows 8wg + 4mb + 0..3 (warp r: row 8wg + 4mb + r).  Per k-step (tap,
//     16 channels): 2 ldmatrix.x4 per warp, fence, two wgmma m64n64k16 (one per block, one B
//     descriptor), commit: 36 groups of 2 wgmma per tile.
//     ROW_REUSE = true: block mb = rows 8wg + 2r + mb (warp r: the two adjacent rows 8wg + 2r, +1).  Then
//     the halo row a warp loads for block 0's tap row ky is block 1's tap row ky - 1: per (kx, 16
//     channels) the warp loads its 4 halo rows once (4 ldmatrix.x4) for 6 wgmma (2 blocks x 3 ky): a
//     third less A traffic: 12 groups of 6 wgmma per tile.
//     Either way the A registers alternate between two sets by group parity; before refilling a set
//     the warp waits for the group that read it (wait_group 1: at most the previous group pending).
//   * Epilogue after wait_group 0: D fragment = the mma C fragment per 8 out channels, stored as the
//     direct kernel's (bias + ReLU in fp32, 4-byte stores).

#pragma once

#include "conv3x3_body.cuh"

namespace vdsr {
namespace body {

template <int STAGES, bool ROW_REUSE>
struct WgmmaTile {
  static_assert(STAGES >= 2, "need at least double buffering");
  static constexpr int kThreads = 256;  // 2 warpgroups
  static constexpr int kStages = STAGES;
  static constexpr bool kRowReuse = ROW_REUSE;
  static constexpr int kALoads = ROW_REUSE ? 4 : 2;  // A fragments per group (ldmatrix.x4 per warp)
  static constexpr int kTileH = 16;
  static constexpr int kTileW = body::kTileW;
  static constexpr int kHaloH = kTileH + 2;
  static constexpr int kHaloW = kTileW + 2;
  static constexpr int kHaloPix = kHaloH * kHaloW;
  static constexpr int kStageBytes = kHaloPix * kRowBytes;
  static constexpr int kAlign = 1024;  // the weights start on a 1024-byte boundary (slack included below)
  static constexpr int kSmemBytes = kAlign + kWeightBytes + STAGES * kStageBytes;
  static constexpr int kGroups = (ROW_REUSE ? 3 : kTaps) * (kC / 16);  // 12 (kx, kk) or 36 (tap, kk)
  // The tile row warp r of warpgroup wg supplies to M-block mb.
  static __device__ __forceinline__ int row(int wg, int r, int mb) {
    return 8 * wg + (ROW_REUSE ? 2 * r + mb : 4 * mb + r);
  }
};

template <typename T, int STAGES, bool ROW_REUSE>
__global__ void __launch_bounds__(WgmmaTile<STAGES, ROW_REUSE>::kThreads, 1)
    conv3x3_wgmma_kernel(const T* __restrict__ in, T* __restrict__ out, const T* __restrict__ w,
                         const float* __restrict__ bias, int H, int W, int tiles_x, int tiles_y, int num_tiles) {
#if VDSR_WGMMA
  using K = WgmmaTile<STAGES, ROW_REUSE>;
  extern __shared__ __align__(128) unsigned char smem[];
  const uint32_t smem_w = (smem_addr(smem) + K::kAlign - 1) & ~static_cast<uint32_t>(K::kAlign - 1);
  const uint32_t smem_halo = smem_w + kWeightBytes;

  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int wg = warp >> 2;  // warpgroup: tile rows 8wg .. 8wg+7
  const int wr = warp & 3;   // warp in the group: its rows are K::row(wg, wr, 0 / 1)
  const int g = lane >> 2;
  const int t = lane & 3;

  load_weights<K::kThreads>(smem_w, w, kTaps * kC);  // cp.async group 0
  cp_async_commit();
  float bias_r[8][2];  // out channels 8i + 2t + {0, 1}: this thread's D columns
  load_bias(bias_r, bias, 2 * t);
  halo_prologue<K>(smem_halo, in, H, W, tiles_x, tiles_y, num_tiles);

  const int a_row = lane & 15;   // A row (pixel x offset) this lane addresses, as in the direct kernel
  const int a_khalf = lane >> 4;

  int it = 0;
  for (int tile = blockIdx.x; tile < num_tiles; tile += gridDim.x, ++it) {
    // (the weights, landed with the first halo, are read by wgmma descriptors: fence them for the async proxy)
    const uint32_t halo = halo_next<K, true>(smem_halo, in, tile, it, H, W, tiles_x, tiles_y, num_tiles);
    float acc[2][32];
#pragma unroll
    for (int mb = 0; mb < 2; ++mb)
#pragma unroll
      for (int i = 0; i < 32; ++i) acc[mb][i] = 0.0f;
    uint32_t a[2][K::kALoads][4];  // [group parity][A fragment][register]
#pragma unroll
    for (int s = 0; s < K::kGroups; ++s) {
      const int kk = s % 4;  // 16 input channels per group
      const int kx = ROW_REUSE ? s / 4 : (s / 4) % 3;
      const int ky = ROW_REUSE ? 0 : (s / 4) / 3;  // without reuse one tap row per group
      if (s >= 2) wgmma_wait<1>();  // group s - 2 (the last reader of a[s % 2]) has completed
#pragma unroll
      for (int f = 0; f < K::kALoads; ++f) {
        // Fragment f: with reuse, halo row (first row of the warp) + f; else M-block f's row + ky.
        const int hrow = ROW_REUSE ? K::row(wg, wr, 0) + f : K::row(wg, wr, f) + ky;
        ldmatrix_x4(a[s % 2][f], halo + swz(hrow * K::kHaloW + a_row + kx, kk * 2 + a_khalf));
      }
      wgmma_pin(acc[0]);
      wgmma_pin(acc[1]);
      wgmma_fence();
#pragma unroll
      for (int t3 = 0; t3 < (ROW_REUSE ? 3 : 1); ++t3) {
        const int tap_y = ROW_REUSE ? t3 : ky;
        const uint64_t desc = wgmma_desc_sw128(smem_w + (tap_y * 3 + kx) * kC * kRowBytes + kk * 32);
        // Block mb's A: with reuse fragment tap_y + mb (halo row = the block's row + tap_y), else fragment mb.
        wgmma_m64n64k16<T>(acc[0], a[s % 2][ROW_REUSE ? tap_y : 0], desc);
        wgmma_m64n64k16<T>(acc[1], a[s % 2][ROW_REUSE ? tap_y + 1 : 1], desc);
      }
      wgmma_commit();
      wgmma_pin(acc[0]);
      wgmma_pin(acc[1]);
    }
    wgmma_wait<0>();
    wgmma_pin(acc[0]);
    wgmma_pin(acc[1]);
    // Every warp is done reading this stage: the next iteration's prefetch may overwrite it.
    __syncthreads();

    const TileCoord tc = tile_coord<K::kTileH>(tile, tiles_x, tiles_y);
#pragma unroll
    for (int mb = 0; mb < 2; ++mb) {
      const int y = tc.y0 + K::row(wg, wr, mb);
      if (y >= H) continue;
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const int x = tc.x0 + g + 8 * half;
        if (x >= W) continue;
        T* dst = out + ((static_cast<int64_t>(tc.b) * H + y) * W + x) * kC + 2 * t;
#pragma unroll
        for (int i = 0; i < 8; ++i) {
          store_relu2(dst + i * 8, acc[mb][4 * i + 2 * half], acc[mb][4 * i + 2 * half + 1], bias_r[i]);
        }
      }
    }
  }
  cp_async_wait<0>();
#else
  __trap();  // not an sm_90a image: launch_wgmma refuses to launch it
#endif
}

// The wgmma variants (pipeline stages, row reuse); ids follow the Winograd ones in body_variants().
// 3 stages: 1 KB alignment slack + 72 KB weights + 3 x 40.5 KB halos = 195 KB.
#define VDSR_WGMMA_VARIANTS(X)                                                         \
  X(3, false) /* 16x16 px, 2 warpgroups of 2 x 64 px x 64 ch, sm_90a               */ \
  X(3, true)  /* the same, each warp's two rows adjacent: 1/3 fewer A loads        */

#define VDSR_WGMMA_COUNT(S, R) +1
constexpr int kNumWgmmaVariants = 0 VDSR_WGMMA_VARIANTS(VDSR_WGMMA_COUNT);

#ifdef VDSR_FAST_SM90A  // CMakeLists.txt: VDSR_FAST_CUDA_ARCHS names 90a
constexpr bool kBuiltForSm90a = true;
#else
constexpr bool kBuiltForSm90a = false;
#endif

// Whether `device` (the current device) runs the sm_90a image of `kernel` (a build with 90a, compute
// capability 9.0, and the runtime picked the 9.0 binary): anything else would run the trap above.
// Queried once per device and kernel.
template <typename Kernel>
bool sm90a_image_runs(Kernel kernel, int device) {
  static int ok[kMaxDevices] = {};  // 0 unknown, 1 yes, -1 no
  if (ok[device] == 0 && !kBuiltForSm90a) ok[device] = -1;
  if (ok[device] == 0) {
    int major = 0, minor = 0;
    VDSR_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
    VDSR_CUDA_CHECK(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device));
    cudaFuncAttributes attr{};
    VDSR_CUDA_CHECK(cudaFuncGetAttributes(&attr, kernel));
    ok[device] = (major == 9 && minor == 0 && attr.binaryVersion == 90) ? 1 : -1;
  }
  return ok[device] > 0;
}

template <typename Kernel>
void check_sm90a_image(Kernel kernel, int device) {
  if (!sm90a_image_runs(kernel, device)) {
    throw std::invalid_argument("vdsr_fast._C: the wgmma body kernel needs a compute capability 9.0 GPU and a "
                                "build for sm_90a (VDSR_FAST_CUDA_ARCHS with 90a); device " +
                                std::to_string(device) + " cannot run it");
  }
}

template <typename T, int STAGES, bool ROW_REUSE>
void launch_wgmma(const void* in, void* out, const void* w, const float* b, int n, int h, int w_, int device,
                  cudaStream_t stream, bool /*pdl*/) {
  check_device_index(device);
  check_sm90a_image(conv3x3_wgmma_kernel<T, STAGES, ROW_REUSE>, device);
  static ResidentCtas resident = {};
  launch_persistent<WgmmaTile<STAGES, ROW_REUSE>, T>(conv3x3_wgmma_kernel<T, STAGES, ROW_REUSE>, resident, in, out, w,
                                                     b, n, h, w_, device, stream);
}

}  // namespace body
}  // namespace vdsr
