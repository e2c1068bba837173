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

// ---------------------------------------------------------------------------------------------
// wgmma (sm_90a only).  VDSR_WGMMA is 1 in the sm_90a device pass and 0 in every other pass; there
// the wrappers below compile to a trap, and the host never launches a kernel that uses them (see
// wgmma_body.cuh).  From the PTX ISA, "Asynchronous Warpgroup Level Matrix Multiply-Accumulate":
//   * wgmma.mma_async.sync.aligned.m64n64k16.f32.{f16,bf16}.{f16,bf16} d, a, b-desc, scale-d,
//     imm-scale-a, imm-scale-b, imm-trans-b: D(64x64, fp32) = A(64x16) * B(16x64) + D, issued by the
//     4 warps of a warpgroup together.  A in registers: warp w of the group holds rows 16w .. 16w+15
//     in exactly the mma.m16n8k16 A fragment layout (a[0] = A[g][2t..], a[1] = A[g+8][2t..],
//     a[2] = A[g][2t+8..], a[3] = A[g+8][2t+8..]).  D: warp w holds rows 16w .. 16w+15; d[4i .. 4i+3]
//     is the mma.m16n8k16 C fragment of columns 8i .. 8i+7 (d[4i] = D[g][8i+2t], d[4i+1] =
//     D[g][8i+2t+1], d[4i+2] = D[g+8][8i+2t], d[4i+3] = D[g+8][8i+2t+1]).
//   * B from shared memory through a 64-bit matrix descriptor: bits 0-13 start address >> 4,
//     16-29 leading-dimension byte offset >> 4, 32-45 stride-dimension byte offset >> 4, 49-51 base
//     offset, 62-63 swizzle mode (1 = 128-byte).  B "column-major" = K-major: column n's 16 k values
//     are contiguous.  With the 128-byte swizzle, core matrices of 8 rows (n) x 128 bytes are dense
//     (row r of a group at +128 r), groups 8 rows apart at the stride offset (SBO), and the 16-byte
//     chunk j of a row at chunk j ^ (address bits 7-9): exactly the kernels' swz() layout when the
//     rows start 1024-byte aligned.  A k16 slice of a 64-wide row starts 32 bytes per slice in (the
//     start address advances; LBO unused with this swizzle, set to 1 as CUTLASS does).
//   * wgmma.fence orders the registers written before it (A fragments, zeroed accumulators) with the
//     wgmma that reads them; commit_group closes a group of issued wgmmas; wait_group N returns when
//     at most N groups are pending.  Registers of a pending wgmma must not be written or read.
// ---------------------------------------------------------------------------------------------
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define VDSR_WGMMA 1
#else
#define VDSR_WGMMA 0
#endif

// Pin accumulator registers at this point of the instruction stream (an empty asm that "reads and
// writes" them, as CUTLASS's warpgroup_fence_operand): without it the compiler may sink the zeroing of
// the accumulators past wgmma_fence(), and ptxas then serialises the wgmmas around those writes.
template <int N>
__device__ __forceinline__ void wgmma_pin(float (&d)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+f"(d[i])::"memory");
}

// Descriptor of a K-major, 128-byte-swizzled operand whose 8-row groups are 1024 bytes apart.
__device__ __forceinline__ uint64_t wgmma_desc_sw128(uint32_t smem_start) {
  return static_cast<uint64_t>((smem_start & 0x3FFFF) >> 4) | (uint64_t{1} << 16) | (uint64_t{1024 >> 4} << 32) |
         (uint64_t{1} << 62);
}

// Descriptor of a K-major operand without swizzle ("interleave"): core matrices of 8 rows x 16 bytes, each
// 128 contiguous bytes (row r at +16 r); the two 16-byte k halves of a k16 slice `lbo` bytes apart (leading
// dimension: K), consecutive 8-row groups `sbo` bytes apart (stride dimension: M or N).  Any 16-byte aligned
// start works: no swizzle atom to stay aligned with.
__device__ __forceinline__ uint64_t wgmma_desc_interleave(uint32_t smem_start, uint32_t lbo, uint32_t sbo) {
  return static_cast<uint64_t>((smem_start & 0x3FFFF) >> 4) | (static_cast<uint64_t>((lbo >> 4) & 0x3FFF) << 16) |
         (static_cast<uint64_t>((sbo >> 4) & 0x3FFF) << 32);
}

// Shared memory written by this thread through the generic proxy (st.shared, cp.async) becomes visible to
// the async proxy (wgmma reading operands by descriptor) once this fence is followed by a barrier.
__device__ __forceinline__ void fence_proxy_async() {
#if VDSR_WGMMA
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
#endif
}

// bar.sync on a named barrier for `threads` threads (e.g. one warpgroup: 128).
__device__ __forceinline__ void named_barrier(int id, int threads) {
  asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}

// stmatrix.sync.aligned.m8n8.x4.trans.shared.b16 (sm_90): the inverse of ldmatrix .trans.  Lane 8i + r gives
// the address of row r of matrix i (16 bytes); register i of lane l holds elements (row l / 4, cols
// 2 (l % 4), +1) of matrix i, the lower column in the low half; .trans stores the transpose: memory row r of
// matrix i receives column r (the 8 values that lanes r / 2, 4 + r / 2, ... hold at position r % 2).
__device__ __forceinline__ void stmatrix_x4_trans(uint32_t smem, const uint32_t (&v)[4]) {
#if VDSR_WGMMA
  asm volatile("stmatrix.sync.aligned.m8n8.x4.trans.shared.b16 [%0], {%1, %2, %3, %4};\n" ::"r"(smem), "r"(v[0]),
               "r"(v[1]), "r"(v[2]), "r"(v[3])
               : "memory");
#else
  __trap();
#endif
}

__device__ __forceinline__ void wgmma_fence() {
#if VDSR_WGMMA
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#endif
}

__device__ __forceinline__ void wgmma_commit() {
#if VDSR_WGMMA
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
#endif
}

template <int N>
__device__ __forceinline__ void wgmma_wait() {
#if VDSR_WGMMA
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
#endif
}

#define VDSR_WGMMA_D32                                                                                      \
  "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), \
      "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]),  \
      "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), \
      "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
#define VDSR_WGMMA_RS(TYPE)                                                                                  \
  "wgmma.mma_async.sync.aligned.m64n64k16.f32." TYPE "." TYPE " "                                           \
  "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, " \
  "%23, %24, %25, %26, %27, %28, %29, %30, %31}, {%32, %33, %34, %35}, %36, 1, 1, 1, 0;\n"

// D += A * B: A (this warp's 16 rows) in registers, B (16 x 64) by descriptor; scale-d = 1 (accumulate).
template <typename T>
__device__ __forceinline__ void wgmma_m64n64k16(float (&d)[32], const uint32_t (&a)[4], uint64_t desc_b);

template <>
__device__ __forceinline__ void wgmma_m64n64k16<__half>(float (&d)[32], const uint32_t (&a)[4], uint64_t desc_b) {
#if VDSR_WGMMA
  asm volatile(VDSR_WGMMA_RS("f16") : VDSR_WGMMA_D32 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b));
#else
  __trap();
#endif
}

template <>
__device__ __forceinline__ void wgmma_m64n64k16<__nv_bfloat16>(float (&d)[32], const uint32_t (&a)[4],
                                                               uint64_t desc_b) {
#if VDSR_WGMMA
  asm volatile(VDSR_WGMMA_RS("bf16") : VDSR_WGMMA_D32 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b));
#else
  __trap();
#endif
}
#undef VDSR_WGMMA_RS
#undef VDSR_WGMMA_D32

#define VDSR_WGMMA_D64                                                                                          \
  "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]),     \
      "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]),      \
      "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]),     \
      "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]),     \
      "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]),     \
      "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]),     \
      "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]),     \
      "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
#define VDSR_WGMMA_SS128(TYPE)                                                                                 \
  "wgmma.mma_async.sync.aligned.m64n128k16.f32." TYPE "." TYPE " "                                            \
  "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, "  \
  "%23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, "    \
  "%44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, "       \
  "%64, %65, 1, 1, 1, 0, 0;\n"

// D (64 x 128, fp32) += A (64 x 16) * B (16 x 128), both by descriptor (K-major: imm-trans-a = imm-trans-b = 0).
// D: warp w of the group holds rows 16w .. 16w+15; d[4i .. 4i+3] is the m16n8 C fragment of columns 8i .. 8i+7.
template <typename T>
__device__ __forceinline__ void wgmma_m64n128k16_ss(float (&d)[64], uint64_t desc_a, uint64_t desc_b);

template <>
__device__ __forceinline__ void wgmma_m64n128k16_ss<__half>(float (&d)[64], uint64_t desc_a, uint64_t desc_b) {
#if VDSR_WGMMA
  asm volatile(VDSR_WGMMA_SS128("f16") : VDSR_WGMMA_D64 : "l"(desc_a), "l"(desc_b));
#else
  __trap();
#endif
}

template <>
__device__ __forceinline__ void wgmma_m64n128k16_ss<__nv_bfloat16>(float (&d)[64], uint64_t desc_a, uint64_t desc_b) {
#if VDSR_WGMMA
  asm volatile(VDSR_WGMMA_SS128("bf16") : VDSR_WGMMA_D64 : "l"(desc_a), "l"(desc_b));
#else
  __trap();
#endif
}
#define VDSR_WGMMA_RS128(TYPE)                                                                                 \
  "wgmma.mma_async.sync.aligned.m64n128k16.f32." TYPE "." TYPE " "                                            \
  "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, "  \
  "%23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, "    \
  "%44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, "       \
  "{%64, %65, %66, %67}, %68, 1, 1, 1, 0;\n"

// D (64 x 128, fp32) += A (this warp's 16 rows, registers: the mma.m16n8k16 A layout) * B (16 x 128, K-major by
// descriptor); D as wgmma_m64n128k16_ss.
template <typename T>
__device__ __forceinline__ void wgmma_m64n128k16_rs(float (&d)[64], const uint32_t (&a)[4], uint64_t desc_b);

template <>
__device__ __forceinline__ void wgmma_m64n128k16_rs<__half>(float (&d)[64], const uint32_t (&a)[4], uint64_t desc_b) {
#if VDSR_WGMMA
  asm volatile(VDSR_WGMMA_RS128("f16") : VDSR_WGMMA_D64 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b));
#else
  __trap();
#endif
}

template <>
__device__ __forceinline__ void wgmma_m64n128k16_rs<__nv_bfloat16>(float (&d)[64], const uint32_t (&a)[4],
                                                                   uint64_t desc_b) {
#if VDSR_WGMMA
  asm volatile(VDSR_WGMMA_RS128("bf16") : VDSR_WGMMA_D64 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b));
#else
  __trap();
#endif
}
#undef VDSR_WGMMA_RS128
#undef VDSR_WGMMA_SS128
#undef VDSR_WGMMA_D64

// bar.arrive / bar.sync on named barrier `id` counting `threads` arrivals: one warpgroup signals (arrive: no wait),
// the other waits (sync) -- a producer/consumer handshake between warpgroups (CUTLASS's NamedBarrier).
__device__ __forceinline__ void named_barrier_arrive(int id, int threads) {
  asm volatile("bar.arrive %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}

}  // namespace vdsr
