// conv3x3 (64 -> 64) + bias + ReLU on tensor cores: the 18 body layers of VDSR.
//
//   out[b][y][x][n] = relu( bias[n] + sum_{ky,kx,c} w[ky*3+kx][n][c] * in[b][y+ky-1][x+kx-1][c] )
//
// with zero padding (pixels outside the image read as 0).  in/out are NHWC fp16 or bf16, w is the
// packed [9][64][64] layer in the same dtype, bias is fp32, accumulation is fp32 (mma.sync).
//
// Implicit GEMM: M = output pixels, N = 64 out channels, K = 9 taps x 64 in channels.
//
// Shape of the kernel (one persistent, weight-stationary CTA per SM):
//   * The CTA copies the layer's 72 KB of weights into shared memory once (cp.async) and keeps them.
//   * Output tiles are TILE_H x 16 pixels of one image.  The CTA walks tiles blockIdx.x,
//     blockIdx.x + gridDim.x, ...; for each it loads the (TILE_H + 2) x 18 pixel halo (all 64
//     channels, zero-filled outside the image) into one of STAGES shared buffers with cp.async,
//     STAGES - 1 tiles ahead of the tile being computed.
//   * Because every tap of every output pixel is already in shared memory, the K loop needs no
//     im2col: ldmatrix takes one shared address per A row, so row r of the A fragment for tap
//     (ky, kx) simply points at halo pixel (tile_row + ky, r + kx).
//   * 8 warps = 4 (M) x 2 (N).  Warp (wm, wn) computes tile rows wm*MI .. wm*MI + MI - 1 (one m16
//     fragment = one tile row of 16 pixels) times out channels wn*32 .. wn*32 + 31 (four n8 tiles).
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

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <string>

#include "device_utils.cuh"
#include "vdsr_kernels.h"

namespace vdsr {
namespace {

constexpr int kC = 64;              // channels in and out
constexpr int kRowBytes = kC * 2;   // one pixel (or one weight row) of 64 16-bit values = 128 bytes
constexpr int kChunks = kRowBytes / 16;  // 8 chunks of 16 bytes per row
constexpr int kTaps = 9;
constexpr int kWeightBytes = kTaps * kC * kRowBytes;  // 73,728
constexpr int kTileW = 16;          // one m16 fragment = one tile row
constexpr int kWarpsM = 4;
constexpr int kWarpsN = 2;
constexpr int kThreads = 32 * kWarpsM * kWarpsN;  // 256
constexpr int kNI = kC / kWarpsN / 8;              // n8 tiles per warp: 4 (32 out channels)

template <int TILE_H, int STAGES>
struct BodyTile {
  static_assert(TILE_H % kWarpsM == 0, "TILE_H must be a multiple of the warps along M");
  static_assert(STAGES >= 2, "need at least double buffering");
  static constexpr int kMI = TILE_H / kWarpsM;  // m16 fragments (tile rows) per warp
  static constexpr int kHaloH = TILE_H + 2;
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
__device__ __forceinline__ TileCoord tile_coord(int tile, int tiles_x, int tiles_y) {
  const int tx = tile % tiles_x;
  const int rest = tile / tiles_x;
  return {rest / tiles_y, (rest % tiles_y) * TILE_H, tx * kTileW};
}

// Issue the cp.async copies of one tile's halo into the stage at `dst` (no commit).
template <typename T, int TILE_H, int STAGES>
__device__ __forceinline__ void load_halo(uint32_t dst, const T* __restrict__ in, const TileCoord& tc, int H,
                                          int W) {
  using K = BodyTile<TILE_H, STAGES>;
  const T* img = in + static_cast<int64_t>(tc.b) * H * W * kC;
  for (int i = threadIdx.x; i < K::kHaloPix * kChunks; i += kThreads) {
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

template <typename T, int TILE_H, int STAGES>
__global__ void __launch_bounds__(kThreads, 1)
    conv3x3_body_kernel(const T* __restrict__ in, T* __restrict__ out, const T* __restrict__ w,
                        const float* __restrict__ bias, int H, int W, int tiles_x, int tiles_y, int num_tiles) {
  using K = BodyTile<TILE_H, STAGES>;
  constexpr int MI = K::kMI;
  extern __shared__ __align__(128) unsigned char smem[];
  const uint32_t smem_w = smem_addr(smem);
  const uint32_t smem_halo = smem_w + kWeightBytes;

  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int warp_m = warp / kWarpsN;  // 0..3: tile rows warp_m*MI ..
  const int warp_n = warp % kWarpsN;  // 0..1: out channels warp_n*32 ..
  const int g = lane >> 2;            // mma groupID
  const int t = lane & 3;             // mma threadID_in_group

  // 1. The layer's weights, once per CTA (cp.async group 0).
  for (int i = threadIdx.x; i < kTaps * kC * kChunks; i += kThreads) {
    const int row = i >> 3;  // tap*64 + n
    const int j = i & 7;
    cp_async_16(smem_w + swz(row, j), w + row * kC + j * 8, true);
  }
  cp_async_commit();

  // This thread's bias values: out channels n = warp_n*32 + ni*8 + 2t + {0, 1} (the C columns it holds).
  float bias_r[kNI][2];
#pragma unroll
  for (int ni = 0; ni < kNI; ++ni) {
    const int n = warp_n * 32 + ni * 8 + 2 * t;
    bias_r[ni][0] = bias[n];
    bias_r[ni][1] = bias[n + 1];
  }

  // 2. Prologue: halos of this CTA's first STAGES - 1 tiles (one group each, empty past the end so
  //    the group count, and with it cp_async_wait<STAGES - 1> below, stays uniform).
#pragma unroll
  for (int s = 0; s < STAGES - 1; ++s) {
    const int tile = blockIdx.x + s * gridDim.x;
    if (tile < num_tiles) {
      load_halo<T, TILE_H, STAGES>(smem_halo + s * K::kStageBytes, in, tile_coord<TILE_H>(tile, tiles_x, tiles_y),
                                   H, W);
    }
    cp_async_commit();
  }

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
    // 3. Prefetch the tile STAGES - 1 ahead into the stage freed at the end of the last iteration.
    {
      const int next = tile + (STAGES - 1) * gridDim.x;
      if (next < num_tiles) {
        load_halo<T, TILE_H, STAGES>(smem_halo + ((it + STAGES - 1) % STAGES) * K::kStageBytes, in,
                                     tile_coord<TILE_H>(next, tiles_x, tiles_y), H, W);
      }
      cp_async_commit();
    }
    // Groups committed so far: weights, then one per tile up to it + STAGES - 1.  Allowing the newest
    // STAGES - 1 to be pending means the weights and this tile's halo have landed (for this thread);
    // the barrier makes every thread's copies visible to the whole CTA.
    cp_async_wait<STAGES - 1>();
    __syncthreads();

    const uint32_t halo = smem_halo + (it % STAGES) * K::kStageBytes;
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
          const int n = warp_n * 32 + np * 16 + b_n;
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
    //    out channel warp_n*32 + ni*8 + 2t + (e & 1).
    const TileCoord tc = tile_coord<TILE_H>(tile, tiles_x, tiles_y);
#pragma unroll
    for (int mi = 0; mi < MI; ++mi) {
      const int y = tc.y0 + warp_m * MI + mi;
      if (y >= H) continue;
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const int x = tc.x0 + g + 8 * half;
        if (x >= W) continue;
        T* dst = out + ((static_cast<int64_t>(tc.b) * H + y) * W + x) * kC + warp_n * 32 + 2 * t;
#pragma unroll
        for (int ni = 0; ni < kNI; ++ni) {
          const float v0 = relu_keep_nan(acc[mi][ni][2 * half + 0] + bias_r[ni][0]);
          const float v1 = relu_keep_nan(acc[mi][ni][2 * half + 1] + bias_r[ni][1]);
          *reinterpret_cast<uint32_t*>(dst + ni * 8) = Storage<T>::pack2(v0, v1);
        }
      }
    }
  }
  // Drain the (empty) trailing groups before the CTA exits.
  cp_async_wait<0>();
}

constexpr int kMaxDevices = 64;

template <typename T, int TILE_H, int STAGES>
void launch_variant(const void* in, void* out, const void* w, const float* b, int n, int h, int w_, int device,
                    cudaStream_t stream) {
  using K = BodyTile<TILE_H, STAGES>;
  auto kernel = conv3x3_body_kernel<T, TILE_H, STAGES>;
  // The opt-in for > 48 KB of dynamic shared memory is per function and per device (context).
  static bool configured[kMaxDevices] = {};
  if (device < 0 || device >= kMaxDevices) {
    throw std::invalid_argument("vdsr_fast._C: device index " + std::to_string(device) + " out of range");
  }
  if (!configured[device]) {
    VDSR_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, K::kSmemBytes));
    configured[device] = true;
  }
  int sms = 0;
  VDSR_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  int per_sm = 0;
  VDSR_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kThreads, K::kSmemBytes));
  if (per_sm < 1) {
    throw std::runtime_error("vdsr_fast._C: body kernel variant tile_h=" + std::to_string(TILE_H) +
                             " stages=" + std::to_string(STAGES) + " (" + std::to_string(K::kSmemBytes) +
                             " bytes of shared memory) cannot run on device " + std::to_string(device));
  }
  const int tiles_x = (w_ + kTileW - 1) / kTileW;
  const int tiles_y = (h + TILE_H - 1) / TILE_H;
  const int64_t num_tiles64 = static_cast<int64_t>(n) * tiles_x * tiles_y;
  if (num_tiles64 > INT32_MAX) {
    throw std::invalid_argument("vdsr_fast._C: input too large for the body kernel (" +
                                std::to_string(num_tiles64) + " tiles)");
  }
  const int num_tiles = static_cast<int>(num_tiles64);
  const int64_t resident = static_cast<int64_t>(sms) * per_sm;
  const int grid = static_cast<int>(num_tiles < resident ? num_tiles : resident);
  kernel<<<grid, kThreads, K::kSmemBytes, stream>>>(static_cast<const T*>(in), static_cast<T*>(out),
                                                    static_cast<const T*>(w), b, h, w_, tiles_x, tiles_y,
                                                    num_tiles);
  VDSR_CHECK_LAUNCH(conv3x3_body_kernel);
}

template <typename T>
void launch_typed(int tile_h, int stages, const void* in, void* out, const void* w, const float* b, int n, int h,
                  int w_, int device, cudaStream_t stream) {
  if (tile_h == 16 && stages == 3) return launch_variant<T, 16, 3>(in, out, w, b, n, h, w_, device, stream);
  if (tile_h == 16 && stages == 2) return launch_variant<T, 16, 2>(in, out, w, b, n, h, w_, device, stream);
  if (tile_h == 8 && stages == 3) return launch_variant<T, 8, 3>(in, out, w, b, n, h, w_, device, stream);
  if (tile_h == 8 && stages == 2) return launch_variant<T, 8, 2>(in, out, w, b, n, h, w_, device, stream);
  throw std::invalid_argument("vdsr_fast._C: no body kernel variant tile_h=" + std::to_string(tile_h) +
                              " stages=" + std::to_string(stages));
}

// Keep in the order body_auto_variant prefers them (bigger tiles first: fewer halo bytes per pixel and
// fewer ldmatrix per mma; more stages first).
constexpr BodyVariant kVariants[] = {
    {16, 3, BodyTile<16, 3>::kSmemBytes},
    {16, 2, BodyTile<16, 2>::kSmemBytes},
    {8, 3, BodyTile<8, 3>::kSmemBytes},
    {8, 2, BodyTile<8, 2>::kSmemBytes},
};

}  // namespace

const BodyVariant* body_variants(int* count) {
  *count = static_cast<int>(sizeof(kVariants) / sizeof(kVariants[0]));
  return kVariants;
}

BodyVariant body_auto_variant(int device) {
  int optin = 0;
  VDSR_CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  for (const BodyVariant& v : kVariants) {
    if (v.smem_bytes <= optin) return v;
  }
  throw std::runtime_error("vdsr_fast._C: device " + std::to_string(device) + " has only " + std::to_string(optin) +
                           " bytes of shared memory per block; the body kernel needs at least " +
                           std::to_string(kVariants[3].smem_bytes));
}

void check_kernel_image(int device) {
  int prev = -1;
  VDSR_CUDA_CHECK(cudaGetDevice(&prev));
  if (prev != device) VDSR_CUDA_CHECK(cudaSetDevice(device));
  cudaFuncAttributes attr{};
  // Fails with cudaErrorNoKernelImageForDevice / cudaErrorInvalidDeviceFunction when the module was
  // built for other GPUs (VDSR_FAST_CUDA_ARCHS) and carries no PTX this driver can compile.
  const cudaError_t err = cudaFuncGetAttributes(&attr, conv3x3_body_kernel<__half, 8, 2>);
  if (prev != device) cudaSetDevice(prev);
  if (err != cudaSuccess) {
    cudaGetLastError();  // clear the sticky-free error state of this thread
    throw_cuda_error(err, "cudaFuncGetAttributes(conv3x3_body_kernel)", __FILE__, __LINE__);
  }
}

void launch_body(const void* in, void* out, const void* w, const float* b, int n, int h, int w_, DType dtype,
                 int device, cudaStream_t stream, int tile_h, int stages) {
  if (tile_h == 0 || stages == 0) {
    const BodyVariant v = body_auto_variant(device);
    tile_h = v.tile_h;
    stages = v.stages;
  }
  if (dtype == kFloat16) return launch_typed<__half>(tile_h, stages, in, out, w, b, n, h, w_, device, stream);
  if (dtype == kBFloat16) return launch_typed<__nv_bfloat16>(tile_h, stages, in, out, w, b, n, h, w_, device, stream);
  throw std::invalid_argument("vdsr_fast._C: unknown dtype code " + std::to_string(static_cast<int>(dtype)));
}

}  // namespace vdsr
