// The bf16 instantiations of the body kernel variants (conv3x3_body.cuh, winograd_body.cuh, wgmma_body.cuh, wgmma_strip_body.cuh).
#include "body_variants.cuh"

namespace vdsr {
namespace body {

#define VDSR_BODY_LAUNCH_BF16(WM, WN, MI, S) &launch_variant<__nv_bfloat16, WM, WN, MI, S>,
#define VDSR_WINO_LAUNCH_BF16(S) &launch_winograd<__nv_bfloat16, S>,
#define VDSR_WGMMA_LAUNCH_BF16(S, R) &launch_wgmma<__nv_bfloat16, S, R>,
#define VDSR_STRIP_LAUNCH_BF16(L, S, R) &launch_strip<__nv_bfloat16, L, S, R>,
#define VDSR_PINGPONG_LAUNCH_BF16() &launch_pingpong<__nv_bfloat16>,
const LaunchFn kLaunchBf16[kNumAllVariants] = {VDSR_BODY_VARIANTS(VDSR_BODY_LAUNCH_BF16)
                                                   VDSR_WINO_VARIANTS(VDSR_WINO_LAUNCH_BF16)
                                                   VDSR_WGMMA_VARIANTS(VDSR_WGMMA_LAUNCH_BF16)
                                                       VDSR_STRIP_VARIANTS(VDSR_STRIP_LAUNCH_BF16)
                                                           VDSR_PINGPONG_VARIANTS(VDSR_PINGPONG_LAUNCH_BF16)
                                                               VDSR_SMALL_BODY_VARIANTS(VDSR_BODY_LAUNCH_BF16)};
#define VDSR_STRIP_TAIL_BF16(L, S, R) &launch_strip_tail<__nv_bfloat16, L, S, R>,
#define VDSR_PINGPONG_TAIL_BF16() &launch_pingpong_tail<__nv_bfloat16>,
const TailLaunchFn kTailLaunchBf16[kNumTailVariants] = {
    VDSR_STRIP_VARIANTS(VDSR_STRIP_TAIL_BF16) VDSR_PINGPONG_VARIANTS(VDSR_PINGPONG_TAIL_BF16)};
#define VDSR_STRIP_SPREAD_BF16(L, S, R) strip_tail_spread_launch<__nv_bfloat16, L, S, R>(),
const TailLaunchFn kTailSpreadLaunchBf16[kNumStripVariants] = {VDSR_STRIP_VARIANTS(VDSR_STRIP_SPREAD_BF16)};
const HeadLaunchFn kHeadLaunchBf16[kNumHeadSchedules] = {
    &launch_strip_head<__nv_bfloat16, 0>, &launch_strip_head<__nv_bfloat16, 1>, &launch_strip_head<__nv_bfloat16, 2>};

}  // namespace body
}  // namespace vdsr
