// CUDA kernels of fastgpt::bias_dropout_add (see dropout_add.h for the math).
//
// No torch headers on purpose (DESIGN.md): this file must compile with a bare
// nvcc (`nvcc -c -arch=sm_90 dropout_add_cuda.cu`), and it brings its own
// Philox (philox.h) instead of curand. The torch side lives in binding.cpp.
//
// Layout of the work: every thread owns one group of 8 consecutive elements of
// the flattened tensor, which is exactly one Philox4x32-10 call (8 x 16-bit
// uniforms) and one 16-byte load/store per 16-bit array (two for fp32).
//   forward            one launch, flat grid over groups
//   backward, no dbias one launch, flat grid over groups
//   backward + dbias   one launch over a (column tile, row group) grid that
//                      writes dx and fp32 per-row-group column partials; the
//                      last block of each column tile to finish (a ticket
//                      counter per tile) sums that tile's partials in a fixed
//                      order and writes dbias in its dtype. The sum's order does
//                      not depend on which block is last: deterministic. The
//                      launcher zeroes the tickets with cudaMemsetAsync first,
//                      as PyTorch's own multi-block reductions do.
// The mask is regenerated in the backward from (seed, offset): no mask is
// stored, and the Philox work (~12 integer ops per element) hides under the
// memory time of these bandwidth-bound kernels.
// Limits: any numel (a partial last group is handled element by element); the
// vector paths need 16-byte aligned pointers (the binding copies otherwise);
// the dbias kernel's main loop uses 16-byte loads when N % 8 == 0 and a scalar
// path when not; its tile sum reads the fp32 partials 16 bytes at a time when N % 4 == 0.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <type_traits>

#include "dropout_add.h"
#include "philox.h"

namespace {

constexpr int kThreads = 256;
constexpr int kVec = 8;  // elements per thread = one Philox call

// ---------------------------------------------------------------- loads/stores

__device__ __forceinline__ float to_f(float v) { return v; }
__device__ __forceinline__ float to_f(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_f(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T> __device__ __forceinline__ T from_f(float v);
template <> __device__ __forceinline__ float from_f<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_f<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

__device__ __forceinline__ void load8(const float* p, float (&v)[8]) {
  const float4 a = reinterpret_cast<const float4*>(p)[0];
  const float4 b = reinterpret_cast<const float4*>(p)[1];
  v[0] = a.x; v[1] = a.y; v[2] = a.z; v[3] = a.w;
  v[4] = b.x; v[5] = b.y; v[6] = b.z; v[7] = b.w;
}
__device__ __forceinline__ void load8(const __half* p, float (&v)[8]) {
  const uint4 raw = *reinterpret_cast<const uint4*>(p);
  const __half2* h = reinterpret_cast<const __half2*>(&raw);
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    const float2 f = __half22float2(h[k]);
    v[2 * k] = f.x;
    v[2 * k + 1] = f.y;
  }
}
__device__ __forceinline__ void load8(const __nv_bfloat16* p, float (&v)[8]) {
  const uint4 raw = *reinterpret_cast<const uint4*>(p);
  const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&raw);
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    const float2 f = __bfloat1622float2(h[k]);
    v[2 * k] = f.x;
    v[2 * k + 1] = f.y;
  }
}

__device__ __forceinline__ void store8(float* p, const float (&v)[8]) {
  reinterpret_cast<float4*>(p)[0] = make_float4(v[0], v[1], v[2], v[3]);
  reinterpret_cast<float4*>(p)[1] = make_float4(v[4], v[5], v[6], v[7]);
}
__device__ __forceinline__ void store8(__half* p, const float (&v)[8]) {
  uint4 raw;
  __half2* h = reinterpret_cast<__half2*>(&raw);
#pragma unroll
  for (int k = 0; k < 4; ++k) h[k] = __floats2half2_rn(v[2 * k], v[2 * k + 1]);
  *reinterpret_cast<uint4*>(p) = raw;
}
__device__ __forceinline__ void store8(__nv_bfloat16* p, const float (&v)[8]) {
  uint4 raw;
  __nv_bfloat162* h = reinterpret_cast<__nv_bfloat162*>(&raw);
#pragma unroll
  for (int k = 0; k < 4; ++k) h[k] = __floats2bfloat162_rn(v[2 * k], v[2 * k + 1]);
  *reinterpret_cast<uint4*>(p) = raw;
}

// The bias is tiny and cached: its dtype is a (warp-uniform) runtime switch
// rather than one more template dimension.
__device__ __forceinline__ float load_bias1(const void* b, int dt, int64_t c) {
  if (dt == FASTGPT_F32) return static_cast<const float*>(b)[c];
  if (dt == FASTGPT_F16) return __half2float(static_cast<const __half*>(b)[c]);
  return __bfloat162float(static_cast<const __nv_bfloat16*>(b)[c]);
}
__device__ __forceinline__ void load_bias8(const void* b, int dt, int64_t c, float (&v)[8]) {
  if (dt == FASTGPT_F32) load8(static_cast<const float*>(b) + c, v);
  else if (dt == FASTGPT_F16) load8(static_cast<const __half*>(b) + c, v);
  else load8(static_cast<const __nv_bfloat16*>(b) + c, v);
}

__device__ __forceinline__ int64_t mod_n(int64_t i, int64_t N) {
  if ((i | N) < 0x100000000LL) return static_cast<int64_t>(static_cast<uint32_t>(i) % static_cast<uint32_t>(N));
  return i % N;
}

__device__ __forceinline__ void seed_offset(const fastgpt_dropout_t& d, uint64_t* s, uint64_t* o) {
  if (d.seed_ptr != nullptr) {
    *s = static_cast<uint64_t>(d.seed_ptr[0]);
    *o = static_cast<uint64_t>(d.seed_ptr[1]);
  } else {
    *s = d.seed;
    *o = d.offset;
  }
}

// Apply the mask of group g to v (in place): v *= keep ? scale : 0 (a multiply,
// as torch's dropout does, so a NaN or inf in a dropped element still shows).
// __fmul_rn keeps nvcc from contracting it with the residual add into an FMA:
// the product is rounded once, as in the reference (and the CPU build).
__device__ __forceinline__ void apply_mask(float (&v)[8], uint64_t g, const fastgpt_dropout_t& d) {
  uint64_t s, o;
  seed_offset(d, &s, &o);
  const uint32_t bits = fastgpt::dropout_keep_bits(g, s, o, d.threshold);
#pragma unroll
  for (int k = 0; k < kVec; ++k) v[k] = __fmul_rn(v[k], ((bits >> k) & 1u) ? d.scale : 0.0f);
}

// ---------------------------------------------------------------- kernels

template <typename XT, typename RT>
__global__ void __launch_bounds__(kThreads)
bda_fwd_kernel(const XT* __restrict__ x,        // (numel,) input
               const void* __restrict__ bias,   // (N,) bias in bias_dt, or nullptr
               int bias_dt,
               const RT* __restrict__ res,      // (numel,) residual
               RT* __restrict__ out,            // (numel,) output, residual's dtype
               int64_t numel, int64_t N, fastgpt_dropout_t d) {
  const int64_t g = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  const int64_t i0 = g * kVec;
  if (i0 >= numel) return;
  const bool full = i0 + kVec <= numel;
  float u[kVec], r[kVec];
  if (full) {
    load8(x + i0, u);
    load8(res + i0, r);
  } else {
#pragma unroll
    for (int k = 0; k < kVec; ++k) {
      const bool in = i0 + k < numel;
      u[k] = in ? to_f(x[i0 + k]) : 0.0f;
      r[k] = in ? to_f(res[i0 + k]) : 0.0f;
    }
  }
  if (bias != nullptr) {
    float b[kVec];
    int64_t c = mod_n(i0, N);
    if ((N & 7) == 0) {  // the group lies in one row, 16-byte aligned
      load_bias8(bias, bias_dt, c, b);
    } else {
#pragma unroll
      for (int k = 0; k < kVec; ++k) {
        b[k] = load_bias1(bias, bias_dt, c);
        c = (c + 1 == N) ? 0 : c + 1;
      }
    }
#pragma unroll
    for (int k = 0; k < kVec; ++k) u[k] += b[k];
  }
  if (d.threshold != 0) apply_mask(u, static_cast<uint64_t>(g), d);
#pragma unroll
  for (int k = 0; k < kVec; ++k) r[k] += u[k];
  if (full) {
    store8(out + i0, r);
  } else {
#pragma unroll
    for (int k = 0; k < kVec; ++k)
      if (i0 + k < numel) out[i0 + k] = from_f<RT>(r[k]);
  }
}

template <typename GT, typename DT>
__global__ void __launch_bounds__(kThreads)
bda_bwd_kernel(const GT* __restrict__ grad,  // (numel,) upstream gradient
               DT* __restrict__ dx,          // (numel,) gradient of x, x's dtype
               int64_t numel, fastgpt_dropout_t d) {
  const int64_t g = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  const int64_t i0 = g * kVec;
  if (i0 >= numel) return;
  const bool full = i0 + kVec <= numel;
  float v[kVec];
  if (full) {
    load8(grad + i0, v);
  } else {
#pragma unroll
    for (int k = 0; k < kVec; ++k) v[k] = i0 + k < numel ? to_f(grad[i0 + k]) : 0.0f;
  }
  if (d.threshold != 0) apply_mask(v, static_cast<uint64_t>(g), d);
  if (full) {
    store8(dx + i0, v);
  } else {
#pragma unroll
    for (int k = 0; k < kVec; ++k)
      if (i0 + k < numel) dx[i0 + k] = from_f<DT>(v[k]);
  }
}

// Block (32, 8): threadIdx.x owns 8 columns, threadIdx.y a row lane; the grid
// is (column tiles of 256, row groups). Row group y covers rows
// y*8 + ty, y*8 + ty + rows*8, ... ; its column sums land in part[y, :].
constexpr int kTx = 32;
constexpr int kTy = 8;
constexpr int kTile = kTx * kVec;  // columns per column tile

// The last block of a column tile: dbias[tile] = sum over r of part[r, tile],
// by 4 row lanes (lane l sums rows l, l + 4, ... in order, 4 columns per
// thread, L2 loads: the partials were written by other SMs), then the lanes in
// order 0..3. Both orders are fixed, so the result is bitwise reproducible.
__device__ __forceinline__ void dbias_tile_sum(const float* __restrict__ part, int64_t rows, int64_t N,
                                               int64_t tile0, void* __restrict__ dbias, int dt) {
  constexpr int kLanes = kTx * kTy / (kTile / 4);  // 4
  __shared__ float lane_sum[kLanes][kTile];
  const int tid = threadIdx.y * kTx + threadIdx.x;
  const int q = tid % (kTile / 4), lane = tid / (kTile / 4);
  const int64_t c = tile0 + 4 * q;
  float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
  if ((N & 3) == 0 && c < N) {  // rows of part are 16-byte aligned: float4 loads, 8 in flight
#pragma unroll 8
    for (int64_t r = lane; r < rows; r += kLanes) {
      const float4 v = __ldcg(reinterpret_cast<const float4*>(part + r * N + c));
      acc[0] += v.x; acc[1] += v.y; acc[2] += v.z; acc[3] += v.w;
    }
  } else if (c < N) {
#pragma unroll 2
    for (int64_t r = lane; r < rows; r += kLanes) {
#pragma unroll
      for (int k = 0; k < 4; ++k)
        if (c + k < N) acc[k] += __ldcg(part + r * N + c + k);
    }
  }
#pragma unroll
  for (int k = 0; k < 4; ++k) lane_sum[lane][4 * q + k] = acc[k];
  __syncthreads();
  const int64_t col = tile0 + tid;
  if (col < N) {
    float t = 0.0f;
#pragma unroll
    for (int l = 0; l < kLanes; ++l) t += lane_sum[l][tid];
    if (dt == FASTGPT_F32) static_cast<float*>(dbias)[col] = t;
    else if (dt == FASTGPT_F16) static_cast<__half*>(dbias)[col] = __float2half_rn(t);
    else static_cast<__nv_bfloat16*>(dbias)[col] = __float2bfloat16_rn(t);
  }
}

// At most 64 registers (4 resident blocks per SM), as before the in-kernel dbias sum.
template <typename GT, typename DT>
__global__ void __launch_bounds__(kTx * kTy, 4)
bda_bwd_dbias_kernel(const GT* __restrict__ grad,  // (M, N) upstream gradient
                     DT* __restrict__ dx,          // (M, N) gradient of x
                     float* __restrict__ part,     // (gridDim.y, N) fp32 column partials
                     unsigned* __restrict__ tickets,  // (gridDim.x,) zeroed by the launcher
                     void* __restrict__ dbias,     // (N,) in dbias_dt
                     int dbias_dt, int64_t M, int64_t N, fastgpt_dropout_t d) {
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int64_t c0 = (static_cast<int64_t>(blockIdx.x) * kTx + tx) * kVec;
  const int64_t step = static_cast<int64_t>(gridDim.y) * kTy;
  float acc[kVec];
#pragma unroll
  for (int k = 0; k < kVec; ++k) acc[k] = 0.0f;
  if (c0 < N) {
    if ((N & 7) == 0) {
      int64_t row = static_cast<int64_t>(blockIdx.y) * kTy + ty;
      // two rows per iteration: both loads in flight before either is used
      for (; row + step < M; row += 2 * step) {
        const int64_t ia = row * N + c0, ib = (row + step) * N + c0;
        float va[kVec], vb[kVec];
        load8(grad + ia, va);
        load8(grad + ib, vb);
        if (d.threshold != 0) {
          apply_mask(va, static_cast<uint64_t>(ia >> 3), d);
          apply_mask(vb, static_cast<uint64_t>(ib >> 3), d);
        }
        store8(dx + ia, va);
        store8(dx + ib, vb);
#pragma unroll
        for (int k = 0; k < kVec; ++k) acc[k] += va[k] + vb[k];
      }
      if (row < M) {
        const int64_t i0 = row * N + c0;
        float v[kVec];
        load8(grad + i0, v);
        if (d.threshold != 0) apply_mask(v, static_cast<uint64_t>(i0 >> 3), d);
        store8(dx + i0, v);
#pragma unroll
        for (int k = 0; k < kVec; ++k) acc[k] += v[k];
      }
    } else {  // rows are not 8-aligned: element by element, one Philox call each
      uint64_t s = 0, o = 0;
      if (d.threshold != 0) seed_offset(d, &s, &o);
      for (int64_t row = static_cast<int64_t>(blockIdx.y) * kTy + ty; row < M; row += step) {
#pragma unroll
        for (int k = 0; k < kVec; ++k) {
          if (c0 + k >= N) break;
          const int64_t i = row * N + c0 + k;
          float v = to_f(grad[i]);
          if (d.threshold != 0) {
            const fastgpt::Philox4 r = fastgpt::dropout_group_bits(static_cast<uint64_t>(i >> 3), s, o);
            v *= fastgpt::dropout_u16(r, static_cast<int>(i & 7)) >= d.threshold ? d.scale : 0.0f;
          }
          dx[i] = from_f<DT>(v);
          acc[k] += v;
        }
      }
    }
  }
  __shared__ float sm[kTy][kVec][kTx + 1];
#pragma unroll
  for (int k = 0; k < kVec; ++k) sm[ty][k][tx] = acc[k];
  __syncthreads();
  // thread (tx, ty) finishes column c0(tx) + ty: a fixed-order sum over the row lanes
  float t = 0.0f;
#pragma unroll
  for (int y = 0; y < kTy; ++y) t += sm[y][ty][tx];
  const int64_t c = c0 + ty;
  if (c < N) part[static_cast<int64_t>(blockIdx.y) * N + c] = t;

  // Take a ticket once this block's partials are visible device-wide; the
  // block that draws the last one sums the tile. The barrier orders every
  // thread's partial before thread 0's fences (release before the ticket,
  // acquire after the last one), as cooperative groups' grid sync does.
  __shared__ bool last;
  __syncthreads();
  if (tx == 0 && ty == 0) {
    __threadfence();
    last = atomicAdd(&tickets[blockIdx.x], 1u) == gridDim.y - 1;
    if (last) __threadfence();
  }
  __syncthreads();
  if (!last) return;
  dbias_tile_sum(part, gridDim.y, N, static_cast<int64_t>(blockIdx.x) * kTile, dbias, dbias_dt);
}

// ---------------------------------------------------------------- dispatch

int sm_count() {
  static int cache[64] = {0};
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess || dev < 0) return 132;
  if (dev < 64 && cache[dev] > 0) return cache[dev];
  int n = 0;
  if (cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess || n <= 0) n = 132;
  if (dev < 64) cache[dev] = n;
  return n;
}

template <typename F>
bool with_type(int dt, F&& f) {
  switch (dt) {
    case FASTGPT_F32: f(static_cast<float*>(nullptr)); return true;
    case FASTGPT_F16: f(static_cast<__half*>(nullptr)); return true;
    case FASTGPT_BF16: f(static_cast<__nv_bfloat16*>(nullptr)); return true;
    default: return false;
  }
}

int64_t groups_of(int64_t numel) { return (numel + kVec - 1) / kVec; }

extern "C" int fastgpt_bda_fwd_cuda(const void* x, int x_dtype, const void* bias, int bias_dtype,
                                    const void* residual, int res_dtype, void* out,
                                    int64_t numel, int64_t N, fastgpt_dropout_t d, void* stream) {
  if (numel == 0) return 0;
  const unsigned blocks = static_cast<unsigned>((groups_of(numel) + kThreads - 1) / kThreads);
  cudaStream_t st = static_cast<cudaStream_t>(stream);
  bool inner = true;
  const bool outer = with_type(x_dtype, [&](auto* xt) {
    using XT = std::remove_pointer_t<decltype(xt)>;
    inner = with_type(res_dtype, [&](auto* rt) {
      using RT = std::remove_pointer_t<decltype(rt)>;
      bda_fwd_kernel<XT, RT><<<blocks, kThreads, 0, st>>>(
          static_cast<const XT*>(x), bias, bias_dtype, static_cast<const RT*>(residual),
          static_cast<RT*>(out), numel, N, d);
    });
  });
  if (!outer || !inner) return static_cast<int>(cudaErrorInvalidValue);
  return static_cast<int>(cudaGetLastError());
}

int64_t tiles_of(int64_t N) { return (N + kTile - 1) / kTile; }

// Row groups of the dbias kernel: one full wave, the resident blocks per SM (by
// the bf16 instantiation's registers) on every SM, spread over the column tiles.
int64_t dbias_rows(int64_t M, int64_t N) {
  static int per_sm = 0;
  if (per_sm <= 0) {
    int n = 0;
    if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(
            &n, bda_bwd_dbias_kernel<__nv_bfloat16, __nv_bfloat16>, kTx * kTy, 0) != cudaSuccess || n <= 0) {
      (void)cudaGetLastError();
      n = 3;
    }
    per_sm = n;
  }
  const int64_t tiles = tiles_of(N);
  const int64_t target = static_cast<int64_t>(sm_count()) * per_sm;
  int64_t rows = (target + tiles - 1) / tiles;
  const int64_t max_rows = (M + kTy - 1) / kTy;
  if (rows > max_rows) rows = max_rows;
  if (rows > 65535) rows = 65535;
  return rows < 1 ? 1 : rows;
}

}  // namespace

extern "C" int64_t fastgpt_bda_dbias_workspace_cuda(int64_t M, int64_t N, int64_t* rows) {
  *rows = dbias_rows(M, N);
  return *rows * N + tiles_of(N);
}

extern "C" int fastgpt_bda_bwd_cuda(const void* grad, int grad_dtype, void* dx, int dx_dtype,
                                    void* dbias, int dbias_dtype, float* workspace, int64_t workspace_rows,
                                    int64_t M, int64_t N, fastgpt_dropout_t d, void* stream) {
  const int64_t numel = M * N;
  cudaStream_t st = static_cast<cudaStream_t>(stream);
  if (numel == 0) {
    if (dbias != nullptr && N > 0) {
      const size_t esz = dbias_dtype == FASTGPT_F32 ? 4 : 2;
      return static_cast<int>(cudaMemsetAsync(dbias, 0, static_cast<size_t>(N) * esz, st));
    }
    return 0;
  }
  unsigned* tickets = nullptr;
  if (dbias != nullptr) {
    tickets = reinterpret_cast<unsigned*>(workspace + workspace_rows * N);
    const cudaError_t err = cudaMemsetAsync(tickets, 0, static_cast<size_t>(tiles_of(N)) * sizeof(unsigned), st);
    if (err != cudaSuccess) return static_cast<int>(err);
  }
  bool inner = true;
  const bool outer = with_type(grad_dtype, [&](auto* gt) {
    using GT = std::remove_pointer_t<decltype(gt)>;
    inner = with_type(dx_dtype, [&](auto* dt) {
      using DT = std::remove_pointer_t<decltype(dt)>;
      if (dbias == nullptr) {
        const unsigned blocks = static_cast<unsigned>((groups_of(numel) + kThreads - 1) / kThreads);
        bda_bwd_kernel<GT, DT><<<blocks, kThreads, 0, st>>>(static_cast<const GT*>(grad), static_cast<DT*>(dx),
                                                            numel, d);
      } else {
        const dim3 grid(static_cast<unsigned>(tiles_of(N)), static_cast<unsigned>(workspace_rows));
        bda_bwd_dbias_kernel<GT, DT><<<grid, dim3(kTx, kTy), 0, st>>>(
            static_cast<const GT*>(grad), static_cast<DT*>(dx), workspace, tickets, dbias, dbias_dtype, M, N, d);
      }
    });
  });
  if (!outer || !inner) return static_cast<int>(cudaErrorInvalidValue);
  return static_cast<int>(cudaGetLastError());
}

extern "C" const char* fastgpt_cuda_error_string(int err) {
  return cudaGetErrorString(static_cast<cudaError_t>(err));
}
