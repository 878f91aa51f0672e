// Counter-based Philox4x32-10 and the dropout-mask rule shared by the CPU and
// CUDA implementations of fastgpt::bias_dropout_add (and mirrored in pure
// PyTorch by fastgpt.reference.dropout_keep_mask). Header-only, no torch and
// no curand includes, usable from host C++ and from CUDA device code.
//
// Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3",
// SC'11): a 128-bit counter (c0, c1, c2, c3) and a 64-bit key (k0, k1) give
// four uniform 32-bit words; ten rounds, the key bumped by the Weyl constants
// between rounds. It is the generator of Random123, curand and triton.language.
//
// The mask rule (the same on every device, so CPU and CUDA agree bit for bit):
//   seed   = int64 s, offset = int64 o (both reinterpreted as uint64)
//   key    = (lo32(s), hi32(s))
//   element i of the flattened (row-major) tensor belongs to group g = i / 8;
//   counter = (lo32(g), hi32(g), lo32(o), hi32(o)); Philox gives words w0..w3;
//   element i reads the 16-bit half (i % 2) of word (i % 8) / 2
//   (half 0 = low 16 bits) as u in [0, 65536);
//   kept  <=>  u >= threshold,  threshold = min(floor(p * 65536 + 0.5), 65536).
// So p is quantised to 1/65536 (flash-attention uses 8 bits); one Philox call
// serves 8 elements, which keeps the RNG under the memory time on an H100.
#pragma once

#include <stdint.h>

#if defined(__CUDACC__)
#define FASTGPT_HD __host__ __device__ __forceinline__
#else
#define FASTGPT_HD inline
#endif

namespace fastgpt {

struct Philox4 {
  uint32_t w[4];
};

FASTGPT_HD uint32_t philox_mulhilo(uint32_t a, uint32_t b, uint32_t* hi) {
#if defined(__CUDA_ARCH__)
  *hi = __umulhi(a, b);
  return a * b;
#else
  const uint64_t p = static_cast<uint64_t>(a) * static_cast<uint64_t>(b);
  *hi = static_cast<uint32_t>(p >> 32);
  return static_cast<uint32_t>(p);
#endif
}

// Philox4x32 with 10 rounds.
FASTGPT_HD Philox4 philox4x32_10(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3,
                                 uint32_t k0, uint32_t k1) {
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
  for (int r = 0; r < 10; ++r) {
    uint32_t hi0, hi1;
    const uint32_t lo0 = philox_mulhilo(0xD2511F53u, c0, &hi0);
    const uint32_t lo1 = philox_mulhilo(0xCD9E8D57u, c2, &hi1);
    const uint32_t n0 = hi1 ^ c1 ^ k0;
    const uint32_t n2 = hi0 ^ c3 ^ k1;
    c0 = n0;
    c1 = lo1;
    c2 = n2;
    c3 = lo0;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  Philox4 out;
  out.w[0] = c0;
  out.w[1] = c1;
  out.w[2] = c2;
  out.w[3] = c3;
  return out;
}

// The four words of group g (8 elements) for this seed and offset.
FASTGPT_HD Philox4 dropout_group_bits(uint64_t group, uint64_t seed, uint64_t offset) {
  return philox4x32_10(static_cast<uint32_t>(group), static_cast<uint32_t>(group >> 32),
                       static_cast<uint32_t>(offset), static_cast<uint32_t>(offset >> 32),
                       static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
}

// The 16-bit uniform of element j (0..7) of a group.
FASTGPT_HD uint32_t dropout_u16(const Philox4& r, int j) {
  return (r.w[j >> 1] >> ((j & 1) * 16)) & 0xFFFFu;
}

// 8 keep bits of a group, bit j set <=> element j is kept.
FASTGPT_HD uint32_t dropout_keep_bits(uint64_t group, uint64_t seed, uint64_t offset, uint32_t threshold) {
  const Philox4 r = dropout_group_bits(group, seed, offset);
  uint32_t bits = 0;
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
  for (int j = 0; j < 8; ++j) bits |= (dropout_u16(r, j) >= threshold ? 1u : 0u) << j;
  return bits;
}

}  // namespace fastgpt
