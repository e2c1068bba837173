// The fp16 instantiations of the body kernel variants (conv3x3_body.cuh, winograd_body.cuh, wgmma_body.cuh, wgmma_strip_body.cuh).
#include "body_variants.cuh"

namespace vdsr {
namespace body {

#define VDSR_BODY_LAUNCH_FP16(WM, WN, MI, S) &launch_variant<__half, WM, WN, MI, S>,
#define VDSR_WINO_LAUNCH_FP16(S) &launch_winograd<__half, S>,
#define VDSR_WGMMA_LAUNCH_FP16(S, R) &launch_wgmma<__half, S, R>,
#define VDSR_STRIP_LAUNCH_FP16(L, S, R) &launch_strip<__half, L, S, R>,
#define VDSR_PINGPONG_LAUNCH_FP16() &launch_pingpong<__half>,
const LaunchFn kLaunchFp16[kNumAllVariants] = {VDSR_BODY_VARIANTS(VDSR_BODY_LAUNCH_FP16)
                                                   VDSR_WINO_VARIANTS(VDSR_WINO_LAUNCH_FP16)
                                                   VDSR_WGMMA_VARIANTS(VDSR_WGMMA_LAUNCH_FP16)
                                                       VDSR_STRIP_VARIANTS(VDSR_STRIP_LAUNCH_FP16)
                                                           VDSR_PINGPONG_VARIANTS(VDSR_PINGPONG_LAUNCH_FP16)
                                                               VDSR_SMALL_BODY_VARIANTS(VDSR_BODY_LAUNCH_FP16)};
#define VDSR_STRIP_TAIL_FP16(L, S, R) &launch_strip_tail<__half, L, S, R>,
#define VDSR_PINGPONG_TAIL_FP16() &launch_pingpong_tail<__half>,
const TailLaunchFn kTailLaunchFp16[kNumTailVariants] = {
    VDSR_STRIP_VARIANTS(VDSR_STRIP_TAIL_FP16) VDSR_PINGPONG_VARIANTS(VDSR_PINGPONG_TAIL_FP16)};
#define VDSR_STRIP_SPREAD_FP16(L, S, R) strip_tail_spread_launch<__half, L, S, R>(),
const TailLaunchFn kTailSpreadLaunchFp16[kNumStripVariants] = {VDSR_STRIP_VARIANTS(VDSR_STRIP_SPREAD_FP16)};

const HeadLaunchFn kHeadLaunchFp16[kNumHeadSchedules] = {
    &launch_strip_head<__half, 0>, &launch_strip_head<__half, 1>, &launch_strip_head<__half, 2>};

bool wgmma_runs_on(int device) { return sm90a_image_runs(conv3x3_wgmma_kernel<__half, 3, false>, device); }

cudaError_t probe_kernel_image(cudaFuncAttributes* attr) {
  return cudaFuncGetAttributes(attr, conv3x3_body_kernel<__half, 4, 2, 2, 2>);
}

}  // namespace body
}  // namespace vdsr
