// The vector operations of the channel-vector kernel for the ISA this translation unit is built
// for: AVX-512 (16 lanes), AVX2 + FMA (8 lanes) or portable GCC vector extensions (8 lanes,
// any target, ARM included). The weight layout is the same for all three (16 output channels per
// row vector); an ISA with L lanes covers a row vector in 16 / L "halves". `pick` is the N:M
// select: every lane takes the input its index names from a group of m <= L consecutive inputs
// (vpermps on AVX-512 and AVX2, __builtin_shuffle on the portable path).
#pragma once

#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__))
#include <immintrin.h>
#endif

#include <cstdint>
#include <cstring>

namespace crisp_cpu {
namespace {

#if defined(__AVX512F__)
#define CRISP_ISA_NAME "avx512"
struct Isa {
  static constexpr int L = 16;  // lanes
  static constexpr int P = 8;   // output positions per register tile
  static constexpr int GP = 12;  // dense 1x1 GEMM: positions per tile (x 2 vectors: 24 accumulators of 32 registers)
  static constexpr int HS = 1;  // 16-lane halves per tile (one: L = 16)
  static constexpr int RV = 2;  // row vectors per tile when a block-row has an even number of them
  using V = __m512;
  using I = __m512i;
  using G = __mmask16;  // which lanes of a group load are live
  static inline V zero() { return _mm512_setzero_ps(); }
  static inline V load(const float* p) { return _mm512_loadu_ps(p); }
  static inline V set1(float f) { return _mm512_set1_ps(f); }
  static inline V fma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
  static inline V add(V a, V b) { return _mm512_add_ps(a, b); }
  // max/min with the NaN in the second operand propagate NaN like torch.clamp
  static inline V clamp(V y, V lo, V hi) { return _mm512_min_ps(hi, _mm512_max_ps(lo, y)); }
  static inline I load_idx(const uint8_t* p) {
    return _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  }
  static inline G group_mask(int64_t m) { return m >= 16 ? G(0xFFFF) : G((1u << m) - 1); }
  template <bool WIDE>
  static inline V load_group(const float* p, G live) {
    if constexpr (WIDE) return _mm512_maskz_loadu_ps(live, p);  // never reads past the group's m channels
    return _mm512_castps128_ps512(_mm_loadu_ps(p));              // m = 4: upper lanes undefined, never picked
  }
  static inline V pick(V x, I i) { return _mm512_permutexvar_ps(i, x); }
  template <bool WIDE>
  static inline V pick_group(V x, I i) { return pick(x, i); }
  static inline V load_lanes(const float* p, int64_t lanes) { return _mm512_maskz_loadu_ps(lane_mask(lanes), p); }
  static inline void store_lanes(float* p, V y, int64_t lanes) { _mm512_mask_storeu_ps(p, lane_mask(lanes), y); }
  static inline __mmask16 lane_mask(int64_t lanes) { return lanes >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << lanes) - 1); }
};
#elif defined(__AVX2__) && defined(__FMA__)
#define CRISP_ISA_NAME "avx2"
struct Isa {
  static constexpr int L = 8;
  static constexpr int P = 8;   // one 8-lane half per tile: 8 accumulators + 2n weights/indices fit 16 registers
  static constexpr int GP = 6;  // dense 1x1 GEMM: 6 positions x 2 vectors = 12 accumulators, 2 weights, 1 broadcast
  static constexpr int HS = 1;
  static constexpr int RV = 1;
  using V = __m256;
  using I = __m256i;
  using G = __m256i;
  static inline V zero() { return _mm256_setzero_ps(); }
  static inline V load(const float* p) { return _mm256_loadu_ps(p); }
  static inline V set1(float f) { return _mm256_set1_ps(f); }
  static inline V fma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
  static inline V add(V a, V b) { return _mm256_add_ps(a, b); }
  static inline V clamp(V y, V lo, V hi) { return _mm256_min_ps(hi, _mm256_max_ps(lo, y)); }
  static inline I load_idx(const uint8_t* p) {
    return _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
  }
  static inline G lane_mask(int64_t lanes) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(lanes)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  }
  static inline G group_mask(int64_t m) { return lane_mask(m); }
  // m = 4: the group in both 128-bit lanes (a load, no shuffle), so that every lane picks its input
  // with the in-lane vpermilps; the cross-lane vpermps runs one per two cycles on Zen 3 and was
  // the kernel's bottleneck (a model of its group loop: 1.3 -> 2.3 kept FMAs per ns)
  template <bool WIDE>
  static inline V load_group(const float* p, G live) {
    if constexpr (WIDE) return _mm256_maskload_ps(p, live);
    return _mm256_broadcast_ps(reinterpret_cast<const __m128*>(p));
  }
  static inline V pick(V x, I i) { return _mm256_permutevar8x32_ps(x, i); }
  template <bool WIDE>
  static inline V pick_group(V x, I i) {
    if constexpr (WIDE) return pick(x, i);
    return _mm256_permutevar_ps(x, i);  // index i < 4 within the lane that holds the group
  }
  // vmaskmovps is slow on AMD (a masked store costs many cycles on Zen 3): plain moves for full vectors
  static inline V load_lanes(const float* p, int64_t lanes) {
    return lanes >= 8 ? _mm256_loadu_ps(p) : _mm256_maskload_ps(p, lane_mask(lanes));
  }
  static inline void store_lanes(float* p, V y, int64_t lanes) {
    if (lanes >= 8) {
      _mm256_storeu_ps(p, y);
    } else {
      _mm256_maskstore_ps(p, lane_mask(lanes), y);
    }
  }
};
#else
#define CRISP_ISA_NAME "default"
struct Isa {
  static constexpr int L = 8;
  static constexpr int P = 4;
  static constexpr int GP = 4;  // dense 1x1 GEMM positions per tile
  static constexpr int HS = 1;
  static constexpr int RV = 1;
  typedef float V __attribute__((vector_size(L * sizeof(float))));
  typedef int32_t I __attribute__((vector_size(L * sizeof(int32_t))));
  using G = int64_t;  // the group's m
  static inline V zero() { return V{}; }
  static inline V load(const float* p) {
    V v;
    std::memcpy(&v, p, sizeof(v));
    return v;
  }
  static inline V set1(float f) { return V{} + f; }
  static inline V fma(V a, V b, V c) { return a * b + c; }
  static inline V add(V a, V b) { return a + b; }
  static inline V clamp(V y, V lo, V hi) {
    y = y < lo ? lo : y;
    return y > hi ? hi : y;
  }
  static inline I load_idx(const uint8_t* p) {
    I i;
    for (int l = 0; l < L; ++l) i[l] = p[l];
    return i;
  }
  static inline G group_mask(int64_t m) { return m; }
  template <bool WIDE>
  static inline V load_group(const float* p, G m) {
    V v{};
    std::memcpy(&v, p, sizeof(float) * (WIDE ? m : 4));
    return v;
  }
  static inline V pick(V x, I i) { return __builtin_shuffle(x, i); }
  template <bool WIDE>
  static inline V pick_group(V x, I i) { return pick(x, i); }
  static inline V load_lanes(const float* p, int64_t lanes) {
    V v{};
    std::memcpy(&v, p, sizeof(float) * (lanes < L ? lanes : L));
    return v;
  }
  static inline void store_lanes(float* p, V y, int64_t lanes) { std::memcpy(p, &y, sizeof(float) * (lanes < L ? lanes : L)); }
};
#endif

constexpr int kHalves = 16 / Isa::L;  // ISA vectors per 16-channel row vector

}  // namespace
}  // namespace crisp_cpu
