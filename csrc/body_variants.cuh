// Every body kernel variant: direct mma.sync (conv3x3_body.cuh, ids 0 .. kNumVariants - 1), then
// Winograd (winograd_body.cuh), then wgmma (wgmma_body.cuh), then the wgmma strip kernel
// (wgmma_strip_body.cuh), then its ping-pong form (wgmma_pingpong_body.cuh), then the direct kernel's
// 99 KB variants (conv3x3_body.cuh, VDSR_SMALL_BODY_VARIANTS).  The list index is the variant id.
#pragma once

#include "wgmma_body.cuh"
#include "wgmma_pingpong_body.cuh"
#include "wgmma_strip_body.cuh"
#include "winograd_body.cuh"

namespace vdsr {
namespace body {

constexpr int kFirstSmallVariant =
    kNumVariants + kNumWinoVariants + kNumWgmmaVariants + kNumStripVariants + kNumPingPongVariants;
constexpr int kNumAllVariants = kFirstSmallVariant + kNumSmallVariants;
extern const LaunchFn kLaunchFp16[kNumAllVariants];  // conv3x3_body_fp16.cu
extern const LaunchFn kLaunchBf16[kNumAllVariants];  // conv3x3_body_bf16.cu

// The last-layer kernels of a fused tail (launch_strip_tail, launch_pingpong_tail) of the strip and ping-pong
// variants, index = id - kFirstStripVariant.
constexpr int kFirstStripVariant = kNumVariants + kNumWinoVariants + kNumWgmmaVariants;
constexpr int kNumTailVariants = kNumStripVariants + kNumPingPongVariants;
using TailLaunchFn = void (*)(const void*, float*, const void*, const float*, const float*, int, int, int, int,
                              cudaStream_t, bool);
extern const TailLaunchFn kTailLaunchFp16[kNumTailVariants];  // conv3x3_body_fp16.cu
extern const TailLaunchFn kTailLaunchBf16[kNumTailVariants];  // conv3x3_body_bf16.cu
// The same with the spread schedule of the partial sums (tail_spread), index = id - kFirstStripVariant; nullptr where a
// strip variant has none (launch_strip_tail_spread).
template <typename T, bool L, int S, bool R>
constexpr TailLaunchFn strip_tail_spread_launch() {
  if constexpr (kStripSpreadTail<R, S>) {
    return &launch_strip_tail_spread<T, L, S, R>;
  } else {
    return nullptr;
  }
}
extern const TailLaunchFn kTailSpreadLaunchFp16[kNumStripVariants];  // conv3x3_body_fp16.cu
extern const TailLaunchFn kTailSpreadLaunchBf16[kNumStripVariants];  // conv3x3_body_bf16.cu

// The first-layer kernels of a fused head (launch_strip_head), one per schedule (kHeadSplits), whatever the body
// variant.
using HeadLaunchFn = void (*)(const float*, void*, const void*, const float*, const float*, const float*, int, int, int,
                              int, cudaStream_t, bool);
extern const HeadLaunchFn kHeadLaunchFp16[kNumHeadSchedules];  // conv3x3_body_fp16.cu
extern const HeadLaunchFn kHeadLaunchBf16[kNumHeadSchedules];  // conv3x3_body_bf16.cu

// Whether the wgmma variants run on `device` (the current device): an sm_90a image on a 9.0 GPU.
bool wgmma_runs_on(int device);  // conv3x3_body_fp16.cu

}  // namespace body
}  // namespace vdsr
