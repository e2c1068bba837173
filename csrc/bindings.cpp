// pybind11 module vdsr_fast._C: the CUDA kernels of csrc/*.cu behind a pointer-level interface.
//
// Python passes raw device pointers (tensor.data_ptr()), shapes, a dtype code (0 = float16,
// 1 = bfloat16), the device index and the CUDA stream handle (torch.cuda.current_stream().cuda_stream).
// No libtorch is linked.  Layouts are documented in vdsr_kernels.h; vdsr_fast/kernels/cuda.py packs
// the tensors.  Argument errors raise ValueError, CUDA errors RuntimeError, both naming the call.

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cuda_runtime.h>

#include <cstdint>
#include <cstdio>
#include <type_traits>
#include <string>
#include <vector>

#include "vdsr_kernels.h"

namespace py = pybind11;
using vdsr::DType;

namespace {

// Error messages are built without iostreams: an ostream's number formatting goes through the C++ locale,
// and where the extension is compiled against a newer libstdc++ than the one the Python process loaded
// (seen on the device image: g++ 13 headers, the system's libstdc++ at run time), `os << int` crashed.
struct Hex {
  uint64_t value;
};
inline std::string to_str(const char* s) { return s; }
inline std::string to_str(const std::string& s) { return s; }
inline std::string to_str(Hex h) {
  char buf[24];
  std::snprintf(buf, sizeof buf, "%llx", static_cast<unsigned long long>(h.value));
  return buf;
}
template <typename T, std::enable_if_t<std::is_integral_v<T>, int> = 0>
std::string to_str(T v) {
  return std::to_string(v);
}

template <typename... Args>
std::string cat(const Args&... args) {
  std::string s;
  ((s += to_str(args)), ...);
  return s;
}

// CHECK(cond, message parts...): a readable ValueError naming the function and the failed condition.
#define CHECK(fn, cond, ...)                                                                     \
  do {                                                                                           \
    if (!(cond)) throw std::invalid_argument(cat("vdsr_fast._C.", fn, ": ", __VA_ARGS__,        \
                                                 " (check failed: " #cond ")"));                 \
  } while (0)

#define CHECK_PTR(fn, name, ptr, align)                                                          \
  do {                                                                                           \
    CHECK(fn, (ptr) != 0, name " is a null pointer");                                          \
    CHECK(fn, (ptr) % (align) == 0, name " must be ", (align), "-byte aligned, got address 0x", \
          Hex{(ptr)});                                                                           \
  } while (0)

void check_shape(const char* fn, int64_t n, int64_t h, int64_t w) {
  CHECK(fn, n > 0 && h > 0 && w > 0, "expected a non-empty batch, got N=", n, " H=", h, " W=", w);
  CHECK(fn, n <= INT32_MAX && h <= INT32_MAX && w <= INT32_MAX, "shape too large: N=", n, " H=", h, " W=", w);
  CHECK(fn, h * w <= INT32_MAX, "image too large: H*W=", h * w);
}

// A body variant id (or -1: automatic) that exists; returns the variant table.
const vdsr::BodyVariant* check_variant(const char* fn, int variant) {
  int num_variants = 0;
  const vdsr::BodyVariant* variants = vdsr::body_variants(&num_variants);
  CHECK(fn, variant >= -1 && variant < num_variants, "no body kernel variant ", variant, " (ids 0..",
        num_variants - 1, ", or -1 for automatic)");
  return variants;
}

DType check_dtype(const char* fn, int dtype) {
  CHECK(fn, dtype == vdsr::kFloat16 || dtype == vdsr::kBFloat16,
        "dtype code must be 0 (float16) or 1 (bfloat16), got ", dtype);
  return static_cast<DType>(dtype);
}

// [a, a + na) and [b, b + nb) must not overlap (ping-pong buffers, outputs vs inputs).
void check_disjoint(const char* fn, const char* what, uint64_t a, uint64_t na, uint64_t b, uint64_t nb) {
  CHECK(fn, a + na <= b || b + nb <= a, what, " overlap");
}

// Makes `device` current for the duration of a call and restores the caller's device afterwards.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    CHECK("device", device >= 0, "device index must be >= 0, got ", device);
    VDSR_CUDA_CHECK(cudaGetDevice(&prev_));
    if (prev_ != device) VDSR_CUDA_CHECK(cudaSetDevice(device));
  }
  ~DeviceGuard() {
    int now = -1;
    if (cudaGetDevice(&now) == cudaSuccess && now != prev_) cudaSetDevice(prev_);
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int prev_ = 0;
};

cudaStream_t as_stream(uint64_t s) { return reinterpret_cast<cudaStream_t>(static_cast<uintptr_t>(s)); }
template <typename P>
P as_ptr(uint64_t p) {
  return reinterpret_cast<P>(static_cast<uintptr_t>(p));
}

constexpr uint64_t kC = vdsr::kChannels;
uint64_t act_bytes(int64_t n, int64_t h, int64_t w) { return static_cast<uint64_t>(n * h * w) * kC * 2; }

void head(uint64_t x, uint64_t out, uint64_t w, uint64_t b, int64_t n, int64_t h, int64_t wd, int dtype, int device,
          uint64_t stream, bool mma) {
  const char* fn = "head";
  check_shape(fn, n, h, wd);
  const DType dt = check_dtype(fn, dtype);
  CHECK_PTR(fn, "x", x, 4);
  CHECK_PTR(fn, "out", out, 16);
  CHECK_PTR(fn, "w", w, 4);
  CHECK_PTR(fn, "b", b, 4);
  check_disjoint(fn, "x and out", x, static_cast<uint64_t>(n * h * wd) * 4, out, act_bytes(n, h, wd));
  DeviceGuard guard(device);
  vdsr::launch_head(as_ptr<const float*>(x), as_ptr<void*>(out), as_ptr<const float*>(w), as_ptr<const float*>(b),
                    int(n), int(h), int(wd), dt, mma, as_stream(stream));
}

void body(uint64_t in, uint64_t out, uint64_t w, uint64_t b, int64_t n, int64_t h, int64_t wd, int dtype, int device,
          uint64_t stream, int variant, bool pdl) {
  const char* fn = "body";
  check_shape(fn, n, h, wd);
  const DType dt = check_dtype(fn, dtype);
  CHECK_PTR(fn, "in", in, 16);
  CHECK_PTR(fn, "out", out, 16);
  CHECK_PTR(fn, "w", w, 16);
  CHECK_PTR(fn, "b", b, 4);
  check_disjoint(fn, "in and out", in, act_bytes(n, h, wd), out, act_bytes(n, h, wd));
  check_variant(fn, variant);
  DeviceGuard guard(device);
  vdsr::launch_body(as_ptr<const void*>(in), as_ptr<void*>(out), as_ptr<const void*>(w), as_ptr<const float*>(b),
                    int(n), int(h), int(wd), dt, device, as_stream(stream), variant, pdl);
}

void tail(uint64_t act, uint64_t x, uint64_t y, uint64_t w, uint64_t b, int64_t n, int64_t h, int64_t wd, int dtype,
          int device, uint64_t stream) {
  const char* fn = "tail";
  check_shape(fn, n, h, wd);
  const DType dt = check_dtype(fn, dtype);
  CHECK_PTR(fn, "act", act, 16);
  CHECK_PTR(fn, "x", x, 4);
  CHECK_PTR(fn, "y", y, 4);
  CHECK_PTR(fn, "w", w, 4);
  CHECK_PTR(fn, "b", b, 4);
  check_disjoint(fn, "act and y", act, act_bytes(n, h, wd), y, static_cast<uint64_t>(n * h * wd) * 4);
  DeviceGuard guard(device);
  vdsr::launch_tail(as_ptr<const void*>(act), as_ptr<const float*>(x), as_ptr<float*>(y), as_ptr<const float*>(w),
                    as_ptr<const float*>(b), int(n), int(h), int(wd), dt, as_stream(stream));
}

// The last body layer of a fused tail: z[N,H,W,9] fp32 = the tail conv's per-tap partial sums of the layer's
// output (launch_body_tail_partials); `variant` must be a variant with tail_partials (or -1 where the
// automatic one has them); spread: its spread schedule (a variant with tail_spread).
void body_tail_partials(uint64_t in, uint64_t z, uint64_t w, uint64_t b, uint64_t tail_w, int64_t n, int64_t h,
                        int64_t wd, int dtype, int device, uint64_t stream, int variant, bool pdl, bool spread) {
  const char* fn = "body_tail_partials";
  check_shape(fn, n, h, wd);
  const DType dt = check_dtype(fn, dtype);
  CHECK_PTR(fn, "in", in, 16);
  CHECK_PTR(fn, "z", z, 4);
  CHECK_PTR(fn, "w", w, 16);
  CHECK_PTR(fn, "b", b, 4);
  CHECK_PTR(fn, "tail_w", tail_w, 4);
  check_disjoint(fn, "in and z", in, act_bytes(n, h, wd), z, static_cast<uint64_t>(n * h * wd) * 9 * 4);
  check_variant(fn, variant);
  DeviceGuard guard(device);
  vdsr::launch_body_tail_partials(as_ptr<const void*>(in), as_ptr<float*>(z), as_ptr<const void*>(w),
                                  as_ptr<const float*>(b), as_ptr<const float*>(tail_w), int(n), int(h), int(wd), dt,
                                  device, as_stream(stream), variant, pdl, spread);
}

// The fused head: the first body layer straight from the Y plane x (launch_head_body), out = body(head(x)).
void head_body(uint64_t x, uint64_t out, uint64_t head_w, uint64_t head_b, uint64_t w, uint64_t b, int64_t n, int64_t h,
               int64_t wd, int dtype, int device, uint64_t stream, bool pdl, int schedule) {
  const char* fn = "head_body";
  check_shape(fn, n, h, wd);
  const DType dt = check_dtype(fn, dtype);
  CHECK_PTR(fn, "x", x, 4);
  CHECK_PTR(fn, "out", out, 16);
  CHECK_PTR(fn, "head_w", head_w, 4);
  CHECK_PTR(fn, "head_b", head_b, 4);
  CHECK_PTR(fn, "w", w, 16);
  CHECK_PTR(fn, "b", b, 4);
  check_disjoint(fn, "x and out", x, static_cast<uint64_t>(n * h * wd) * 4, out, act_bytes(n, h, wd));
  DeviceGuard guard(device);
  vdsr::launch_head_body(as_ptr<const float*>(x), as_ptr<void*>(out), as_ptr<const float*>(head_w),
                         as_ptr<const float*>(head_b), as_ptr<const void*>(w), as_ptr<const float*>(b), int(n), int(h),
                         int(wd), dt, device, as_stream(stream), pdl, schedule);
}

// The fused tail's gather: y = x + b + sum of the neighbours' partial sums z (y may alias x, not z).
void tail_gather(uint64_t z, uint64_t x, uint64_t y, uint64_t b, int64_t n, int64_t h, int64_t wd, int device,
                 uint64_t stream) {
  const char* fn = "tail_gather";
  check_shape(fn, n, h, wd);
  CHECK_PTR(fn, "z", z, 4);
  CHECK_PTR(fn, "x", x, 4);
  CHECK_PTR(fn, "y", y, 4);
  CHECK_PTR(fn, "b", b, 4);
  check_disjoint(fn, "z and y", z, static_cast<uint64_t>(n * h * wd) * 9 * 4, y, static_cast<uint64_t>(n * h * wd) * 4);
  check_disjoint(fn, "z and x", z, static_cast<uint64_t>(n * h * wd) * 9 * 4, x, static_cast<uint64_t>(n * h * wd) * 4);
  DeviceGuard guard(device);
  vdsr::launch_tail_gather(as_ptr<const float*>(z), as_ptr<const float*>(x), as_ptr<float*>(y),
                           as_ptr<const float*>(b), int(n), int(h), int(wd), as_stream(stream));
}

// The automatic body variant on `device` (the one a launch with variant -1 runs).
int body_auto_variant(int device) {
  DeviceGuard guard(device);
  return vdsr::body_auto_variant(device);
}

// The whole network: head -> num_body x body (ping-pong between buf0 and buf1) -> tail (+ residual).
// body_w holds num_body packed layers back to back ([L][9][64][64] in the activation dtype, or
// [L][16][64][64] for a Winograd variant), body_b
// [L][64] fp32.  y may alias x.  fuse_tail (needs num_body >= 1): the last body layer writes the tail's partial
// sums into the free buffer (36 of its 128 bytes per pixel) and tail_gather adds them up.  fuse_head (needs a body
// layer that is not the fused tail's): the first body layer computes the head itself (head_body), buf0 unused.
void forward(uint64_t x, uint64_t y, uint64_t buf0, uint64_t buf1, uint64_t head_w, uint64_t head_b, uint64_t body_w,
             uint64_t body_b, int64_t num_body, uint64_t tail_w, uint64_t tail_b, int64_t n, int64_t h, int64_t wd,
             int dtype, int device, uint64_t stream, int variant, bool fuse_tail, bool head_mma, bool pdl,
             bool fuse_head, bool tail_spread, int head_schedule) {
  // Every argument is checked before the first launch: a refusal after the head or a body layer had been queued
  // would leave the buffers half written and work on the stream (a partial capture in a CUDA graph).
  const char* fn = "forward";
  check_shape(fn, n, h, wd);
  check_dtype(fn, dtype);
  CHECK(fn, num_body >= 0, "num_body must be >= 0, got ", num_body);
  CHECK_PTR(fn, "x", x, 4);
  CHECK_PTR(fn, "y", y, 4);
  CHECK_PTR(fn, "buf0", buf0, 16);
  CHECK_PTR(fn, "buf1", buf1, 16);
  CHECK_PTR(fn, "head_w", head_w, 4);
  CHECK_PTR(fn, "head_b", head_b, 4);
  if (num_body > 0) {
    CHECK_PTR(fn, "body_w", body_w, 16);
    CHECK_PTR(fn, "body_b", body_b, 4);
  }
  CHECK_PTR(fn, "tail_w", tail_w, 4);
  CHECK_PTR(fn, "tail_b", tail_b, 4);
  const uint64_t plane = static_cast<uint64_t>(n * h * wd) * 4;
  check_disjoint(fn, "buf0 and buf1", buf0, act_bytes(n, h, wd), buf1, act_bytes(n, h, wd));
  for (const uint64_t buf : {buf0, buf1}) {  // y may alias x, not a buffer
    check_disjoint(fn, "x and a buffer", x, plane, buf, act_bytes(n, h, wd));
    check_disjoint(fn, "y and a buffer", y, plane, buf, act_bytes(n, h, wd));
  }
  const vdsr::BodyVariant* variants = check_variant(fn, variant);
  CHECK(fn, !fuse_head || num_body >= (fuse_tail ? 2 : 1),
        "fuse_head needs a body layer besides the fused tail's, got num_body ", num_body);
  CHECK(fn, !(fuse_head && head_mma), "fuse_head computes the head with fp32 FMAs: not with head_mma");
  CHECK(fn, !fuse_head || variant < 0 || !variants[variant].winograd,
        "fuse_head needs direct-convolution weights, not variant ", variant, "'s Winograd ones");
  CHECK(fn, !fuse_head || (head_schedule >= 0 && head_schedule < vdsr::num_head_schedules()), "no fused-head schedule ",
        head_schedule, " (0..", vdsr::num_head_schedules() - 1, ")");
  CHECK(fn, !fuse_tail || num_body >= 1, "fuse_tail needs at least one body layer");
  CHECK(fn, fuse_tail || !tail_spread, "tail_spread is a schedule of the fused tail: it needs fuse_tail");
  if (fuse_tail) {  // the automatic variant is the device's: resolved here as the launch will
    const int v = variant >= 0 ? variant : body_auto_variant(device);
    CHECK(fn, variants[v].tail_partials, "body kernel variant ", v, " has no tail_partials kernel (fuse_tail)");
    CHECK(fn, !tail_spread || variants[v].tail_spread, "body kernel variant ", v,
          " has no spread tail schedule (tail_spread)");
  }
  if (fuse_head) {
    head_body(x, buf1, head_w, head_b, body_w, body_b, n, h, wd, dtype, device, stream, pdl, head_schedule);
  } else {
    head(x, buf0, head_w, head_b, n, h, wd, dtype, device, stream, head_mma);
  }
  // one packed layer: 9 taps (direct) or 16 transformed positions (Winograd) of [64][64]
  const uint64_t layer_w_bytes = (variant >= 0 && variants[variant].winograd ? 16 : 9) * kC * kC * 2;
  const uint64_t bufs[2] = {buf0, buf1};
  const int64_t unfused = fuse_tail ? num_body - 1 : num_body;
  for (int64_t i = fuse_head ? 1 : 0; i < unfused; ++i) {
    body(bufs[i % 2], bufs[(i + 1) % 2], body_w + i * layer_w_bytes, body_b + i * kC * 4, n, h, wd, dtype, device,
         stream, variant, pdl);
  }
  if (!fuse_tail) {
    tail(bufs[num_body % 2], x, y, tail_w, tail_b, n, h, wd, dtype, device, stream);
    return;
  }
  const int64_t last = num_body - 1;
  body_tail_partials(bufs[last % 2], bufs[num_body % 2], body_w + last * layer_w_bytes, body_b + last * kC * 4, tail_w,
                     n, h, wd, dtype, device, stream, variant, pdl, tail_spread);
  tail_gather(bufs[num_body % 2], x, y, tail_b, n, h, wd, device, stream);
}

py::list body_variants() {
  int count = 0;
  const vdsr::BodyVariant* v = vdsr::body_variants(&count);
  py::list out;
  for (int i = 0; i < count; ++i) {
    py::dict d;
    d["id"] = v[i].id;
    d["tile_h"] = v[i].tile_h;
    d["tile_w"] = v[i].tile_w;
    d["threads"] = v[i].threads;
    d["warp_m"] = v[i].warp_m;
    d["warp_n"] = v[i].warp_n;
    d["stages"] = v[i].stages;
    d["smem_bytes"] = v[i].smem_bytes;
    d["winograd"] = v[i].winograd != 0;
    d["wgmma"] = v[i].wgmma != 0;
    d["tail_partials"] = v[i].tail_partials != 0;
    d["tail_spread"] = v[i].tail_spread != 0;
    out.append(d);
  }
  return out;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "vdsr_fast CUDA kernels (tensor-core conv3x3 body, head, tail with residual); pointer-level API";
  m.attr("CHANNELS") = vdsr::kChannels;
  m.attr("DTYPE_FLOAT16") = static_cast<int>(vdsr::kFloat16);
  m.attr("DTYPE_BFLOAT16") = static_cast<int>(vdsr::kBFloat16);
  m.attr("CUDA_VERSION") = CUDART_VERSION;
#ifdef VDSR_FAST_CUDA_ARCHS
  m.attr("CUDA_ARCHS") = VDSR_FAST_CUDA_ARCHS;
#else
  m.attr("CUDA_ARCHS") = "";
#endif
  using namespace pybind11::literals;
  m.def("head", &head, "x"_a, "out"_a, "w"_a, "b"_a, "n"_a, "h"_a, "w_"_a, "dtype"_a, "device"_a, "stream"_a,
        "mma"_a = false,
        "out[N,H,W,64] = relu(conv3x3(x fp32 [N,H,W], 1->64) + b) (mma: on tensor cores, x and w rounded to dtype)");
  m.def("body", &body, "inp"_a, "out"_a, "w"_a, "b"_a, "n"_a, "h"_a, "w_"_a, "dtype"_a, "device"_a, "stream"_a,
        "variant"_a = -1, "pdl"_a = false,
        "out = relu(conv3x3(inp, 64->64) + b), NHWC, tensor cores; variant -1 = automatic (pdl: programmatic "
        "dependent launch, wgmma strip variants)");
  m.def("tail", &tail, "act"_a, "x"_a, "y"_a, "w"_a, "b"_a, "n"_a, "h"_a, "w_"_a, "dtype"_a, "device"_a, "stream"_a,
        "y = x + conv3x3(act, 64->1) + b (fp32 Y planes)");
  m.def("forward", &forward, "x"_a, "y"_a, "buf0"_a, "buf1"_a, "head_w"_a, "head_b"_a, "body_w"_a, "body_b"_a,
        "num_body"_a, "tail_w"_a, "tail_b"_a, "n"_a, "h"_a, "w_"_a, "dtype"_a, "device"_a, "stream"_a,
        "variant"_a = -1, "fuse_tail"_a = false, "head_mma"_a = false, "pdl"_a = false, "fuse_head"_a = false,
        "tail_spread"_a = false, "head_schedule"_a = 0,
        "the whole VDSR: head, num_body body layers (ping-pong), tail + residual (fuse_tail: the last body layer "
        "writes the tail's partial sums, a gather adds them; variants with tail_partials; head_mma: the head on "
        "tensor cores; pdl: the wgmma strip body layers by programmatic dependent launch; fuse_head: the first "
        "body layer computes the head from x, sm_90a, in head_body's schedule head_schedule; tail_spread: the fused "
        "tail's partial sums in every epilogue part, variants with tail_spread)");
  m.def("head_body", &head_body, "x"_a, "out"_a, "head_w"_a, "head_b"_a, "w"_a, "b"_a, "n"_a, "h"_a, "w_"_a, "dtype"_a,
        "device"_a, "stream"_a, "pdl"_a = false, "schedule"_a = 0,
        "out[N,H,W,64] = relu(conv3x3(relu(conv3x3(x fp32 [N,H,W], 1->64) + head_b), 64->64) + b): the fused head "
        "(the first body layer on the wgmma strip kernel, sm_90a; schedule 0: four wgmma groups per item, 1: one, "
        "2: four, the halo rows between them; 0 .. HEAD_SCHEDULES - 1)");
  m.attr("HEAD_SCHEDULES") = vdsr::num_head_schedules();
  m.def("body_tail_partials", &body_tail_partials, "inp"_a, "z"_a, "w"_a, "b"_a, "tail_w"_a, "n"_a, "h"_a, "w_"_a,
        "dtype"_a, "device"_a, "stream"_a, "variant"_a = -1, "pdl"_a = false, "spread"_a = false,
        "z[N,H,W,9] fp32 = per-tap partial sums of tail_w [9,64] over relu(conv3x3(inp, 64->64) + b) (spread: summed "
        "in every epilogue part, variants with tail_spread)");
  m.def("tail_gather", &tail_gather, "z"_a, "x"_a, "y"_a, "b"_a, "n"_a, "h"_a, "w_"_a, "device"_a, "stream"_a,
        "y = x + b + sum_{ky,kx} z[y+ky-1][x+kx-1][ky*3+kx] (fp32 Y planes)");
  m.def("body_variants", &body_variants, "the body kernel variants (list index = variant id): tiles, warps, stages, smem");
  m.def("body_auto_variant", &body_auto_variant, "device"_a, "the body variant id picked on this device when variant=-1");
  m.def(
      "check_device",
      [](int device) {
        CHECK("check_device", device >= 0, "device index must be >= 0, got ", device);
        vdsr::check_kernel_image(device);
      },
      "device"_a, "raise RuntimeError if this build has no kernel image for the device");
}
