// CPU implementation of fastgpt::bias_dropout_add (see dropout_add.h for the
// math): the same semantics, the same fp32 math and the same Philox stream as
// the CUDA kernels (philox.h), so a seed gives the same mask on both devices.
//
// Parallel over groups of 8 elements (one Philox call each). The dbias
// reduction is deterministic whatever the thread count: rows are cut into
// fixed chunks of kRowsPerChunk, each chunk sums its rows in order into its
// own fp32 partial row, and the partials are added in chunk order.
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <type_traits>
#include <vector>

#include "dropout_add.h"
#include "philox.h"

namespace {

constexpr int64_t kGrainGroups = 4096;
constexpr int64_t kRowsPerChunk = 32;

template <typename T> inline float to_f(T v) { return static_cast<float>(v); }
template <typename T> inline T from_f(float v) { return static_cast<T>(v); }  // round to nearest even

inline float load_bias(const void* b, int dt, int64_t c) {
  if (dt == FASTGPT_F32) return static_cast<const float*>(b)[c];
  if (dt == FASTGPT_F16) return static_cast<float>(static_cast<const c10::Half*>(b)[c]);
  return static_cast<float>(static_cast<const c10::BFloat16*>(b)[c]);
}

template <typename F>
bool with_type(int dt, F&& f) {
  switch (dt) {
    case FASTGPT_F32: f(static_cast<float*>(nullptr)); return true;
    case FASTGPT_F16: f(static_cast<c10::Half*>(nullptr)); return true;
    case FASTGPT_BF16: f(static_cast<c10::BFloat16*>(nullptr)); return true;
    default: return false;
  }
}

// The keep bits of group g (all ones when threshold == 0: no RNG work).
inline uint32_t group_bits(int64_t g, const fastgpt_dropout_t& d) {
  if (d.threshold == 0) return 0xFFu;
  return fastgpt::dropout_keep_bits(static_cast<uint64_t>(g), d.seed, d.offset, d.threshold);
}

template <typename XT, typename RT>
void fwd(const XT* x, const void* bias, int bias_dt, const RT* res, RT* out, int64_t numel, int64_t N,
         const fastgpt_dropout_t& d) {
  const int64_t groups = (numel + 7) / 8;
  const bool drop = d.threshold != 0;
  at::parallel_for(0, groups, kGrainGroups, [&](int64_t g0, int64_t g1) {
    for (int64_t g = g0; g < g1; ++g) {
      const int64_t i0 = g * 8;
      const int n = static_cast<int>(std::min<int64_t>(8, numel - i0));
      const uint32_t bits = group_bits(g, d);
      int64_t c = bias != nullptr ? i0 % N : 0;
      for (int k = 0; k < n; ++k) {
        float u = to_f(x[i0 + k]);
        if (bias != nullptr) {
          u += load_bias(bias, bias_dt, c);
          c = (c + 1 == N) ? 0 : c + 1;
        }
        if (drop) u *= ((bits >> k) & 1u) ? d.scale : 0.0f;
        out[i0 + k] = from_f<RT>(to_f(res[i0 + k]) + u);
      }
    }
  });
}

template <typename GT, typename DT>
void bwd(const GT* grad, DT* dx, float* dbias_acc, int64_t M, int64_t N, const fastgpt_dropout_t& d) {
  const int64_t numel = M * N;
  const bool drop = d.threshold != 0;
  if (dbias_acc == nullptr) {
    const int64_t groups = (numel + 7) / 8;
    at::parallel_for(0, groups, kGrainGroups, [&](int64_t g0, int64_t g1) {
      for (int64_t g = g0; g < g1; ++g) {
        const int64_t i0 = g * 8;
        const int n = static_cast<int>(std::min<int64_t>(8, numel - i0));
        const uint32_t bits = group_bits(g, d);
        for (int k = 0; k < n; ++k) {
          float v = to_f(grad[i0 + k]);
          if (drop) v *= ((bits >> k) & 1u) ? d.scale : 0.0f;
          dx[i0 + k] = from_f<DT>(v);
        }
      }
    });
    return;
  }
  const int64_t chunks = (M + kRowsPerChunk - 1) / kRowsPerChunk;
  std::vector<float> part(static_cast<size_t>(std::max<int64_t>(chunks, 1) * N), 0.0f);
  at::parallel_for(0, chunks, 1, [&](int64_t k0, int64_t k1) {
    for (int64_t ch = k0; ch < k1; ++ch) {
      float* acc = part.data() + ch * N;
      const int64_t r1 = std::min(M, (ch + 1) * kRowsPerChunk);
      for (int64_t r = ch * kRowsPerChunk; r < r1; ++r) {
        int64_t g = -1;
        uint32_t bits = 0xFFu;
        for (int64_t c = 0; c < N; ++c) {
          const int64_t i = r * N + c;
          float v = to_f(grad[i]);
          if (drop) {
            if ((i >> 3) != g) {
              g = i >> 3;
              bits = group_bits(g, d);
            }
            v *= ((bits >> (i & 7)) & 1u) ? d.scale : 0.0f;
          }
          dx[i] = from_f<DT>(v);
          acc[c] += v;
        }
      }
    }
  });
  for (int64_t c = 0; c < N; ++c) dbias_acc[c] = 0.0f;
  for (int64_t ch = 0; ch < chunks; ++ch)
    for (int64_t c = 0; c < N; ++c) dbias_acc[c] += part[ch * N + c];
}

}  // namespace

namespace {

void fwd_cpu(const void* x, int x_dtype, const void* bias, int bias_dtype, const void* residual, int res_dtype,
             void* out, int64_t numel, int64_t N, fastgpt_dropout_t d) {
  if (numel == 0) return;
  with_type(x_dtype, [&](auto* xt) {
    using XT = std::remove_pointer_t<decltype(xt)>;
    with_type(res_dtype, [&](auto* rt) {
      using RT = std::remove_pointer_t<decltype(rt)>;
      fwd<XT, RT>(static_cast<const XT*>(x), bias, bias_dtype, static_cast<const RT*>(residual),
                  static_cast<RT*>(out), numel, N, d);
    });
  });
}

void bwd_cpu(const void* grad, int grad_dtype, void* dx, int dx_dtype, void* dbias, int dbias_dtype, int64_t M,
             int64_t N, fastgpt_dropout_t d) {
  std::vector<float> acc(dbias != nullptr ? static_cast<size_t>(N) : 0, 0.0f);
  if (M * N > 0) {
    with_type(grad_dtype, [&](auto* gt) {
      using GT = std::remove_pointer_t<decltype(gt)>;
      with_type(dx_dtype, [&](auto* dt) {
        using DT = std::remove_pointer_t<decltype(dt)>;
        bwd<GT, DT>(static_cast<const GT*>(grad), static_cast<DT*>(dx), dbias != nullptr ? acc.data() : nullptr,
                    M, N, d);
      });
    });
  }
  if (dbias == nullptr) return;
  with_type(dbias_dtype, [&](auto* bt) {
    using BT = std::remove_pointer_t<decltype(bt)>;
    BT* out = static_cast<BT*>(dbias);
    for (int64_t c = 0; c < N; ++c) out[c] = from_f<BT>(acc[static_cast<size_t>(c)]);
  });
}

}  // namespace

// C linkage: no exception leaves these (at::parallel_for rethrows a worker's,
// std::vector may throw bad_alloc); a failure is returned as 1.
extern "C" int fastgpt_bda_fwd_cpu(const void* x, int x_dtype, const void* bias, int bias_dtype,
                                   const void* residual, int res_dtype, void* out,
                                   int64_t numel, int64_t N, fastgpt_dropout_t d) {
  try {
    fwd_cpu(x, x_dtype, bias, bias_dtype, residual, res_dtype, out, numel, N, d);
    return 0;
  } catch (...) {
    return 1;
  }
}

extern "C" int fastgpt_bda_bwd_cpu(const void* grad, int grad_dtype, void* dx, int dx_dtype,
                                   void* dbias, int dbias_dtype, int64_t M, int64_t N, fastgpt_dropout_t d) {
  try {
    bwd_cpu(grad, grad_dtype, dx, dx_dtype, dbias, dbias_dtype, M, N, d);
    return 0;
  } catch (...) {
    return 1;
  }
}
