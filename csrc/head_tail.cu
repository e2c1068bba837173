// The first and last VDSR layers, on CUDA cores (each has a single-channel side, so a GEMM would be
// mostly padding; together they are ~3% of the network's FLOPs, but each moves a whole 64-channel
// activation tensor: memory-bound; 265 MB at 1080p in fp16 is 0.055 ms at an H200's 4.8 TB/s peak).
//
// Head:  out[b][y][x][n] = relu( b0[n] + sum_{ky,kx} w0[n][ky*3+kx] * x[b][y+ky-1][x+kx-1] )
//        x: fp32 Y plane [N][H][W]; out: NHWC fp16/bf16 [N][H][W][64]; w0, b0 fp32.
// Tail:  y[b][y][x] = x[b][y][x] + bL + sum_{ky,kx,c} wL[ky*3+kx][c] * act[b][y+ky-1][x+kx-1][c]
//        act: NHWC fp16/bf16; x, y: fp32 Y planes; wL, bL fp32.  The global residual add is fused here.
//
// Both kernels: CTAs of 256 threads over 16 x 16-pixel output tiles (tile order and coordinates as the
// body kernels', body::tile_coord), persistent: as many CTAs as fit on the GPU at once, each walking the
// tiles blockIdx.x, blockIdx.x + gridDim.x, ... with its lanes' weights loaded once (one CTA per tile
// loaded them per tile: 80 loads a thread against its 8 stores in the head).  Per tile the CTA first
// stages its input with the one-pixel halo in shared memory, zero-filled outside the image (the conv's
// zero padding), so each input value is read from global memory about once (18 x 18 / 256 = 1.27x) and
// no pixel index is divided.
// Thread (q, j) = (threadIdx.x / 8, threadIdx.x % 8): lane j of each group of eight owns channels
// 8j .. 8j+7 and keeps their weights in registers; the group computes tile pixels q, q + 32, ...,
// q + 224 (row p / 16, column p % 16), so a warp covers four adjacent pixels per step.
//   Head: 9 reads of the staged Y values (8 lanes share each: broadcast), 72 FMAs, one 16-byte store
//         per lane -- a warp writes 512 contiguous bytes.
//   Tail: the halo is the body kernels' (cp.async, 128-byte rows, chunk j at slot j ^ (row & 7)); per
//         tap each lane reads its 16-byte chunk (the 8 lanes of a quarter-warp: one pixel's 8 chunks,
//         8 distinct bank groups), 8 FMAs; the eight partial sums meet through __shfl_xor_sync.
// Accumulation is fp32 in a fixed order (bias first for the head; per lane taps 0..8, then lanes
// 4, 2, 1 apart for the tail): a zero-filled tap adds w * 0 = 0 exactly.
// (Before the tiles: one thread per (pixel, chunk) reading global memory and dividing indices; 0.29 ms
// for the head and 0.40 ms for the tail at 1080p on an H200, benchmarks/results run 3.)

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <string>

#include "conv3x3_body.cuh"

namespace vdsr {
namespace {

using body::kC;

// One output tile and its CTA (also the K of body::load_halo).
struct EdgeTile {
  static constexpr int kThreads = 256;
  static constexpr int kTileH = 16;
  static constexpr int kTileW = body::kTileW;            // 16 columns
  static constexpr int kSmemBytes = 0;                   // (dynamic: both kernels' buffers are static)
  static constexpr int kHaloW = body::kTileW + 2;        // 18
  static constexpr int kHaloPix = (kTileH + 2) * kHaloW;  // 324
};
constexpr int kLanesPerPixel = kC / 8;                                     // lane j owns channels 8j .. 8j+7
constexpr int kPixelGroups = EdgeTile::kThreads / kLanesPerPixel;          // 32 pixels per step
constexpr int kSteps = EdgeTile::kTileH * body::kTileW / kPixelGroups;     // 8 steps per tile

// Both heads: the tile's 18 x 18 Y values with the one-pixel halo into sx (fp32, zero outside the image), between
// the barriers that order it after the previous tile's reads and before this tile's.
__device__ __forceinline__ void stage_head_halo(float* sx, const float* __restrict__ x, const body::TileCoord& tc, int H,
                                                int W) {
  const float* img = x + static_cast<int64_t>(tc.b) * H * W;
  __syncthreads();  // every thread is done reading the previous tile's sx
  for (int i = threadIdx.x; i < EdgeTile::kHaloPix; i += EdgeTile::kThreads) {
    const int hy = i / EdgeTile::kHaloW;
    const int hx = i - hy * EdgeTile::kHaloW;
    const int yy = tc.y0 - 1 + hy;
    const int xs = tc.x0 - 1 + hx;
    const bool inside = static_cast<unsigned>(yy) < static_cast<unsigned>(H) &&
                        static_cast<unsigned>(xs) < static_cast<unsigned>(W);
    sx[i] = inside ? __ldg(img + static_cast<int64_t>(yy) * W + xs) : 0.0f;
  }
  __syncthreads();
}

template <typename T>
__global__ void __launch_bounds__(EdgeTile::kThreads)
    head_kernel(const float* __restrict__ x, T* __restrict__ out, const float* __restrict__ w,
                const float* __restrict__ bias, int H, int W, int tiles_x, int tiles_y, int num_tiles) {
  __shared__ float sx[EdgeTile::kHaloPix];
  const int j = threadIdx.x % kLanesPerPixel;
  const int q = threadIdx.x / kLanesPerPixel;
  float wr[8][9], br[8];  // this lane's 8 output channels, for all of its pixels of all of its tiles
#pragma unroll
  for (int c = 0; c < 8; ++c) {
    br[c] = __ldg(bias + j * 8 + c);
#pragma unroll
    for (int tap = 0; tap < 9; ++tap) wr[c][tap] = __ldg(w + (j * 8 + c) * 9 + tap);
  }
  for (int tile = blockIdx.x; tile < num_tiles; tile += gridDim.x) {
    const body::TileCoord tc = body::tile_coord<EdgeTile::kTileH>(tile, tiles_x, tiles_y);
    stage_head_halo(sx, x, tc, H, W);
#pragma unroll 2
    for (int s = 0; s < kSteps; ++s) {
      const int p = s * kPixelGroups + q;
      const int r = p / body::kTileW;
      const int c = p % body::kTileW;
      const int y = tc.y0 + r;
      const int xx = tc.x0 + c;
      if (y >= H || xx >= W) continue;
      float v[9];
#pragma unroll
      for (int tap = 0; tap < 9; ++tap) v[tap] = sx[(r + tap / 3) * EdgeTile::kHaloW + c + tap % 3];
      uint32_t packed[4];
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        float o[2];
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          float acc = br[k * 2 + e];
#pragma unroll
          for (int tap = 0; tap < 9; ++tap) acc = fmaf(wr[k * 2 + e][tap], v[tap], acc);
          o[e] = relu_keep_nan(acc);
        }
        packed[k] = Storage<T>::pack2(o[0], o[1]);
      }
      T* dst = out + ((static_cast<int64_t>(tc.b) * H + y) * W + xx) * kC + j * 8;
      *reinterpret_cast<uint4*>(dst) = make_uint4(packed[0], packed[1], packed[2], packed[3]);
    }
  }
}

// Head on tensor cores (`mma` of launch_head; opt-in, not timed yet): per tile row a GEMM with M = its 16
// pixels, N = the 64 channels (8 mma n-blocks), K = 16 (the 9 taps and 7 zeros), `mma.sync.m16n8k16` on the Y
// values and weights rounded to the storage dtype (what the reference path's fp16/bf16 conv multiplies), fp32
// accumulation, then bias + ReLU in fp32.  Warp w computes tile rows 2w and 2w + 1 from the same staged halo
// as head_kernel (18 x 18 fp32).  Per row a lane makes 4-6 staged loads, 8 mma and two 16-byte stores per
// pixel against head_kernel's 8 x 72 FMAs: the kernel should be bound by its 265 MB of stores at 1080p.
// K order (kHeadTaps, slot -> tap ky*3+kx): the lanes of one fragment load (t = 0..3, 8 pixels g each) read
// taps whose staged offsets (18 ky + kx) differ by at most 18, so no two of a warp's 32 words share a bank
// (taps two rows apart, 36-38 words, would: slots 0, 2, 4, 6 take row 0 and (1,0); 1, 3, 5, 7 row 2 and (1,1);
// 8 the last tap (1,2)).  N order: column n of n-block nb is channel 16 (n / 2) + 2 nb + n % 2, so lane (g, t)'s
// accumulators of n-block nb are channels 16t + 2nb, +1: its 16 channels 16t .. 16t+15 of pixels g and g + 8
// are contiguous, two 16-byte stores each.
constexpr uint64_t kHeadTaps = 0x543827160ull;  // nibble k: the tap of slot k (0..8): 0 6 1 7 2 8 3 4 5

// The tap (ky*3+kx) in K slot k, and its staged offset (18 ky + kx).
__host__ __device__ constexpr int head_slot_tap(int k) { return static_cast<int>((kHeadTaps >> (4 * k)) & 15); }
__host__ __device__ constexpr int head_slot_offset(int k) {
  return (head_slot_tap(k) / 3) * EdgeTile::kHaloW + head_slot_tap(k) % 3;
}

template <typename T>
__global__ void __launch_bounds__(EdgeTile::kThreads)
    head_mma_kernel(const float* __restrict__ x, T* __restrict__ out, const float* __restrict__ w,
                    const float* __restrict__ bias, int H, int W, int tiles_x, int tiles_y, int num_tiles) {
  __shared__ float sx[EdgeTile::kHaloPix];
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int g = lane >> 2;
  const int t = lane & 3;
  const int tap_lo = head_slot_tap(2 * t);  // slots 2t, 2t + 1: this lane's b0 / a[0], a[1]
  const int tap_hi = head_slot_tap(2 * t + 1);
  const int off_lo = head_slot_offset(2 * t);
  const int off_hi = head_slot_offset(2 * t + 1);
  constexpr int kTap8 = head_slot_tap(8);     // slot 8: lane t = 0's b1 / a[2], a[3] low half
  constexpr int kOff8 = head_slot_offset(8);
  uint32_t b0[8], b1[8];                         // B fragments of the 8 n-blocks, for all tiles
  float br[8][2];                                // the bias of this lane's 16 channels
#pragma unroll
  for (int nb = 0; nb < 8; ++nb) {
    const int ch = 16 * (g >> 1) + 2 * nb + (g & 1);  // column g of n-block nb
    b0[nb] = Storage<T>::pack2(__ldg(w + ch * 9 + tap_lo), __ldg(w + ch * 9 + tap_hi));
    b1[nb] = t == 0 ? Storage<T>::pack2(__ldg(w + ch * 9 + kTap8), 0.0f) : 0u;
    br[nb][0] = __ldg(bias + 16 * t + 2 * nb);
    br[nb][1] = __ldg(bias + 16 * t + 2 * nb + 1);
  }
  for (int tile = blockIdx.x; tile < num_tiles; tile += gridDim.x) {
    const body::TileCoord tc = body::tile_coord<EdgeTile::kTileH>(tile, tiles_x, tiles_y);
    stage_head_halo(sx, x, tc, H, W);
#pragma unroll
    for (int rr = 0; rr < 2; ++rr) {
      const int r = 2 * warp + rr;  // tile row; its halo rows r .. r + 2
      const int y = tc.y0 + r;
      const float* row = sx + r * EdgeTile::kHaloW;
      uint32_t a[4];
      a[0] = Storage<T>::pack2(row[off_lo + g], row[off_hi + g]);
      a[1] = Storage<T>::pack2(row[off_lo + g + 8], row[off_hi + g + 8]);
      a[2] = t == 0 ? Storage<T>::pack2(row[kOff8 + g], 0.0f) : 0u;
      a[3] = t == 0 ? Storage<T>::pack2(row[kOff8 + g + 8], 0.0f) : 0u;
      uint32_t o[2][8];  // [pixel g, g + 8][n-block]: channels 16t + 2nb, +1
#pragma unroll
      for (int nb = 0; nb < 8; ++nb) {
        float c[4] = {0.0f, 0.0f, 0.0f, 0.0f};
        mma_16816<T>(c, a, b0[nb], b1[nb]);
        o[0][nb] = Storage<T>::pack2(relu_keep_nan(c[0] + br[nb][0]), relu_keep_nan(c[1] + br[nb][1]));
        o[1][nb] = Storage<T>::pack2(relu_keep_nan(c[2] + br[nb][0]), relu_keep_nan(c[3] + br[nb][1]));
      }
      if (y >= H) continue;
#pragma unroll
      for (int p = 0; p < 2; ++p) {
        const int xx = tc.x0 + g + 8 * p;
        if (xx >= W) continue;
        uint4* dst = reinterpret_cast<uint4*>(out + ((static_cast<int64_t>(tc.b) * H + y) * W + xx) * kC + 16 * t);
        dst[0] = make_uint4(o[p][0], o[p][1], o[p][2], o[p][3]);
        dst[1] = make_uint4(o[p][4], o[p][5], o[p][6], o[p][7]);
      }
    }
  }
}

// y may alias x (each pixel's x is read by the thread that then writes its y): no __restrict__ on them.
template <typename T>
__global__ void __launch_bounds__(EdgeTile::kThreads, 2)
    tail_kernel(const T* __restrict__ act, const float* x, float* y, const float* __restrict__ w,
                const float* __restrict__ bias, int H, int W, int tiles_x, int tiles_y, int num_tiles) {
  __shared__ __align__(128) unsigned char halo[EdgeTile::kHaloPix * body::kRowBytes];  // 41,472 bytes
  const uint32_t sh = smem_addr(halo);
  const int j = threadIdx.x % kLanesPerPixel;
  const int q = threadIdx.x / kLanesPerPixel;
  float wr[9][8];  // this lane's 8 channels of every tap, for all of its tiles
#pragma unroll
  for (int tap = 0; tap < 9; ++tap) {
#pragma unroll
    for (int k = 0; k < 8; ++k) wr[tap][k] = __ldg(w + tap * kC + j * 8 + k);
  }
  const float b0 = __ldg(bias);
  for (int tile = blockIdx.x; tile < num_tiles; tile += gridDim.x) {
    const body::TileCoord tc = body::tile_coord<EdgeTile::kTileH>(tile, tiles_x, tiles_y);
    __syncthreads();  // every thread is done reading the previous tile's halo
    body::load_halo<EdgeTile>(sh, act, tc, H, W);
    cp_async_commit();
    cp_async_wait<0>();
    __syncthreads();
#pragma unroll 2
    for (int s = 0; s < kSteps; ++s) {
      const int p = s * kPixelGroups + q;
      const int r = p / body::kTileW;
      const int c = p % body::kTileW;
      float acc = 0.0f;
#pragma unroll
      for (int tap = 0; tap < 9; ++tap) {
        const int hp = (r + tap / 3) * EdgeTile::kHaloW + c + tap % 3;
        const uint4 u = *reinterpret_cast<const uint4*>(halo + body::swz(hp, j));
        const uint32_t words[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
        for (int k = 0; k < 4; ++k) {
          const float2 f = Storage<T>::unpack2(words[k]);
          acc = fmaf(wr[tap][2 * k], f.x, acc);
          acc = fmaf(wr[tap][2 * k + 1], f.y, acc);
        }
      }
      // Sum the eight lanes of this pixel (lanes 8k .. 8k+7 of the warp; every lane takes part).
      acc += __shfl_xor_sync(0xffffffffu, acc, 4);
      acc += __shfl_xor_sync(0xffffffffu, acc, 2);
      acc += __shfl_xor_sync(0xffffffffu, acc, 1);
      const int yy = tc.y0 + r;
      const int xx = tc.x0 + c;
      if (j == 0 && yy < H && xx < W) {
        const int64_t pix = (static_cast<int64_t>(tc.b) * H + yy) * W + xx;
        y[pix] = x[pix] + (b0 + acc);
      }
    }
  }
}

// The persistent grid (body::persistent_grid: the kernel's occupancy x the SMs, cached per kernel and device)
// on the current device (the bindings' DeviceGuard).
template <typename Kernel>
body::PersistentGrid edge_grid(Kernel kernel, body::ResidentCtas& resident, int n, int h, int w_) {
  int device = 0;
  VDSR_CUDA_CHECK(cudaGetDevice(&device));
  return body::persistent_grid<EdgeTile>(kernel, resident, n, h, w_, device);
}

}  // namespace

template <typename T, bool MMA>
void launch_head_t(const float* x, void* out, const float* w, const float* b, int n, int h, int w_,
                   cudaStream_t stream) {
  const auto kernel = MMA ? head_mma_kernel<T> : head_kernel<T>;
  static body::ResidentCtas resident = {};
  const body::PersistentGrid g = edge_grid(kernel, resident, n, h, w_);
  kernel<<<g.grid, EdgeTile::kThreads, 0, stream>>>(x, static_cast<T*>(out), w, b, h, w_, g.tiles_x, g.tiles_y,
                                                    g.num_tiles);
  VDSR_CHECK_LAUNCH(kernel);
}

void launch_head(const float* x, void* out, const float* w, const float* b, int n, int h, int w_, DType dtype,
                 bool mma, cudaStream_t stream) {
  if (dtype == kFloat16) {
    return mma ? launch_head_t<__half, true>(x, out, w, b, n, h, w_, stream)
               : launch_head_t<__half, false>(x, out, w, b, n, h, w_, stream);
  }
  if (dtype == kBFloat16) {
    return mma ? launch_head_t<__nv_bfloat16, true>(x, out, w, b, n, h, w_, stream)
               : launch_head_t<__nv_bfloat16, false>(x, out, w, b, n, h, w_, stream);
  }
  throw std::invalid_argument("vdsr_fast._C: unknown dtype code " + std::to_string(static_cast<int>(dtype)));
}

template <typename T>
void launch_tail_t(const void* act, const float* x, float* y, const float* w, const float* b, int n, int h, int w_,
                   cudaStream_t stream) {
  static body::ResidentCtas resident = {};
  const body::PersistentGrid g = edge_grid(tail_kernel<T>, resident, n, h, w_);
  tail_kernel<T><<<g.grid, EdgeTile::kThreads, 0, stream>>>(static_cast<const T*>(act), x, y, w, b, h, w_, g.tiles_x,
                                                            g.tiles_y, g.num_tiles);
  VDSR_CHECK_LAUNCH(tail_kernel);
}

void launch_tail(const void* act, const float* x, float* y, const float* w, const float* b, int n, int h, int w_,
                 DType dtype, cudaStream_t stream) {
  if (dtype == kFloat16) return launch_tail_t<__half>(act, x, y, w, b, n, h, w_, stream);
  if (dtype == kBFloat16) return launch_tail_t<__nv_bfloat16>(act, x, y, w, b, n, h, w_, stream);
  throw std::invalid_argument("vdsr_fast._C: unknown dtype code " + std::to_string(static_cast<int>(dtype)));
}

// Tail gather, the second half of a fused tail (after launch_body_tail_partials, whose last body layer
// wrote the tail conv's nine per-tap partial sums of every pixel instead of its activation):
//   y[b][y][x] = x[b][y][x] + (bL + sum_{ky,kx} z[b][y+ky-1][x+kx-1][ky*3+kx])   (z = 0 outside the image)
// z: fp32 [N][H][W][9].  One thread per output pixel, taps in order 0..8 from the bias (fp32); y may alias x.
// A warp's nine loads per pixel land 36 bytes apart, but the three z rows it reads stay in L1 across the taps and
// across neighbouring warps: 0.041 ms at 1080p on an H200 (run 9). A version that first copied each 256-pixel
// segment's three z rows into shared memory with consecutive threads took 0.063 ms (run 11) and was reverted.
__global__ void __launch_bounds__(256)
    tail_gather_kernel(const float* __restrict__ z, const float* x, float* y, const float* __restrict__ b, int H,
                       int W, int64_t pixels) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= pixels) return;
  const int64_t hw = static_cast<int64_t>(H) * W;
  const int64_t img = i / hw;
  const int r = static_cast<int>(i - img * hw);
  const int py = r / W;
  const int px = r - py * W;
  float s = b[0];
#pragma unroll
  for (int tap = 0; tap < 9; ++tap) {
    const int sy = py + tap / 3 - 1;
    const int sx = px + tap % 3 - 1;
    if (static_cast<unsigned>(sy) < static_cast<unsigned>(H) && static_cast<unsigned>(sx) < static_cast<unsigned>(W)) {
      s += z[((img * H + sy) * W + sx) * 9 + tap];
    }
  }
  y[i] = x[i] + s;
}

void launch_tail_gather(const float* z, const float* x, float* y, const float* b, int n, int h, int w_,
                        cudaStream_t stream) {
  const int64_t pixels = static_cast<int64_t>(n) * h * w_;
  const int64_t blocks = (pixels + 255) / 256;
  if (blocks > INT32_MAX) throw std::invalid_argument("vdsr_fast._C: input too large for the tail gather kernel");
  tail_gather_kernel<<<static_cast<int>(blocks), 256, 0, stream>>>(z, x, y, b, h, w_, pixels);
  VDSR_CHECK_LAUNCH(tail_gather_kernel);
}

}  // namespace vdsr
