// A matmul whose every output row is computed by the same arithmetic however
// many rows the call has (Backend::matmul_forward_rowwise).
//
// OpenBLAS picks its kernels and blocking by the matrix shape, so a row of
// sgemm's result changes in the last bits with the number of rows beside it
// (measured: row 0 of an M=16 product differs from the same row alone). A
// server that batches requests then gives a request different logits, and in
// the end different tokens, depending on who else is running. Here each
// output element is one dot product, accumulated in vector lanes over k in a
// fixed order, reduced across lanes in a fixed order, and finished with the
// leftover k in order: the same for a row alone and a row among 300.
//
// Register tile: kMr input rows x kNr weight rows, so each loaded vector
// feeds several multiply-adds; 256-bit vectors and a 2 x 8 tile keep the 16
// accumulators and the loads in registers (measured on AVX-512: 2x the
// throughput of 512-bit vectors in a 4 x 4 tile for 32 rows, 1.8x for one).
// Tiles at the edges use smaller tiles of the same code, which do the same
// arithmetic per element. Threads split the weight rows, so no element is
// shared.
//
// With AVX-512 (float): the same 8-lane arithmetic, two accumulators to a
// 512-bit register. A register holds the 8 lanes of (row m, weight o) in its
// lower half and those of (row m, weight o + 4) in its upper half; the input
// row's 8 values are repeated in both halves, so one 512-bit fused
// multiply-add does the work of two 256-bit ones with the same products and
// sums in the same order. Each output element is bit for bit the 256-bit kernel's
// (matmul_forward_rowwise_portable; tested), and a 4 x 8 tile keeps 16 such
// registers (32 dot products) of accumulators. Fewer than 4 rows left (a
// lone decode row) take the 256-bit tiles: the same bits, and one row is
// bound by reading the weights. Measured with bench/rowwise_bench
// (gpt2-124m's shapes, 32 to 256 rows, 2 threads, AVX-512 AMD EPYC):
// 1.9-2.4x the 256-bit kernel's GFLOP/s and 1.1-2.0x OpenBLAS sgemm's.
#include <algorithm>
#include <cstring>
#include <type_traits>

#if defined(__FMA__)
#include <immintrin.h>
#if defined(__AVX512F__)
#define BOREALIS_ROWWISE_AVX512 1
#endif
#endif

#include "kernels/cpu/ops.h"
#include "kernels/cpu/vec_math.h"

namespace borealis::cpu {

namespace {

template <typename T>
struct Vec;
template <>
struct Vec<float> {
  typedef float type __attribute__((vector_size(32)));
};
template <>
struct Vec<double> {
  typedef double type __attribute__((vector_size(32)));
};

template <typename T>
using V = typename Vec<T>::type;
template <typename T>
constexpr int kLanes = static_cast<int>(sizeof(V<T>) / sizeof(T));

template <typename T>
inline V<T> load(const T* p) {
  V<T> v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

// The lanes summed as a fixed pairwise tree.
template <typename T>
inline T reduce(V<T> v) {
  T lane[kLanes<T>];
  std::memcpy(lane, &v, sizeof v);
  for (int width = kLanes<T> / 2; width > 0; width /= 2) {
    for (int i = 0; i < width; ++i) lane[i] += lane[i + width];
  }
  return lane[0];
}

// acc + a * b: one fused multiply-add (a single rounding) per lane where
// the target has FMA, in every kernel alike. (The file is compiled with
// -ffp-contract=off, so the compiler never fuses some of them on its own.)
template <typename T>
inline V<T> multiply_add(V<T> acc, V<T> a, V<T> b) {
#if defined(__FMA__)
  if constexpr (std::is_same_v<T, float>) return _mm256_fmadd_ps(a, b, acc);
#endif
  return acc + a * b;
}

constexpr int kMr = 2;
constexpr int kNr = 8;
constexpr int kRowChunk = 32;  // input rows kept hot in cache while the weights stream by

// out[m][o] (for m < MR, o < NR) of rows inp[m], weight rows w[o].
template <typename T, int MR, int NR>
void tile(T* out, int ldo, const T* inp, const T* w, const T* bias, int C, bool accumulate) {
  V<T> acc[MR][NR];
  for (int m = 0; m < MR; ++m) {
    for (int o = 0; o < NR; ++o) acc[m][o] = V<T>{};
  }
  const int vec_end = C - C % kLanes<T>;
  for (int k = 0; k < vec_end; k += kLanes<T>) {
    V<T> wv[NR];
    for (int o = 0; o < NR; ++o) wv[o] = load(w + static_cast<std::size_t>(o) * C + k);
    for (int m = 0; m < MR; ++m) {
      const V<T> a = load(inp + static_cast<std::size_t>(m) * C + k);
      for (int o = 0; o < NR; ++o) acc[m][o] = multiply_add<T>(acc[m][o], a, wv[o]);
    }
  }
  for (int m = 0; m < MR; ++m) {
    const T* a = inp + static_cast<std::size_t>(m) * C;
    for (int o = 0; o < NR; ++o) {
      const T* wr = w + static_cast<std::size_t>(o) * C;
      T dot = reduce<T>(acc[m][o]);
      for (int k = vec_end; k < C; ++k) dot += a[k] * wr[k];
      T& dst = out[static_cast<std::size_t>(m) * ldo + o];
      T base = accumulate ? dst : T(0);
      if (bias != nullptr) base += bias[o];
      dst = base + dot;
    }
  }
}

template <typename T, int NR>
void rows_tile(T* out, int ldo, const T* inp, const T* w, const T* bias, int rows, int C,
               bool accumulate) {
  int m = 0;
  for (; m + kMr <= rows; m += kMr) {
    tile<T, kMr, NR>(out + static_cast<std::size_t>(m) * ldo, ldo,
                     inp + static_cast<std::size_t>(m) * C, w, bias, C, accumulate);
  }
  for (; m < rows; ++m) {
    tile<T, 1, NR>(out + static_cast<std::size_t>(m) * ldo, ldo,
                   inp + static_cast<std::size_t>(m) * C, w, bias, C, accumulate);
  }
}

#ifdef BOREALIS_ROWWISE_AVX512
constexpr int kPairMr = 4;
constexpr int kPairNr = 8;
static_assert(kPairNr == kNr);

typedef float Pair __attribute__((vector_size(64)));  // two 8-lane float vectors

// tile<float, MR, NR> with two 8-lane accumulators per 512-bit register.
template <int MR, int NR>
void pair_tile(float* out, int ldo, const float* inp, const float* w, const float* bias, int C,
               bool accumulate) {
  constexpr int P = NR / 2;  // register p: weights p (lower half) and p + P (upper)
  Pair acc[MR][P];
  for (int m = 0; m < MR; ++m) {
    for (int p = 0; p < P; ++p) acc[m][p] = Pair{};
  }
  const int vec_end = C - C % kLanes<float>;
  for (int k = 0; k < vec_end; k += kLanes<float>) {
    Pair wv[P];
    for (int p = 0; p < P; ++p) {
      const V<float> lo = load<float>(w + static_cast<std::size_t>(p) * C + k);
      const V<float> hi = load<float>(w + static_cast<std::size_t>(p + P) * C + k);
      wv[p] = __builtin_shufflevector(lo, hi, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    }
    for (int m = 0; m < MR; ++m) {
      const V<float> row = load<float>(inp + static_cast<std::size_t>(m) * C + k);
      const Pair a =
          __builtin_shufflevector(row, row, 0, 1, 2, 3, 4, 5, 6, 7, 0, 1, 2, 3, 4, 5, 6, 7);
      for (int p = 0; p < P; ++p) acc[m][p] = _mm512_fmadd_ps(a, wv[p], acc[m][p]);
    }
  }
  for (int m = 0; m < MR; ++m) {
    const float* a = inp + static_cast<std::size_t>(m) * C;
    for (int o = 0; o < NR; ++o) {
      const float* wr = w + static_cast<std::size_t>(o) * C;
      const Pair both = acc[m][o % P];
      const V<float> half = o < P
                                ? __builtin_shufflevector(both, both, 0, 1, 2, 3, 4, 5, 6, 7)
                                : __builtin_shufflevector(both, both, 8, 9, 10, 11, 12, 13, 14, 15);
      float dot = reduce<float>(half);
      for (int k = vec_end; k < C; ++k) dot += a[k] * wr[k];
      float& dst = out[static_cast<std::size_t>(m) * ldo + o];
      float base = accumulate ? dst : 0.0f;
      if (bias != nullptr) base += bias[o];
      dst = base + dot;
    }
  }
}

void pair_rows_tile(float* out, int ldo, const float* inp, const float* w, const float* bias,
                    int rows, int C, bool accumulate) {
  int m = 0;
  for (; m + kPairMr <= rows; m += kPairMr) {
    pair_tile<kPairMr, kPairNr>(out + static_cast<std::size_t>(m) * ldo, ldo,
                                inp + static_cast<std::size_t>(m) * C, w, bias, C, accumulate);
  }
  // The last rows (a decode step alone: its only row) by the 256-bit tiles,
  // which give the same bits and need no shuffles: one row is bound by
  // reading the weights, not by arithmetic.
  if (m < rows) {
    rows_tile<float, kPairNr>(out + static_cast<std::size_t>(m) * ldo, ldo,
                              inp + static_cast<std::size_t>(m) * C, w, bias, rows - m, C,
                              accumulate);
  }
}
#endif

// kNr weight rows for every row of the chunk: with kWide the 512-bit form
// where there is one (float with AVX-512), else the 256-bit tiles.
template <typename T, bool kWide>
void full_block(T* out, int ldo, const T* inp, const T* w, const T* bias, int rows, int C,
                bool accumulate) {
#ifdef BOREALIS_ROWWISE_AVX512
  if constexpr (kWide && std::is_same_v<T, float>) {
    pair_rows_tile(out, ldo, inp, w, bias, rows, C, accumulate);
    return;
  }
#endif
  rows_tile<T, kNr>(out, ldo, inp, w, bias, rows, C, accumulate);
}

template <typename T, bool kWide>
void rowwise(T* out, const T* inp, const T* w, const T* bias, int N, int C, int OC,
             bool accumulate) {
  const int col_blocks = (OC + kNr - 1) / kNr;
  for (int r0 = 0; r0 < N; r0 += kRowChunk) {
    const int rows = std::min(kRowChunk, N - r0);
    T* o0 = out + static_cast<std::size_t>(r0) * OC;
    const T* i0 = inp + static_cast<std::size_t>(r0) * C;
#pragma omp parallel for schedule(static) if (worth_threads(std::int64_t{rows} * OC * C / 64))
    for (int cb = 0; cb < col_blocks; ++cb) {
      const int c0 = cb * kNr;
      const T* wb = w + static_cast<std::size_t>(c0) * C;
      const T* bb = bias == nullptr ? nullptr : bias + c0;
      if (c0 + kNr <= OC) {
        full_block<T, kWide>(o0 + c0, OC, i0, wb, bb, rows, C, accumulate);
      } else {
        for (int c = c0; c < OC; ++c) {
          rows_tile<T, 1>(o0 + c, OC, i0, w + static_cast<std::size_t>(c) * C,
                          bias == nullptr ? nullptr : bias + c, rows, C, accumulate);
        }
      }
    }
  }
}

}  // namespace

template <typename T>
void matmul_forward_rowwise(T* out, const T* inp, const T* w, const T* bias, int N, int C, int OC,
                            bool accumulate) {
  rowwise<T, true>(out, inp, w, bias, N, C, OC, accumulate);
}

template <typename T>
void matmul_forward_rowwise_portable(T* out, const T* inp, const T* w, const T* bias, int N, int C,
                                     int OC, bool accumulate) {
  rowwise<T, false>(out, inp, w, bias, N, C, OC, accumulate);
}

template void matmul_forward_rowwise<float>(float*, const float*, const float*, const float*, int,
                                            int, int, bool);
template void matmul_forward_rowwise<double>(double*, const double*, const double*, const double*,
                                             int, int, int, bool);
template void matmul_forward_rowwise_portable<float>(float*, const float*, const float*,
                                                     const float*, int, int, int, bool);

}  // namespace borealis::cpu
