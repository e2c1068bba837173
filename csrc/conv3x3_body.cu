// Variant table and dispatch of the tensor-core body kernel (kernel: conv3x3_body.cuh).
#include <string>

#include "body_variants.cuh"
#include "vdsr_kernels.h"

namespace vdsr {
namespace body {
namespace {

#define VDSR_VARIANT_INFO(WM, WN, MI, S)                                                                   \
  BodyVariant{0, BodyTile<WM, WN, MI, S>::kTileH, kTileW, BodyTile<WM, WN, MI, S>::kThreads, MI * 16, \
              BodyTile<WM, WN, MI, S>::kNCols, S, BodyTile<WM, WN, MI, S>::kSmemBytes, 0, 0, 0},
// Winograd warp tile: 16 w-tiles = 64 output pixels x 16 out channels.
#define VDSR_WINO_INFO(S) \
  BodyVariant{0, WinoTile<S>::kTileH, kTileW, WinoTile<S>::kThreads, 64, 16, S, WinoTile<S>::kSmemBytes, 1, 0, 0},
// wgmma warp tile: each warp supplies 16 pixels of two 64-pixel M-blocks, its warpgroup all 64 channels.
#define VDSR_WGMMA_INFO(S, R)                                                                                     \
  BodyVariant{0, WgmmaTile<S, R>::kTileH, kTileW, WgmmaTile<S, R>::kThreads, 32, 64, S, WgmmaTile<S, R>::kSmemBytes, \
              0, 1, 0},
// wgmma strip: each warp holds 16 out channels of the 128 (RS: 64) pixels of its warpgroup's row.
#define VDSR_STRIP_INFO(L, S, R)                                                                               \
  BodyVariant{0, StripTile<R>::kTileH, StripTile<R>::kTileW, StripTile<R>::kThreads, StripTile<R>::kTileW, 16, \
              StripTile<R>::kStages, StripTile<R>::kSmemBytes, 0, 1, 1},
// ping-pong: each warp holds 16 out channels of the 128 pixels of its warpgroup's own row.
#define VDSR_PINGPONG_INFO()                                                                                      \
  BodyVariant{0, PingPongTile::kTileH, PingPongTile::kTileW, PingPongTile::kThreads, PingPongTile::kTileW, 16, \
              PingPongTile::kStages, PingPongTile::kSmemBytes, 0, 1, 1},
const BodyVariant kVariantInfo[kNumAllVariants] = {VDSR_BODY_VARIANTS(VDSR_VARIANT_INFO)
                                                       VDSR_WINO_VARIANTS(VDSR_WINO_INFO)
                                                           VDSR_WGMMA_VARIANTS(VDSR_WGMMA_INFO)
                                                               VDSR_STRIP_VARIANTS(VDSR_STRIP_INFO)
                                                                   VDSR_PINGPONG_VARIANTS(VDSR_PINGPONG_INFO)
                                                                       VDSR_SMALL_BODY_VARIANTS(VDSR_VARIANT_INFO)};

// Automatic choice: the first of these that fits the device's shared memory (and, for a wgmma variant,
// runs on it: Hopper with an sm_90a build).  Measured on an H200 at 1080p fp16 (benchmarks/results, runs 9
// and 10, 2026-11-26): one body layer took 0.310 ms with variant 9, 0.324 with 8, 0.348 with 7, 0.386 with
// 6, 0.400 with 5, 0.428 with 4, 0.439 with 1 (run 8: 0.448 / 0.487 with 0, 2); cuDNN's fused layer 0.355.
// The whole network (run 10, tail fused for 6-11) 5.61 ms with 10, 5.60 with 11, 5.66 with 9, 5.72 with 8,
// 5.99 with 7, 7.04 with 6; 7.35 with 5, 8.07 with 4, 8.32 with 0 (cuDNN's fused chain 7.18); at 4K 21.76
// with 10, 21.79 with 11, 21.90 with 9.  The Winograd variant 3 (0.630 ms a layer) is not listed.
// The 99 KB variants 15 and 16 come last (not timed: no sm_86/sm_89 GPU at hand; see conv3x3_body.cuh).
constexpr int kAutoOrder[] = {10, 11, 9, 8, 7, 6, 5, 4, 1, 0, 2, 15, 16};
constexpr int kNumAuto = sizeof(kAutoOrder) / sizeof(kAutoOrder[0]);
static_assert(kFirstSmallVariant == 15 && kNumSmallVariants == 2, "kAutoOrder names the 99 KB variants 15 and 16");

}  // namespace
}  // namespace body

using body::check_device_index;
using body::kMaxDevices;
using body::kNumAllVariants;
using body::kVariantInfo;
using body::kAutoOrder;
using body::kNumAuto;

const BodyVariant* body_variants(int* count) {
  static BodyVariant table[kNumAllVariants];
  static bool filled = false;
  if (!filled) {
    for (int i = 0; i < kNumAllVariants; ++i) {
      table[i] = kVariantInfo[i];
      table[i].id = i;
      const int s = i - body::kFirstStripVariant;
      table[i].tail_spread = s >= 0 && s < body::kNumStripVariants && body::kTailSpreadLaunchFp16[s] != nullptr;
    }
    filled = true;
  }
  *count = kNumAllVariants;
  return table;
}

int body_auto_variant(int device) {
  check_device_index(device);
  static int optin_cache[kMaxDevices] = {};  // per device, queried once
  if (optin_cache[device] == 0) {
    VDSR_CUDA_CHECK(cudaDeviceGetAttribute(&optin_cache[device], cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  }
  for (int id : kAutoOrder) {
    if (kVariantInfo[id].smem_bytes > optin_cache[device]) continue;
    if (kVariantInfo[id].wgmma && !body::wgmma_runs_on(device)) continue;  // Hopper with an sm_90a build only
    return id;
  }
  throw std::runtime_error("vdsr_fast._C: device " + std::to_string(device) + " has only " +
                           std::to_string(optin_cache[device]) +
                           " bytes of shared memory per block; the smallest body kernel needs " +
                           std::to_string(kVariantInfo[kAutoOrder[kNumAuto - 1]].smem_bytes));
}

void check_kernel_image(int device) {
  check_device_index(device);
  int prev = -1;
  VDSR_CUDA_CHECK(cudaGetDevice(&prev));
  if (prev != device) VDSR_CUDA_CHECK(cudaSetDevice(device));
  cudaFuncAttributes attr{};
  // Fails with cudaErrorNoKernelImageForDevice / cudaErrorInvalidDeviceFunction when the module was
  // built for other GPUs (VDSR_FAST_CUDA_ARCHS) and carries no PTX this driver can compile.
  const cudaError_t err = body::probe_kernel_image(&attr);
  if (prev != device) cudaSetDevice(prev);
  if (err != cudaSuccess) {
    cudaGetLastError();  // clear the (non-sticky) error so later calls do not report it
    throw_cuda_error(err, "cudaFuncGetAttributes(conv3x3_body_kernel)", __FILE__, __LINE__);
  }
}

void launch_body(const void* in, void* out, const void* w, const float* b, int n, int h, int w_, DType dtype,
                 int device, cudaStream_t stream, int variant, bool pdl) {
  if (variant < 0) variant = body_auto_variant(device);
  if (variant >= kNumAllVariants) {
    throw std::invalid_argument("vdsr_fast._C: no body kernel variant " + std::to_string(variant) + " (there are " +
                                std::to_string(kNumAllVariants) + ")");
  }
  if (dtype == kFloat16) return body::kLaunchFp16[variant](in, out, w, b, n, h, w_, device, stream, pdl);
  if (dtype == kBFloat16) return body::kLaunchBf16[variant](in, out, w, b, n, h, w_, device, stream, pdl);
  throw std::invalid_argument("vdsr_fast._C: unknown dtype code " + std::to_string(static_cast<int>(dtype)));
}

int num_head_schedules() { return body::kNumHeadSchedules; }

void launch_head_body(const float* x, void* out, const float* head_w, const float* head_b, const void* w,
                      const float* b, int n, int h, int w_, DType dtype, int device, cudaStream_t stream, bool pdl,
                      int schedule) {
  check_device_index(device);
  if (schedule < 0 || schedule >= body::kNumHeadSchedules) {
    throw std::invalid_argument("vdsr_fast._C: no fused-head schedule " + std::to_string(schedule) + " (0.." +
                                std::to_string(body::kNumHeadSchedules - 1) + ")");
  }
  if (!body::wgmma_runs_on(device)) {
    throw std::invalid_argument("vdsr_fast._C: the fused head runs on the wgmma strip kernel: it needs compute "
                                "capability 9.0 and a build for sm_90a");
  }
  const auto* table = dtype == kFloat16 ? body::kHeadLaunchFp16 : dtype == kBFloat16 ? body::kHeadLaunchBf16 : nullptr;
  if (table != nullptr) return table[schedule](x, out, w, b, head_w, head_b, n, h, w_, device, stream, pdl);
  throw std::invalid_argument("vdsr_fast._C: unknown dtype code " + std::to_string(static_cast<int>(dtype)));
}

void launch_body_tail_partials(const void* in, float* z, const void* w, const float* b, const float* tail_w, int n,
                               int h, int w_, DType dtype, int device, cudaStream_t stream, int variant, bool pdl,
                               bool spread) {
  if (variant < 0) variant = body_auto_variant(device);
  if (variant >= kNumAllVariants || !kVariantInfo[variant].tail_partials) {
    throw std::invalid_argument("vdsr_fast._C: body kernel variant " + std::to_string(variant) +
                                " has no tail_partials kernel (the fused tail needs one of the wgmma strip variants " +
                                std::to_string(body::kFirstStripVariant) + ".." +
                                std::to_string(kNumAllVariants - 1) + ")");
  }
  const int s = variant - body::kFirstStripVariant;
  const body::TailLaunchFn* table = dtype == kFloat16    ? (spread ? body::kTailSpreadLaunchFp16 : body::kTailLaunchFp16)
                                    : dtype == kBFloat16 ? (spread ? body::kTailSpreadLaunchBf16 : body::kTailLaunchBf16)
                                                         : nullptr;
  if (table == nullptr) {
    throw std::invalid_argument("vdsr_fast._C: unknown dtype code " + std::to_string(static_cast<int>(dtype)));
  }
  if (spread && (s >= body::kNumStripVariants || table[s] == nullptr)) {  // the spread table covers the strip variants
    throw std::invalid_argument("vdsr_fast._C: body kernel variant " + std::to_string(variant) +
                                " has no spread tail schedule (tail_spread: the strip variants 8 and 10)");
  }
  return table[s](in, z, w, b, tail_w, n, h, w_, device, stream, pdl);
}

}  // namespace vdsr
