// conv3x3 (64 -> 64) + bias + ReLU, the wgmma strip kernel's GEMM (M = 64 out channels, N = 128 pixels of a row,
// K = 9 taps x 64 channels; wgmma_strip_body.cuh) with the weights in registers and the two warpgroups working
// independently, in turns ("ping-pong"): body variant 14 (sm_90a).
//
// Why: with the weights in registers (A from registers: the tensor cores read only the 4 KB of pixels per
// m64n128k16 from shared memory), a warpgroup has room for one 64-register accumulator set of a 128-pixel row
// beside its 144 weight registers, not two: it cannot overlap its own epilogue with its next row's wgmmas as
// variants 6-13 do.  So the two warpgroups overlap each other's: each takes its own rows (its own items, its own
// ring of halo rows and staging tile in shared memory: no CTA-wide barrier after the start), and they issue
// their wgmmas in turns -- warpgroup 0, then 1, then 0, ... -- so that while one runs its epilogue (bias, ReLU,
// rounding, the stmatrix transpose, the stores) the tensor cores work through the other's 36 wgmmas (CUTLASS's
// "ping-pong" schedule).  The turns are named-barrier handshakes (bar.arrive by the warpgroup that has issued,
// bar.sync by the one that waits), balanced so that no arrival is left pending at exit.
//
// Shape: 256 threads, one CTA per SM (persistent).  Items: one 128-pixel row of a strip ((image, strip, row)
// order, tiles_y = H); a CTA's contiguous share is split in two contiguous halves, the first for warpgroup 0.
// Per warpgroup: a ring of 4 halo rows (130 pixels x 8 chunk planes, the strip kernels' layout) -- the item's
// three and the next row, copied by the warpgroup's 128 threads while the item's wgmmas run -- and a 16 KB
// staging tile; 2 x 81 KB.  Per item: (A) its rows have landed (cp.async wait, fence.proxy.async, the
// warpgroup's barrier); its turn; 36 wgmma m64n128k16 (A = the weight registers), one commit group; the other
// warpgroup's turn; the next row's copy; wait_group 0; the strip kernels' epilogue (or the TAIL partials).

#pragma once

#include "wgmma_strip_body.cuh"

namespace vdsr {
namespace body {

struct PingPongTile {
  static constexpr bool kRegs = true;               // A (the weights) from registers
  static constexpr int kThreads = 256;              // 2 warpgroups, each on its own rows
  static constexpr int kLoaders = 128;              // a warpgroup copies its own halo rows
  static constexpr int kTileW = 128;                // pixels per row segment: the wgmma N
  static constexpr int kTileH = 1;                  // an item: one row, one warpgroup
  static constexpr int kHaloW = kTileW + 2;
  static constexpr int kPlane = kHaloW * 16;
  static constexpr int kHaloRowBytes = kChunks * kPlane;
  static constexpr int kRing = 4;                   // per warpgroup: the item's 3 halo rows + the next one
  static constexpr int kStages = kRing;
  static constexpr int kStagingBytes = kTileW * kRowBytes;
  static constexpr int kAcc = kTileW / 2;
  static constexpr int kASteps = 36;
  static constexpr int kAlign = 128;
  static constexpr int kWgBytes = kRing * kHaloRowBytes + kStagingBytes;  // one warpgroup's region: 81 KB
  static constexpr int kSmemBytes = kAlign + 2 * kWgBytes;
  static_assert(kWgBytes % 128 == 0 && kSmemBytes <= 227 * 1024, "alignment of the regions, Hopper's shared memory");
};

template <bool TAIL>
struct PingPongLaunch : PingPongTile {
  static constexpr int kSmemBytes = PingPongTile::kSmemBytes + (TAIL ? kTailBytes : 0);
};
static_assert(PingPongLaunch<true>::kSmemBytes <= 227 * 1024, "Hopper's opt-in shared memory per block");

// Named barriers: 1 + wg a warpgroup's own (strip_epilogue uses the same), kTurn + wg "warpgroup wg may issue".
constexpr int kTurn = 3;

template <typename T, bool TAIL>
__global__ void __launch_bounds__(PingPongTile::kThreads, 1)
    conv3x3_pingpong_kernel(const T* __restrict__ in, T* __restrict__ out, const T* __restrict__ w,
                            const float* __restrict__ bias, const float* __restrict__ tail_w, float* __restrict__ z,
                            int H, int W, int tiles_x, int tiles_y, int num_tiles) {
#if VDSR_WGMMA
  using K = PingPongTile;
  extern __shared__ __align__(128) unsigned char smem[];
  const uint32_t base = (smem_addr(smem) + K::kAlign - 1) & ~static_cast<uint32_t>(K::kAlign - 1);
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  // Warp-uniform by construction (lane 0's value), as CUTLASS's canonical_warp_group_idx: the branches on it around
  // the wgmmas are then not divergent to ptxas (which would serialise the wgmmas there).
  const int wg = __shfl_sync(0xffffffff, warp >> 2, 0);
  const int wr = warp & 3;
  const uint32_t ring = base + wg * K::kWgBytes;
  const uint32_t stg = ring + K::kRing * K::kHaloRowBytes;

  uint32_t wa[K::kASteps][4];
  strip_load_a(wa, w, wr, lane);
  const StripTail tail{z, base + 2 * K::kWgBytes};
  if (TAIL) strip_store_tail_weights(tail.tw, tail_w);  // read by both warpgroups: the barrier below
  const float bias_r[2] = {bias[16 * wr + (lane >> 2)], bias[16 * wr + (lane >> 2) + 8]};
  __syncthreads();
  // Programmatic dependent launch: as conv3x3_strip_kernel (no activation access before the wait).
  asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
  asm volatile("griddepcontrol.wait;\n" ::: "memory");

  // This CTA's items, the first half for warpgroup 0 (which has as many or one more); both take `turns` turns.
  const int begin = static_cast<int>(static_cast<int64_t>(blockIdx.x) * num_tiles / gridDim.x);
  const int end = static_cast<int>(static_cast<int64_t>(blockIdx.x + 1) * num_tiles / gridDim.x);
  const int mid = begin + (end - begin + 1) / 2;
  const int mine = wg ? mid : begin;
  const int my_end = wg ? end : mid;
  const int turns = mid - begin;
  float acc[K::kAcc];
  for (int t = 0; t < turns; ++t) {
    const int q = mine + t;
    const bool live = q < my_end;
    const int seg = q / tiles_y;
    const int y = q - seg * tiles_y;
    const int b = seg / tiles_x;
    const int x0 = (seg - b * tiles_x) * K::kTileW;
    if (live && (t == 0 || y == 0)) strip_load_rows<K, true>(ring, in, b, x0, y, 3, H, W);  // a new segment
    cp_async_commit();
    cp_async_wait<0>();             // (A) this item's halo rows have landed ...
    fence_proxy_async();            //     ... are visible to the async proxy ...
    named_barrier(1 + wg, 128);     //     ... and to the warpgroup
    if (wg == 1 || t > 0) named_barrier(kTurn + wg, 256);  // the other warpgroup has issued its turn
    if (live) strip_mma<K, T, 1, 0>(acc, 0, wa, ring, y);
    if (wg == 0 || t + 1 < turns) named_barrier_arrive(kTurn + 1 - wg, 256);  // its turn
    if (live && q + 1 < my_end && y + 1 < tiles_y) strip_load_rows<K, true>(ring, in, b, x0, y + 3, 1, H, W);
    cp_async_commit();
    if (live) {
      wgmma_wait<0>();
      wgmma_pin(acc);
      strip_epilogue<K, T, 1, 0, TAIL>(acc, stg, out, tail, bias_r, b, y, x0, H, W, wg, wr, lane);
    }
  }
  cp_async_wait<0>();
#else
  __trap();  // not an sm_90a image: launch_pingpong refuses to launch it
#endif
}

#define VDSR_PINGPONG_VARIANTS(X) X() /* 14: weights in registers, 128-pixel rows, warpgroups in turns */
#define VDSR_PINGPONG_COUNT() +1
constexpr int kNumPingPongVariants = 0 VDSR_PINGPONG_VARIANTS(VDSR_PINGPONG_COUNT);

template <typename T>
void launch_pingpong(const void* in, void* out, const void* w, const float* b, int n, int h, int w_, int device,
                     cudaStream_t stream, bool pdl) {
  launch_wgmma_tiles<PingPongLaunch<false>, T, conv3x3_pingpong_kernel<T, false>>(in, out, w, b, nullptr, nullptr, n,
                                                                                  h, w_, device, stream, pdl);
}

template <typename T>
void launch_pingpong_tail(const void* in, float* z, const void* w, const float* b, const float* tail_w, int n, int h,
                          int w_, int device, cudaStream_t stream, bool pdl) {
  launch_wgmma_tiles<PingPongLaunch<true>, T, conv3x3_pingpong_kernel<T, true>>(in, nullptr, w, b, tail_w, z, n, h,
                                                                                w_, device, stream, pdl);
}

}  // namespace body
}  // namespace vdsr
