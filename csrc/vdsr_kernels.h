// Host-side interface of the vdsr_fast CUDA kernels (csrc/*.cu), used by csrc/bindings.cpp.
//
// Every launcher takes raw device pointers, the problem shape, a dtype code for the NHWC activations
// and the CUDA stream to launch on.  Launchers check the launch (cudaGetLastError) and throw
// std::runtime_error with the CUDA error string on failure; they do not synchronise.
//
// Layouts (all contiguous):
//   Y plane         float32  [N][H][W]            (the (N,1,H,W) NCHW tensor of the public API)
//   activations     T        [N][H][W][64]        NHWC, T = fp16 or bf16 (the dtype code)
//   head weights    float32  [64][9]              w0[n][0][ky][kx] at [n][ky*3+kx]
//   head bias       float32  [64]
//   body weights    T        [9][64][64]          w[n][c][ky][kx] at [ky*3+kx][n][c] (K-major per out channel)
//                            [16][64][64]         Winograd variants: (G w G^T)[xi][nu] at [xi*4+nu][n][c]
//   body bias       float32  [64]
//   tail weights    float32  [9][64]              wL[0][c][ky][kx] at [ky*3+kx][c]
//   tail bias       float32  [1]                  (device pointer: no host synchronisation)
//   tail partials   float32  [N][H][W][9]         z[p][ky*3+kx] = sum_c wL[ky*3+kx][c] * act[p][c] (fused tail)
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <stdexcept>
#include <string>

namespace vdsr {

constexpr int kChannels = 64;  // the body kernels are written for exactly 64 channels

enum DType : int { kFloat16 = 0, kBFloat16 = 1 };

[[noreturn]] inline void throw_cuda_error(cudaError_t err, const char* what, const char* file, int line) {
  // A failed runtime call (e.g. cudaFuncSetAttribute for a variant larger than the device's opt-in
  // shared memory) also stays recorded as the runtime's "last error"; clear it (if not sticky), or the
  // next VDSR_CHECK_LAUNCH (cudaGetLastError) after a successful launch would report it again.
  cudaGetLastError();
  throw std::runtime_error(std::string("vdsr_fast._C: CUDA error '") + cudaGetErrorString(err) + "' (" +
                           cudaGetErrorName(err) + ") from " + what + " at " + file + ":" + std::to_string(line));
}

}  // namespace vdsr

// Check a CUDA runtime call; a failure becomes a C++ exception (a Python RuntimeError through pybind11).
#define VDSR_CUDA_CHECK(expr)                                                  \
  do {                                                                         \
    cudaError_t vdsr_err_ = (expr);                                            \
    if (vdsr_err_ != cudaSuccess) {                                            \
      ::vdsr::throw_cuda_error(vdsr_err_, #expr, __FILE__, __LINE__);          \
    }                                                                          \
  } while (0)

// Check the kernel launch just made (bad configuration, no kernel image for this device...).
#define VDSR_CHECK_LAUNCH(kernel_name) VDSR_CUDA_CHECK(cudaGetLastError())

namespace vdsr {

// Head: out = relu(conv3x3(x, 1 -> 64) + b), x fp32 Y plane, out NHWC T.  mma: on tensor cores (x and w
// rounded to T, fp32 accumulation), else fp32 FMAs on CUDA cores.
void launch_head(const float* x, void* out, const float* w, const float* b, int n, int h, int w_, DType dtype,
                 bool mma, cudaStream_t stream);

// Body: out = relu(conv3x3(in, 64 -> 64) + b) on tensor cores.  `variant` picks the kernel variant
// (an index into body_variants(); -1 = automatic, see body_auto_variant).  pdl: a wgmma strip variant is launched
// with programmatic stream serialization (it may start while the stream's previous kernel finishes, and waits
// for it before touching an activation); the other variants ignore it.
void launch_body(const void* in, void* out, const void* w, const float* b, int n, int h, int w_, DType dtype,
                 int device, cudaStream_t stream, int variant = -1, bool pdl = false);

// Tail: y = x + conv3x3(act, 64 -> 1) + b, x and y fp32 Y planes (y may not alias act; y may alias x).
void launch_tail(const void* act, const float* x, float* y, const float* w, const float* b, int n, int h, int w_,
                 DType dtype, cudaStream_t stream);

// The fused tail (body variants with `tail_partials`: the wgmma strip kernels, sm_90a).  First the last body
// layer, which writes z[N][H][W][9] fp32 -- the tail conv's per-tap partial sums of each pixel's rounded
// activation, z[p][ky*3+kx] = sum_c wL[ky*3+kx][c] * relu(conv(in) + b)[p][c] -- instead of the activation;
// `variant` as launch_body's (-1: automatic), and it must be such a variant.  Then the gather:
// y = x + bL + sum_{ky,kx} z[y+ky-1][x+kx-1][ky*3+kx] (y may alias x, not z).
// spread: the variant's spread schedule of the partial sums (BodyVariant::tail_spread), each epilogue part summing
// the pixels it staged, between the item's wgmma groups; the same sums, added in another order.
void launch_body_tail_partials(const void* in, float* z, const void* w, const float* b, const float* tail_w, int n,
                               int h, int w_, DType dtype, int device, cudaStream_t stream, int variant = -1,
                               bool pdl = false, bool spread = false);
void launch_tail_gather(const float* z, const float* x, float* y, const float* b, int n, int h, int w_,
                        cudaStream_t stream);

// The fused head (a wgmma strip kernel, sm_90a; whatever the body variant): the first body layer computed straight
// from the Y plane, out = relu(conv3x3(relu(conv3x3(x, 1 -> 64) + head_b), 64 -> 64) + b), the head's activations
// rounded to T as launch_head's (mma = false) are: the same bits as launch_head then launch_body, without the head's
// activation tensor.  schedule: 0 (the default) .. num_head_schedules() - 1, the kernel's wgmma grouping and where
// it computes the halo rows (wgmma_strip_body.cuh, kHeadSplits).
void launch_head_body(const float* x, void* out, const float* head_w, const float* head_b, const void* w,
                      const float* b, int n, int h, int w_, DType dtype, int device, cudaStream_t stream, bool pdl,
                      int schedule = 0);
int num_head_schedules();

// The body kernel variants (index = id) and the one launch_body picks automatically on `device`.
struct BodyVariant {
  int id;
  int tile_h, tile_w;   // output pixels per tile
  int threads;          // CTA size (warps = threads / 32)
  int warp_m, warp_n;   // warp tile: pixels x out channels
  int stages;           // cp.async pipeline depth (halo buffers)
  int smem_bytes;       // dynamic shared memory per CTA (weights + halo buffers)
  int winograd;         // 1: Winograd F(2x2, 3x3) kernel, weights packed [16][64][64] (U = G g G^T)
  int wgmma;            // 1: wgmma kernel: needs compute capability 9.0 and a build for sm_90a
  int tail_partials;    // 1: launch_body_tail_partials runs it (the last body layer of a fused tail)
  int tail_spread;      // 1: ... also with spread = true (the partial sums in every epilogue part)
};
const BodyVariant* body_variants(int* count);
int body_auto_variant(int device);

// Throws if `device` cannot run the kernels in this build (no SASS or PTX for its architecture).
void check_kernel_image(int device);

}  // namespace vdsr
