// Plain C interface between the torch binding (binding.cpp) and the kernels:
// the CUDA launchers in dropout_add_cuda.cu (compiled by nvcc with no torch
// headers) and the CPU implementation in dropout_add_cpu.cpp.
//
// fastgpt::bias_dropout_add, for x, residual of numel elements (rows of N):
//   forward   out[i] = residual[i] + keep(i) * scale * (x[i] + bias[i % N])
//   backward  dx[i]  = keep(i) * scale * grad[i]            (x's dtype)
//             dbias  = sum over rows of keep * scale * grad  (fp32, then bias's dtype)
// with keep(i) from philox.h (threshold 0: keep everything, no RNG work) and
// scale = 1 / (1 - p). All math in fp32; every pointer is contiguous, and the
// CUDA ones 16-byte aligned (the binding guarantees both).
#pragma once

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

// dtype codes
enum { FASTGPT_F32 = 0, FASTGPT_F16 = 1, FASTGPT_BF16 = 2 };

// Where the (seed, offset) pair lives: a device pointer to two int64 (read by
// the kernel, so CUDA-graph replays draw fresh masks) or, when seed_ptr is
// NULL, the values themselves.
typedef struct {
  const int64_t* seed_ptr;
  uint64_t seed;
  uint64_t offset;
  uint32_t threshold;  // 0 = keep all (p = 0): no Philox work at all
  float scale;         // 1 / (1 - p)
} fastgpt_dropout_t;

// ---- CUDA (dropout_add_cuda.cu); return a cudaError_t (0 = success) ----
int fastgpt_bda_fwd_cuda(const void* x, int x_dtype, const void* bias, int bias_dtype,
                         const void* residual, int res_dtype, void* out,
                         int64_t numel, int64_t N, fastgpt_dropout_t d, void* stream);
// The backward's dbias workspace, in 4-byte words: rows * N fp32 partial column
// sums and one ticket counter per 256-column tile; *rows gets the row count.
int64_t fastgpt_bda_dbias_workspace_cuda(int64_t M, int64_t N, int64_t* rows);
// One kernel launch (and, with dbias, a memset of the tickets). dbias may be
// NULL (no bias gradient); then workspace is unused.
int fastgpt_bda_bwd_cuda(const void* grad, int grad_dtype, void* dx, int dx_dtype,
                         void* dbias, int dbias_dtype, float* workspace, int64_t workspace_rows,
                         int64_t M, int64_t N, fastgpt_dropout_t d, void* stream);
const char* fastgpt_cuda_error_string(int err);

// ---- CPU (dropout_add_cpu.cpp); return 0 on success, 1 on failure (no exception leaves them) ----
int fastgpt_bda_fwd_cpu(const void* x, int x_dtype, const void* bias, int bias_dtype,
                        const void* residual, int res_dtype, void* out,
                        int64_t numel, int64_t N, fastgpt_dropout_t d);
int fastgpt_bda_bwd_cpu(const void* grad, int grad_dtype, void* dx, int dx_dtype,
                        void* dbias, int dbias_dtype, int64_t M, int64_t N, fastgpt_dropout_t d);

#ifdef __cplusplus
}
#endif
