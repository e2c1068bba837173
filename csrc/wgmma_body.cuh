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
//   * Warpgroup wg computes tile rows 8wg .. 8wg+7 as two M-blocks of 64 pixels (rows 8wg + 4mb + 0..3);
//     warp r of the group supplies row 8wg + 4mb + r of block mb: its A fragment is the direct kernel's
//     ldmatrix of 16 halo pixels.  Per k-step (tap, 16 channels): 2 ldmatrix.x4 per warp, fence, two
//     wgmma m64n64k16 (one per M-block, same B descriptor), commit.  The A registers alternate between
//     two sets by k-step parity; before refilling a set the warp waits for the group that read it
//     (wait_group 1: at most the previous step's group still pending).
//   * Epilogue after wait_group 0: D fragment = the mma C fragment per 8 out channels, stored as the
//     direct kernel's (bias + ReLU in fp32, 4-byte stores).

#pragma once

#include "conv3x3_body.cuh"

namespace vdsr {
namespace body {

template <int STAGES>
struct WgmmaTile {
  static_assert(STAGES >= 2, "need at least double buffering");
  static constexpr int kThreads = 256;  // 2 warpgroups
  static constexpr int kStages = STAGES;
  static constexpr int kTileH = 16;
  static constexpr int kHaloH = kTileH + 2;
  static constexpr int kHaloW = kTileW + 2;
  static constexpr int kHaloPix = kHaloH * kHaloW;
  static constexpr int kStageBytes = kHaloPix * kRowBytes;
  static constexpr int kAlign = 1024;  // the weights start on a 1024-byte boundary (slack included below)
  static constexpr int kSmemBytes = kAlign + kWeightBytes + STAGES * kStageBytes;
  static constexpr int kKSteps = kTaps * (kC / 16);  // 36
};

template <typename T, int STAGES>
__global__ void __launch_bounds__(WgmmaTile<STAGES>::kThreads, 1)
    conv3x3_wgmma_kernel(const T* __restrict__ in, T* __restrict__ out, const T* __restrict__ w,
                         const float* __restrict__ bias, int H, int W, int tiles_x, int tiles_y, int num_tiles) {
#if VDSR_WGMMA
  using K = WgmmaTile<STAGES>;
  extern __shared__ __align__(128) unsigned char smem[];
  const uint32_t smem_w = (smem_addr(smem) + K::kAlign - 1) & ~static_cast<uint32_t>(K::kAlign - 1);
  const uint32_t smem_halo = smem_w + kWeightBytes;

  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int wg = warp >> 2;  // warpgroup: tile rows 8wg .. 8wg+7
  const int wr = warp & 3;   // row wr of each of the group's two 4-row M-blocks
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
    const uint32_t halo = halo_next<K>(smem_halo, in, tile, it, H, W, tiles_x, tiles_y, num_tiles);
    float acc[2][32];
#pragma unroll
    for (int mb = 0; mb < 2; ++mb)
#pragma unroll
      for (int i = 0; i < 32; ++i) acc[mb][i] = 0.0f;
    uint32_t a[2][2][4];  // [k-step parity][M-block][register]
#pragma unroll
    for (int s = 0; s < K::kKSteps; ++s) {
      const int tap = s / 4;
      const int kk = s % 4;  // 16 input channels per k-step
      const int ky = tap / 3;
      const int kx = tap % 3;
      if (s >= 2) wgmma_wait<1>();  // step s - 2's group (the last reader of a[s % 2]) has completed
#pragma unroll
      for (int mb = 0; mb < 2; ++mb) {
        const int p = (8 * wg + 4 * mb + wr + ky) * K::kHaloW + a_row + kx;
        ldmatrix_x4(a[s % 2][mb], halo + swz(p, kk * 2 + a_khalf));
      }
      wgmma_pin(acc[0]);
      wgmma_pin(acc[1]);
      wgmma_fence();
      const uint64_t desc = wgmma_desc_sw128(smem_w + tap * kC * kRowBytes + kk * 32);
      wgmma_m64n64k16<T>(acc[0], a[s % 2][0], desc);
      wgmma_m64n64k16<T>(acc[1], a[s % 2][1], desc);
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
      const int y = tc.y0 + 8 * wg + 4 * mb + wr;
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

// The wgmma variants (pipeline stages); ids follow the Winograd ones in body_variants().
// 3 stages: 1 KB alignment slack + 72 KB weights + 3 x 40.5 KB halos = 195 KB.
#define VDSR_WGMMA_VARIANTS(X) X(3) /* 16x16 px, 2 warpgroups of 2 x 64 px x 64 ch, sm_90a */

#define VDSR_WGMMA_COUNT(S) +1
constexpr int kNumWgmmaVariants = 0 VDSR_WGMMA_VARIANTS(VDSR_WGMMA_COUNT);

#ifdef VDSR_FAST_SM90A  // CMakeLists.txt: VDSR_FAST_CUDA_ARCHS names 90a
constexpr bool kBuiltForSm90a = true;
#else
constexpr bool kBuiltForSm90a = false;
#endif

// Whether `device` runs the sm_90a image of `kernel` (a build with 90a, compute capability 9.0, and the
// runtime picked the 9.0 binary): anything else would run the trap above.  Queried once per device and
// kernel.
template <typename Kernel>
void check_sm90a_image(Kernel kernel, int device) {
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
  if (ok[device] < 0) {
    throw std::invalid_argument("vdsr_fast._C: the wgmma body kernel needs a compute capability 9.0 GPU and a "
                                "build for sm_90a (VDSR_FAST_CUDA_ARCHS with 90a); device " +
                                std::to_string(device) + " cannot run it");
  }
}

template <typename T, int STAGES>
void launch_wgmma(const void* in, void* out, const void* w, const float* b, int n, int h, int w_, int device,
                  cudaStream_t stream) {
  check_device_index(device);
  check_sm90a_image(conv3x3_wgmma_kernel<T, STAGES>, device);
  launch_persistent<WgmmaTile<STAGES>, T>(conv3x3_wgmma_kernel<T, STAGES>, in, out, w, b, n, h, w_, device, stream);
}

}  // namespace body
}  // namespace vdsr
