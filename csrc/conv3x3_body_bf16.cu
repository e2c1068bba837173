// The bf16 instantiations of the body kernel variants (see conv3x3_body.cuh).
#include "conv3x3_body.cuh"

namespace vdsr {
namespace body {

#define VDSR_BODY_LAUNCH_BF16(WM, WN, MI, S) &launch_variant<__nv_bfloat16, WM, WN, MI, S>,
const LaunchFn kLaunchBf16[kNumVariants] = {VDSR_BODY_VARIANTS(VDSR_BODY_LAUNCH_BF16)};

}  // namespace body
}  // namespace vdsr
