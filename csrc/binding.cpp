// The thin torch binding of the extension fastgpt._C: the operator schemas,
// input validation, allocation, and the CPU / CUDA dispatch onto the plain C
// launchers of dropout_add.h. fake and autograd registrations are Python's
// (fastgpt/extension.py). Only light torch headers (no torch/extension.h, no
// pybind11) to keep the build short: the Python module is an empty shell whose
// import runs the registrations below.
//
//   fastgpt::bias_dropout_add(Tensor x, Tensor? bias, Tensor residual, float p, Tensor? seed) -> Tensor
//       out = residual + dropout(x + bias, p), out in residual's dtype
//   fastgpt::bias_dropout_add_bwd(Tensor grad, Tensor? seed, float p, ScalarType dx_dtype,
//                                 ScalarType? dbias_dtype) -> (Tensor dx, Tensor dbias)
//       dx = keep * grad / (1 - p) in dx_dtype; dbias = its fp32 column sum in dbias_dtype
//       (shape (0,) when dbias_dtype is None). The residual's gradient is grad itself.
// seed: int64 (2,) = (Philox key, counter offset), on the CPU or on x's device;
// required when p > 0, ignored when p == 0. A seed on the device is read by
// the kernel (CUDA-graph safe); a CPU seed is read here.
#include <Python.h>

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <tuple>
#include <vector>

#ifdef FASTGPT_WITH_CUDA
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

#include "dropout_add.h"
#include "philox.h"

namespace {

constexpr const char* kOp = "bias_dropout_add";

// A number in an error message, formatted by snprintf: no message here passes a number to c10::str's
// ostream. On the GPU machine's image (torch 2.11.0+cu130, nvcc 13.0, g++ 13.3) the module built
// there lists no libstdc++ among its NEEDED libraries, and every check whose message held an int64 or a
// double died in SIGSEGV instead of raising, while the string-only ones raised (benchmarks/ext_diag.sh
// case G, p = 1.5; test_op_level_errors_are_clear at the seed-shape check; 2026-11-29). Use as Num(v).s
// inside the check: the temporary outlives the message. (Only int64_t and double: an int or size_t
// argument is ambiguous, a compile error.)
struct Num {
  char s[32];
  explicit Num(double v) { std::snprintf(s, sizeof s, "%g", v); }
  explicit Num(int64_t v) { std::snprintf(s, sizeof s, "%lld", static_cast<long long>(v)); }
};

int dtype_code(at::ScalarType t, const char* name) {
  switch (t) {
    case at::kFloat: return FASTGPT_F32;
    case at::kHalf: return FASTGPT_F16;
    case at::kBFloat16: return FASTGPT_BF16;
    default:
      TORCH_CHECK_TYPE(false, kOp, ": ", name, " has dtype ", c10::toString(t), "; supported: float16, bfloat16, float32");
  }
  return -1;
}

// The quantised drop threshold of philox.h (mirrored by fastgpt.reference).
uint32_t drop_threshold(double p) {
  if (p <= 0.0) return 0;
  const double t = std::floor(p * 65536.0 + 0.5);
  return static_cast<uint32_t>(std::min(65536.0, std::max(1.0, t)));
}

// Validates p and the seed from metadata only (dtype, dim, numel, device: no
// data access, no CUDA call), before anything else happens in an op; the error
// messages are built from plain integers. Returns the drop threshold.
uint32_t check_dropout(double p, const c10::optional<at::Tensor>& seed, const at::Device& dev) {
  TORCH_CHECK_VALUE(p >= 0.0 && p < 1.0, kOp, ": dropout_p must be a number in [0, 1), got ", Num(p).s);
  // fastgpt.reference.MAX_DROPOUT_P: the drop rate moves in steps of 1/65536; above this the kept
  // fraction (at most 50/65536) would be off by more than 1 %
  TORCH_CHECK_VALUE(p <= 1.0 - 50.0 / 65536.0, kOp, ": dropout_p ", Num(p).s,
                    " is above 0.999237: the extension's mask moves in steps of 1/65536, which this close to 1 would "
                    "keep the wrong fraction");
  const uint32_t threshold = drop_threshold(p);
  if (threshold == 0) return 0;  // p == 0: the seed is ignored
  TORCH_CHECK_VALUE(seed.has_value() && seed->defined(), kOp,
                    ": dropout_p > 0 needs a seed tensor (int64, shape (2,))");
  const at::Tensor& s = *seed;
  TORCH_CHECK_TYPE(s.scalar_type() == at::kLong, kOp, ": seed must be int64, got ", c10::toString(s.scalar_type()));
  const int64_t sdim = s.dim(), snumel = s.numel();
  TORCH_CHECK_VALUE(sdim == 1 && snumel == 2, kOp, ": seed must have shape (2,) = (seed, offset), got ", Num(sdim).s,
                    " dims and ", Num(snumel).s, " elements");
  if (!s.device().is_cpu()) {
    TORCH_CHECK_VALUE(s.device() == dev, kOp, ": seed is on ", s.device().str(), " but x is on ", dev.str());
    TORCH_CHECK_VALUE(s.is_contiguous(), kOp, ": a device seed must be contiguous");
  }
  return threshold;
}

// The launch parameters; call only after check_dropout (and every other check)
// passed. A CPU seed is read here; a device seed's pointer goes to the kernel.
fastgpt_dropout_t dropout_params(double p, uint32_t threshold, const c10::optional<at::Tensor>& seed) {
  fastgpt_dropout_t d{nullptr, 0, 0, 0, 1.0f};
  if (threshold == 0) return d;
  d.threshold = threshold;
  d.scale = static_cast<float>(1.0 / (1.0 - p));
  const at::Tensor& s = *seed;
  if (s.device().is_cpu()) {
    const at::Tensor c = s.contiguous();
    const int64_t* v = c.const_data_ptr<int64_t>();
    d.seed = static_cast<uint64_t>(v[0]);
    d.offset = static_cast<uint64_t>(v[1]);
  } else {
    d.seed_ptr = s.const_data_ptr<int64_t>();
  }
  return d;
}

void check_inputs(const at::Tensor& x, const c10::optional<at::Tensor>& bias, const at::Tensor& residual) {
  dtype_code(x.scalar_type(), "x");
  dtype_code(residual.scalar_type(), "residual");
  TORCH_CHECK_VALUE(x.dim() >= 1, kOp, ": x must have at least one dim");
  TORCH_CHECK_VALUE(x.sizes().equals(residual.sizes()), kOp, ": x and residual shapes differ (",
                    Num(x.dim()).s, " dims, ", Num(x.numel()).s, " elements vs ", Num(residual.dim()).s, " dims, ",
                    Num(residual.numel()).s, " elements)");
  TORCH_CHECK_VALUE(residual.device() == x.device(), kOp, ": tensors on different devices (x on ",
                    x.device().str(), ", residual on ", residual.device().str(), ")");
  if (bias.has_value() && bias->defined()) {
    dtype_code(bias->scalar_type(), "bias");
    TORCH_CHECK_VALUE(bias->dim() == 1 && bias->size(0) == x.size(-1), kOp, ": bias must have shape (",
                      Num(x.size(-1)).s, ",), got ", Num(bias->dim()).s, " dims and ", Num(bias->numel()).s,
                      " elements");
    TORCH_CHECK_VALUE(bias->device() == x.device(), kOp, ": tensors on different devices (x on ",
                      x.device().str(), ", bias on ", bias->device().str(), ")");
  }
}

// Contiguous, and (for the CUDA vector loads) 16-byte aligned: a view that
// starts mid-vector is copied.
at::Tensor prepared(const at::Tensor& t) {
  at::Tensor c = t.contiguous();
  if (c.is_cuda() && reinterpret_cast<uintptr_t>(c.data_ptr()) % 16 != 0) c = c.clone();
  return c;
}

at::Tensor fwd_impl(const at::Tensor& x_, const c10::optional<at::Tensor>& bias_, const at::Tensor& res_,
                    double p, const c10::optional<at::Tensor>& seed) {
  // every check first: nothing below throws on bad input, no data is read before
  const uint32_t threshold = check_dropout(p, seed, x_.device());
  check_inputs(x_, bias_, res_);
  const fastgpt_dropout_t d = dropout_params(p, threshold, seed);
  const at::Tensor x = prepared(x_);
  const at::Tensor res = prepared(res_);
  at::Tensor bias;
  if (bias_.has_value() && bias_->defined()) bias = prepared(*bias_);
  at::Tensor out = at::empty(x.sizes(), res.options().memory_format(at::MemoryFormat::Contiguous));
  const int64_t N = x.size(-1);
  const void* bptr = bias.defined() ? bias.data_ptr() : nullptr;
  const int bdt = bias.defined() ? dtype_code(bias.scalar_type(), "bias") : FASTGPT_F32;
  const int xdt = dtype_code(x.scalar_type(), "x");
  const int rdt = dtype_code(res.scalar_type(), "residual");
  if (x.is_cuda()) {
#ifdef FASTGPT_WITH_CUDA
    const c10::cuda::CUDAGuard guard(x.device());
    const int err = fastgpt_bda_fwd_cuda(x.data_ptr(), xdt, bptr, bdt, res.data_ptr(), rdt, out.data_ptr(), x.numel(),
                                         N, d, c10::cuda::getCurrentCUDAStream(x.get_device()).stream());
    TORCH_CHECK(err == 0, kOp, ": CUDA launch failed: ", fastgpt_cuda_error_string(err));
#else
    TORCH_CHECK(false, kOp, ": fastgpt._C was built without CUDA");
#endif
  } else {
    const int err = fastgpt_bda_fwd_cpu(x.data_ptr(), xdt, bptr, bdt, res.data_ptr(), rdt, out.data_ptr(),
                                        x.numel(), N, d);
    TORCH_CHECK(err == 0, kOp, ": the CPU kernel failed");
  }
  return out;
}

std::tuple<at::Tensor, at::Tensor> bwd_impl(const at::Tensor& grad_, const c10::optional<at::Tensor>& seed, double p,
                                            at::ScalarType dx_dtype, c10::optional<at::ScalarType> dbias_dtype) {
  const uint32_t threshold = check_dropout(p, seed, grad_.device());
  dtype_code(grad_.scalar_type(), "grad");
  const int dxdt = dtype_code(dx_dtype, "dx");
  if (dbias_dtype.has_value()) dtype_code(*dbias_dtype, "dbias");
  TORCH_CHECK_VALUE(grad_.dim() >= 1, kOp, "_bwd: grad must have at least one dim");
  const fastgpt_dropout_t d = dropout_params(p, threshold, seed);
  const at::Tensor grad = prepared(grad_);
  const int64_t N = grad.size(-1);
  const int64_t M = N > 0 ? grad.numel() / N : 0;
  at::Tensor dx = at::empty(grad.sizes(), grad.options().dtype(dx_dtype).memory_format(at::MemoryFormat::Contiguous));
  at::Tensor dbias;
  int dbdt = FASTGPT_F32;
  if (dbias_dtype.has_value()) {
    dbdt = dtype_code(*dbias_dtype, "dbias");
    dbias = at::empty({N}, grad.options().dtype(*dbias_dtype));
  } else {
    dbias = at::empty({0}, grad.options().dtype(dx_dtype));
  }
  void* dbptr = dbias_dtype.has_value() ? dbias.data_ptr() : nullptr;
  const int gdt = dtype_code(grad.scalar_type(), "grad");
  if (grad.is_cuda()) {
#ifdef FASTGPT_WITH_CUDA
    const c10::cuda::CUDAGuard guard(grad.device());
    at::Tensor ws;
    int64_t rows = 0;
    if (dbptr != nullptr && M > 0) {
      ws = at::empty({fastgpt_bda_dbias_workspace_cuda(M, N, &rows)}, grad.options().dtype(at::kFloat));
    }
    const int err = fastgpt_bda_bwd_cuda(grad.data_ptr(), gdt, dx.data_ptr(), dxdt, dbptr, dbdt,
                                         ws.defined() ? ws.data_ptr<float>() : nullptr, rows, M, N, d,
                                         c10::cuda::getCurrentCUDAStream(grad.get_device()).stream());
    TORCH_CHECK(err == 0, kOp, "_bwd: CUDA launch failed: ", fastgpt_cuda_error_string(err));
#else
    TORCH_CHECK(false, kOp, ": fastgpt._C was built without CUDA");
#endif
  } else {
    const int err = fastgpt_bda_bwd_cpu(grad.data_ptr(), gdt, dx.data_ptr(), dxdt, dbptr, dbdt, M, N, d);
    TORCH_CHECK(err == 0, kOp, "_bwd: the CPU kernel failed");
  }
  return {dx, dbias};
}

bool cuda_compiled() {
#ifdef FASTGPT_WITH_CUDA
  return true;
#else
  return false;
#endif
}

// The Philox block of philox.h, exposed so tests can check it against known
// answers and against the pure-PyTorch mirror in fastgpt.reference.
std::vector<int64_t> philox(int64_t c0, int64_t c1, int64_t c2, int64_t c3, int64_t k0, int64_t k1) {
  const fastgpt::Philox4 r = fastgpt::philox4x32_10(
      static_cast<uint32_t>(c0), static_cast<uint32_t>(c1), static_cast<uint32_t>(c2), static_cast<uint32_t>(c3),
      static_cast<uint32_t>(k0), static_cast<uint32_t>(k1));
  return {r.w[0], r.w[1], r.w[2], r.w[3]};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(fastgpt, m) {
  m.set_python_module("fastgpt.extension");
  m.def("bias_dropout_add(Tensor x, Tensor? bias, Tensor residual, float p, Tensor? seed) -> Tensor");
  m.def("bias_dropout_add_bwd(Tensor grad, Tensor? seed, float p, ScalarType dx_dtype, ScalarType? dbias_dtype)"
        " -> (Tensor, Tensor)");
  // introspection for fastgpt.extension and the tests (no tensors: catch-all kernels)
  m.def("_ext_cuda_compiled() -> bool", &cuda_compiled);
  m.def("_ext_philox4x32_10(int c0, int c1, int c2, int c3, int k0, int k1) -> int[]", &philox);
}

TORCH_LIBRARY_IMPL(fastgpt, CPU, m) {
  m.impl("bias_dropout_add", &fwd_impl);
  m.impl("bias_dropout_add_bwd", &bwd_impl);
}

#ifdef FASTGPT_WITH_CUDA
TORCH_LIBRARY_IMPL(fastgpt, CUDA, m) {
  m.impl("bias_dropout_add", &fwd_impl);
  m.impl("bias_dropout_add_bwd", &bwd_impl);
}
#endif

// An importable, empty Python module: importing it loads the library above.
#define FASTGPT_CONCAT2(a, b) a##b
#define FASTGPT_CONCAT(a, b) FASTGPT_CONCAT2(a, b)
#define FASTGPT_STR2(a) #a
#define FASTGPT_STR(a) FASTGPT_STR2(a)
extern "C" PyMODINIT_FUNC FASTGPT_CONCAT(PyInit_, TORCH_EXTENSION_NAME)(void) {
  static struct PyModuleDef def = {PyModuleDef_HEAD_INIT, FASTGPT_STR(TORCH_EXTENSION_NAME),
                                   "fastgpt C++/CUDA extension: torch.ops.fastgpt.bias_dropout_add(_bwd)", -1,
                                   nullptr, nullptr, nullptr, nullptr, nullptr};
  return PyModule_Create(&def);
}
