// The first and last VDSR layers, on CUDA cores (each has a single-channel side, so a GEMM would be
// mostly padding; together they are ~3% of the network's FLOPs).
//
// Head:  out[b][y][x][n] = relu( b0[n] + sum_{ky,kx} w0[n][ky*3+kx] * x[b][y+ky-1][x+kx-1] )
//        x: fp32 Y plane [N][H][W]; out: NHWC fp16/bf16 [N][H][W][64]; w0, b0 fp32.
//        Lane j of each group of eight owns channels 8j..8j+7 and keeps their 72 weights in registers
//        for 8 pixels: per pixel 9 loads of x (cached), 72 FMAs, one 16-byte store; consecutive threads
//        write consecutive 16-byte chunks (fully coalesced).  At 1080p on an H200 this took 0.29 ms
//        where one thread per (pixel, chunk) reading the weights from shared memory took 0.38 ms.
//
// Tail:  y[b][y][x] = x[b][y][x] + bL + sum_{ky,kx,c} wL[ky*3+kx][c] * act[b][y+ky-1][x+kx-1][c]
//        act: NHWC fp16/bf16; x, y: fp32 Y planes; wL, bL fp32.  The global residual add is fused here.
//        Eight lanes per pixel, lane j owning channels 8j..8j+7: every 16-byte load of a warp covers
//        four whole 128-byte pixels (coalesced); the eight partial sums meet through __shfl_xor_sync.
//
// Zero padding: taps outside the image contribute nothing.  Accumulation is fp32 throughout.

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <string>

#include "device_utils.cuh"
#include "vdsr_kernels.h"

namespace vdsr {
namespace {

constexpr int kC = 64;
constexpr int kThreadsPerBlock = 256;
constexpr int kLanesPerPixel = kC / 8;                               // lane j owns channels 8j .. 8j+7
constexpr int kPixelGroups = kThreadsPerBlock / kLanesPerPixel;      // 32 pixels in flight per block
constexpr int kPixelsPerThread = 8;                                  // its 72 weights serve 8 pixels
constexpr int kPixelsPerBlock = kPixelGroups * kPixelsPerThread;     // 256
// Pixel p of a thread is base + p * kPixelGroups + (threadIdx.x / 8): a warp covers four consecutive
// pixels per step, so its 16-byte accesses cover 512 contiguous bytes of NHWC activations.

template <typename T>
__global__ void __launch_bounds__(kThreadsPerBlock)
    head_kernel(const float* __restrict__ x, T* __restrict__ out, const float* __restrict__ w,
                const float* __restrict__ bias, int H, int W, int64_t total_pixels) {
  const int j = threadIdx.x % kLanesPerPixel;
  const int g = threadIdx.x / kLanesPerPixel;
  float wr[8][9], br[8];  // this lane's 8 output channels, in registers for all of its pixels
#pragma unroll
  for (int c = 0; c < 8; ++c) {
    br[c] = __ldg(bias + j * 8 + c);
#pragma unroll
    for (int tap = 0; tap < 9; ++tap) wr[c][tap] = __ldg(w + (j * 8 + c) * 9 + tap);
  }
  const int64_t plane = static_cast<int64_t>(H) * W;
  const int64_t base = static_cast<int64_t>(blockIdx.x) * kPixelsPerBlock + g;
#pragma unroll 2
  for (int p = 0; p < kPixelsPerThread; ++p) {
    const int64_t pix = base + p * kPixelGroups;  // b*H*W + y*W + x
    if (pix >= total_pixels) break;
    const int64_t b = pix / plane;
    const int rem = static_cast<int>(pix - b * plane);
    const int y = rem / W;
    const int xx = rem - y * W;
    const float* img = x + b * plane;
    float v[9];
#pragma unroll
    for (int tap = 0; tap < 9; ++tap) {
      const int yy = y + tap / 3 - 1;
      const int xs = xx + tap % 3 - 1;
      const bool inside = static_cast<unsigned>(yy) < static_cast<unsigned>(H) &&
                          static_cast<unsigned>(xs) < static_cast<unsigned>(W);
      v[tap] = inside ? __ldg(img + static_cast<int64_t>(yy) * W + xs) : 0.0f;
    }
    uint32_t packed[4];
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      float o[2];
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        float acc = br[q * 2 + e];
#pragma unroll
        for (int tap = 0; tap < 9; ++tap) acc = fmaf(wr[q * 2 + e][tap], v[tap], acc);
        o[e] = relu_keep_nan(acc);
      }
      packed[q] = Storage<T>::pack2(o[0], o[1]);
    }
    *reinterpret_cast<uint4*>(out + pix * kC + j * 8) = make_uint4(packed[0], packed[1], packed[2], packed[3]);
  }
}

// One thread per (pixel, 8-channel chunk), the weights read from shared memory.  Measured at 1080p on an
// H200: 0.40 ms; a variant with the weights in registers for 8 pixels per thread (as the head) took 0.66.
template <typename T>
__global__ void __launch_bounds__(kThreadsPerBlock)
    tail_kernel(const T* __restrict__ act, const float* x, float* y, const float* __restrict__ w,
                const float* __restrict__ bias, int H, int W, int64_t total_chunks) {
  __shared__ float sw[9 * kC];
  for (int i = threadIdx.x; i < 9 * kC; i += blockDim.x) sw[i] = w[i];
  __syncthreads();

  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const bool valid = idx < total_chunks;  // no early return: all 32 lanes take part in the shuffles
  const int j = static_cast<int>(idx & 7);
  const int64_t pix = idx >> 3;
  float acc = 0.0f;
  if (valid) {
    const int64_t plane = static_cast<int64_t>(H) * W;
    const int64_t b = pix / plane;
    const int rem = static_cast<int>(pix - b * plane);
    const int py = rem / W;
    const int px = rem - py * W;
    const T* img = act + b * plane * kC;
#pragma unroll
    for (int tap = 0; tap < 9; ++tap) {
      const int yy = py + tap / 3 - 1;
      const int xs = px + tap % 3 - 1;
      if (static_cast<unsigned>(yy) >= static_cast<unsigned>(H) ||
          static_cast<unsigned>(xs) >= static_cast<unsigned>(W)) {
        continue;
      }
      const uint4 u = __ldg(reinterpret_cast<const uint4*>(img + (static_cast<int64_t>(yy) * W + xs) * kC + j * 8));
      const uint32_t words[4] = {u.x, u.y, u.z, u.w};
      const float* wt = sw + tap * kC + j * 8;
#pragma unroll
      for (int q = 0; q < 4; ++q) {
        const float2 f = Storage<T>::unpack2(words[q]);
        acc = fmaf(wt[2 * q], f.x, acc);
        acc = fmaf(wt[2 * q + 1], f.y, acc);
      }
    }
  }
  // Sum the eight lanes of this pixel (lanes 8k .. 8k+7 of the warp).
  acc += __shfl_xor_sync(0xffffffffu, acc, 4);
  acc += __shfl_xor_sync(0xffffffffu, acc, 2);
  acc += __shfl_xor_sync(0xffffffffu, acc, 1);
  if (valid && j == 0) y[pix] = x[pix] + (bias[0] + acc);
}

int64_t checked_blocks(int64_t items, int64_t per_block, const char* what) {
  const int64_t blocks = (items + per_block - 1) / per_block;
  if (blocks > INT32_MAX) {
    throw std::invalid_argument(std::string("vdsr_fast._C: input too large for the ") + what + " kernel");
  }
  return blocks;
}

}  // namespace

void launch_head(const float* x, void* out, const float* w, const float* b, int n, int h, int w_, DType dtype,
                 cudaStream_t stream) {
  const int64_t pixels = static_cast<int64_t>(n) * h * w_;
  const dim3 grid(static_cast<unsigned>(checked_blocks(pixels, kPixelsPerBlock, "head")));
  if (dtype == kFloat16) {
    head_kernel<__half><<<grid, kThreadsPerBlock, 0, stream>>>(x, static_cast<__half*>(out), w, b, h, w_, pixels);
  } else if (dtype == kBFloat16) {
    head_kernel<__nv_bfloat16>
        <<<grid, kThreadsPerBlock, 0, stream>>>(x, static_cast<__nv_bfloat16*>(out), w, b, h, w_, pixels);
  } else {
    throw std::invalid_argument("vdsr_fast._C: unknown dtype code " + std::to_string(static_cast<int>(dtype)));
  }
  VDSR_CHECK_LAUNCH(head_kernel);
}

void launch_tail(const void* act, const float* x, float* y, const float* w, const float* b, int n, int h, int w_,
                 DType dtype, cudaStream_t stream) {
  const int64_t chunks = static_cast<int64_t>(n) * h * w_ * kLanesPerPixel;  // one thread per chunk
  const dim3 grid(static_cast<unsigned>(checked_blocks(chunks, kThreadsPerBlock, "tail")));
  if (dtype == kFloat16) {
    tail_kernel<__half><<<grid, kThreadsPerBlock, 0, stream>>>(static_cast<const __half*>(act), x, y, w, b, h, w_,
                                                               chunks);
  } else if (dtype == kBFloat16) {
    tail_kernel<__nv_bfloat16><<<grid, kThreadsPerBlock, 0, stream>>>(static_cast<const __nv_bfloat16*>(act), x, y,
                                                                      w, b, h, w_, chunks);
  } else {
    throw std::invalid_argument("vdsr_fast._C: unknown dtype code " + std::to_string(static_cast<int>(dtype)));
  }
  VDSR_CHECK_LAUNCH(tail_kernel);
}

}  // namespace vdsr
