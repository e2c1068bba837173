// Device-side helpers shared by the kernels: dtype traits and the sm_80 PTX wrappers
// (cp.async, ldmatrix, mma.sync m16n8k16).  Fragment layouts are spelled out next to each wrapper,
// exactly as the PTX ISA documents them ("Matrix fragments for mma.m16n8k16 with floating point type").
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace vdsr {

// ---------------------------------------------------------------------------------------------
// Storage types: conversions between fp32 and a packed pair of 16-bit values.
// ---------------------------------------------------------------------------------------------
template <typename T>
struct Storage;

template <>
struct Storage<__half> {
  static __device__ __forceinline__ uint32_t pack2(float lo, float hi) {
    __half2 v = __floats2half2_rn(lo, hi);  // .x = lo (lower address), .y = hi
    return *reinterpret_cast<uint32_t*>(&v);
  }
  static __device__ __forceinline__ float2 unpack2(uint32_t u) {
    return __half22float2(*reinterpret_cast<__half2*>(&u));
  }
};

template <>
struct Storage<__nv_bfloat16> {
  static __device__ __forceinline__ uint32_t pack2(float lo, float hi) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&v);
  }
  static __device__ __forceinline__ float2 unpack2(uint32_t u) {
    return __bfloat1622float2(*reinterpret_cast<__nv_bfloat162*>(&u));
  }
};

// ReLU that keeps NaN (like torch.relu), so a read of uninitialised memory cannot hide behind a 0.
__device__ __forceinline__ float relu_keep_nan(float v) { return v < 0.0f ? 0.0f : v; }

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// ---------------------------------------------------------------------------------------------
// cp.async (sm_80+): 16-byte global -> shared copies that bypass registers and L1 (.cg).
// With valid == false the source size is 0: nothing is read and the 16 destination bytes are
// zero-filled -- this is how the kernels implement the conv's zero padding.  `gmem` must still be a
// valid address, so callers pass the tensor's base pointer for out-of-bounds pixels.
// ---------------------------------------------------------------------------------------------
__device__ __forceinline__ void cp_async_16(uint32_t smem_dst, const void* gmem, bool valid) {
  const int src_bytes = valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_dst), "l"(gmem), "r"(src_bytes)
               : "memory");
}

__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }

// Wait until at most N of this thread's committed groups are still in flight.
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

// ---------------------------------------------------------------------------------------------
// ldmatrix.sync.aligned.m8n8.x4.shared.b16: loads four 8x8 matrices of 16-bit elements.
// Lanes 8*i .. 8*i+7 give the shared addresses of rows 0..7 of matrix i (16 contiguous bytes each).
// Result: r[i] of lane l holds matrix i's elements (row = l / 4, cols = 2*(l % 4) + {0, 1}),
// the lower column in the lower 16 bits.
// ---------------------------------------------------------------------------------------------
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], uint32_t smem_row_addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_row_addr));
}

// ---------------------------------------------------------------------------------------------
// mma.sync.aligned.m16n8k16.row.col.f32.{f16,bf16}.{f16,bf16}.f32: D(16x8) = A(16x16) * B(16x8) + C.
// With g = lane / 4 ("groupID") and t = lane % 4 ("threadID_in_group"):
//   A (row-major, 4 x .b32 each holding 2 elements, lower column in the low half):
//     a[0] = A[g    ][2t .. 2t+1]     a[1] = A[g + 8][2t .. 2t+1]
//     a[2] = A[g    ][2t+8 .. 2t+9]   a[3] = A[g + 8][2t+8 .. 2t+9]
//   B (K x N, "col": the two elements of a register are consecutive in K):
//     b[0] = B[2t .. 2t+1][g]         b[1] = B[2t+8 .. 2t+9][g]
//   C / D (fp32):
//     c[0] = C[g][2t]   c[1] = C[g][2t+1]   c[2] = C[g+8][2t]   c[3] = C[g+8][2t+1]
// ---------------------------------------------------------------------------------------------
template <typename T>
__device__ __forceinline__ void mma_16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1);

template <>
__device__ __forceinline__ void mma_16816<__half>(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
      "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

template <>
__device__ __forceinline__ void mma_16816<__nv_bfloat16>(float (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                                         uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
      "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

}  // namespace vdsr
