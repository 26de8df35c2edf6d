// Row-wise and elementwise ops: LayerNorm, RMSNorm, GELU, SwiGLU, RoPE.
#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/cpu/ops.h"
#include "kernels/cpu/vec_math.h"

namespace borealis::cpu {

namespace {

// Row blocks for the parameter-gradient reductions of the norms (fixed, so the
// summation order does not depend on the thread count).
constexpr int kNormRows = 32;

// Sums per-block partial gradients p[blocks][C] into out[C] in block order.
template <typename T>
void reduce_blocks(T* out, const std::vector<T>& p, int blocks, int C) {
#pragma omp parallel for schedule(static) if (worth_threads(std::int64_t{blocks} * C * kNormRows))
  for (int c = 0; c < C; ++c) {
    T s = 0;
    for (int b = 0; b < blocks; ++b) s += p[static_cast<std::size_t>(b) * C + c];
    out[c] += s;
  }
}

}  // namespace

template <typename T>
void layernorm_forward(T* out, T* mean, T* rstd, const T* inp, const T* w, const T* b, int N, int C,
                       float eps) {
#pragma omp parallel for schedule(static) if (worth_threads(std::int64_t{N} * C))
  for (int n = 0; n < N; ++n) {
    const T* x = inp + static_cast<std::size_t>(n) * C;
    T* o = out + static_cast<std::size_t>(n) * C;
    T m = 0;
#pragma omp simd reduction(+ : m)
    for (int c = 0; c < C; ++c) m += x[c];
    m /= T(C);
    T v = 0;
#pragma omp simd reduction(+ : v)
    for (int c = 0; c < C; ++c) v += (x[c] - m) * (x[c] - m);
    const T r = T(1) / std::sqrt(v / T(C) + T(eps));
#pragma omp simd
    for (int c = 0; c < C; ++c) o[c] = (x[c] - m) * r * w[c] + b[c];
    mean[n] = m;
    rstd[n] = r;
  }
}

template <typename T>
void layernorm_backward(T* dinp, T* dw, T* db, const T* dout, const T* inp, const T* w,
                        const T* mean, const T* rstd, int N, int C) {
  const int blocks = (N + kNormRows - 1) / kNormRows;
  std::vector<T> pdw(static_cast<std::size_t>(blocks) * C, T(0));
  std::vector<T> pdb(static_cast<std::size_t>(blocks) * C, T(0));
#pragma omp parallel for schedule(static) if (worth_threads(std::int64_t{N} * C))
  for (int blk = 0; blk < blocks; ++blk) {
    T* bw = pdw.data() + static_cast<std::size_t>(blk) * C;
    T* bb = pdb.data() + static_cast<std::size_t>(blk) * C;
    const int end = std::min(N, (blk + 1) * kNormRows);
    for (int n = blk * kNormRows; n < end; ++n) {
      const T* x = inp + static_cast<std::size_t>(n) * C;
      const T* g = dout + static_cast<std::size_t>(n) * C;
      T* dx = dinp + static_cast<std::size_t>(n) * C;
      const T m = mean[n];
      const T r = rstd[n];
      T g_mean = 0;
      T gn_mean = 0;
#pragma omp simd reduction(+ : g_mean, gn_mean)
      for (int c = 0; c < C; ++c) {
        const T dnorm = g[c] * w[c];
        g_mean += dnorm;
        gn_mean += dnorm * (x[c] - m) * r;
      }
      g_mean /= T(C);
      gn_mean /= T(C);
#pragma omp simd
      for (int c = 0; c < C; ++c) {
        const T norm = (x[c] - m) * r;
        bw[c] += g[c] * norm;
        bb[c] += g[c];
        dx[c] += (g[c] * w[c] - g_mean - norm * gn_mean) * r;
      }
    }
  }
  reduce_blocks(dw, pdw, blocks, C);
  reduce_blocks(db, pdb, blocks, C);
}

template <typename T>
void rmsnorm_forward(T* out, T* rstd, const T* inp, const T* w, int N, int C, float eps) {
#pragma omp parallel for schedule(static) if (worth_threads(std::int64_t{N} * C))
  for (int n = 0; n < N; ++n) {
    const T* x = inp + static_cast<std::size_t>(n) * C;
    T* o = out + static_cast<std::size_t>(n) * C;
    T ss = 0;
#pragma omp simd reduction(+ : ss)
    for (int c = 0; c < C; ++c) ss += x[c] * x[c];
    const T r = T(1) / std::sqrt(ss / T(C) + T(eps));
#pragma omp simd
    for (int c = 0; c < C; ++c) o[c] = x[c] * r * w[c];
    rstd[n] = r;
  }
}

template <typename T>
void rmsnorm_backward(T* dinp, T* dw, const T* dout, const T* inp, const T* w, const T* rstd, int N,
                      int C) {
  const int blocks = (N + kNormRows - 1) / kNormRows;
  std::vector<T> pdw(static_cast<std::size_t>(blocks) * C, T(0));
#pragma omp parallel for schedule(static) if (worth_threads(std::int64_t{N} * C))
  for (int blk = 0; blk < blocks; ++blk) {
    T* bw = pdw.data() + static_cast<std::size_t>(blk) * C;
    const int end = std::min(N, (blk + 1) * kNormRows);
    for (int n = blk * kNormRows; n < end; ++n) {
      const T* x = inp + static_cast<std::size_t>(n) * C;
      const T* g = dout + static_cast<std::size_t>(n) * C;
      T* dx = dinp + static_cast<std::size_t>(n) * C;
      const T r = rstd[n];
      T gn_mean = 0;
#pragma omp simd reduction(+ : gn_mean)
      for (int c = 0; c < C; ++c) gn_mean += g[c] * w[c] * x[c] * r;
      gn_mean /= T(C);
#pragma omp simd
      for (int c = 0; c < C; ++c) {
        const T norm = x[c] * r;
        bw[c] += g[c] * norm;
        dx[c] += (g[c] * w[c] - norm * gn_mean) * r;
      }
    }
  }
  reduce_blocks(dw, pdw, blocks, C);
}

namespace {
template <typename T>
constexpr T kGeluScale = T(0.7978845608028654);  // sqrt(2 / pi)
template <typename T>
constexpr T kGeluCube = T(0.044715);
}  // namespace

template <typename T>
void gelu_forward(T* out, const T* inp, std::int64_t count) {
#pragma omp parallel for simd schedule(static) if (worth_threads(count))
  for (std::int64_t i = 0; i < count; ++i) {
    const T x = inp[i];
    const T u = kGeluScale<T> * (x + kGeluCube<T> * x * x * x);
    out[i] = T(0.5) * x * (T(1) + vtanh<T>(u));
  }
}

template <typename T>
void gelu_backward(T* dinp, const T* inp, const T* dout, std::int64_t count) {
#pragma omp parallel for simd schedule(static) if (worth_threads(count))
  for (std::int64_t i = 0; i < count; ++i) {
    const T x = inp[i];
    const T u = kGeluScale<T> * (x + kGeluCube<T> * x * x * x);
    const T th = vtanh<T>(u);
    const T du = kGeluScale<T> * (T(1) + T(3) * kGeluCube<T> * x * x);
    const T grad = T(0.5) * (T(1) + th) + T(0.5) * x * (T(1) - th * th) * du;
    dinp[i] = grad * dout[i];
  }
}

template <typename T>
void swiglu_forward(T* out, const T* inp, int N, int F) {
#pragma omp parallel for schedule(static) if (worth_threads(std::int64_t{N} * F))
  for (int n = 0; n < N; ++n) {
    const T* g = inp + static_cast<std::size_t>(n) * 2 * F;
    const T* u = g + F;
    T* o = out + static_cast<std::size_t>(n) * F;
#pragma omp simd
    for (int i = 0; i < F; ++i) o[i] = g[i] / (T(1) + vexp<T>(-g[i])) * u[i];
  }
}

template <typename T>
void swiglu_backward(T* dinp, const T* inp, const T* dout, int N, int F) {
#pragma omp parallel for schedule(static) if (worth_threads(std::int64_t{N} * F))
  for (int n = 0; n < N; ++n) {
    const T* g = inp + static_cast<std::size_t>(n) * 2 * F;
    const T* u = g + F;
    const T* d = dout + static_cast<std::size_t>(n) * F;
    T* dg = dinp + static_cast<std::size_t>(n) * 2 * F;
    T* du = dg + F;
#pragma omp simd
    for (int i = 0; i < F; ++i) {
      const T sig = T(1) / (T(1) + vexp<T>(-g[i]));
      const T silu = g[i] * sig;
      dg[i] = d[i] * u[i] * sig * (T(1) + g[i] * (T(1) - sig));
      du[i] = d[i] * silu;
    }
  }
}

template <typename T>
void rope_table(T* cos_t, T* sin_t, int seq, int HD, float theta) {
  const int half = HD / 2;
  for (int i = 0; i < half; ++i) {
    const double freq = std::pow(static_cast<double>(theta), -2.0 * i / HD);
    for (int t = 0; t < seq; ++t) {
      const double a = t * freq;
      cos_t[static_cast<std::size_t>(t) * half + i] = static_cast<T>(std::cos(a));
      sin_t[static_cast<std::size_t>(t) * half + i] = static_cast<T>(std::sin(a));
    }
  }
}

template <typename T>
void rope_apply(T* qkv, const T* cos_t, const T* sin_t, int B, int seq, int NH, int NKV, int HD,
                bool inverse) {
  const int half = HD / 2;
  const int stride = (NH + 2 * NKV) * HD;
  const int heads = NH + NKV;  // q and k heads are contiguous at the start of a row
  const int N = B * seq;
  const T sign = inverse ? T(-1) : T(1);
#pragma omp parallel for schedule(static) if (worth_threads(std::int64_t{N} * heads * HD))
  for (int n = 0; n < N; ++n) {
    const T* cs = cos_t + static_cast<std::size_t>(n % seq) * half;
    const T* sn = sin_t + static_cast<std::size_t>(n % seq) * half;
    for (int h = 0; h < heads; ++h) {
      T* x = qkv + static_cast<std::size_t>(n) * stride + static_cast<std::size_t>(h) * HD;
#pragma omp simd
      for (int i = 0; i < half; ++i) {
        const T x1 = x[i];
        const T x2 = x[i + half];
        const T s = sign * sn[i];
        x[i] = x1 * cs[i] - x2 * s;
        x[i + half] = x2 * cs[i] + x1 * s;
      }
    }
  }
}

#define BOREALIS_INSTANTIATE(T)                                                                  \
  template void layernorm_forward<T>(T*, T*, T*, const T*, const T*, const T*, int, int, float); \
  template void layernorm_backward<T>(T*, T*, T*, const T*, const T*, const T*, const T*,        \
                                      const T*, int, int);                                       \
  template void rmsnorm_forward<T>(T*, T*, const T*, const T*, int, int, float);                 \
  template void rmsnorm_backward<T>(T*, T*, const T*, const T*, const T*, const T*, int, int);   \
  template void gelu_forward<T>(T*, const T*, std::int64_t);                                     \
  template void gelu_backward<T>(T*, const T*, const T*, std::int64_t);                          \
  template void swiglu_forward<T>(T*, const T*, int, int);                                       \
  template void swiglu_backward<T>(T*, const T*, const T*, int, int);                            \
  template void rope_table<T>(T*, T*, int, int, float);                                          \
  template void rope_apply<T>(T*, const T*, const T*, int, int, int, int, int, bool);
BOREALIS_INSTANTIATE(float)
BOREALIS_INSTANTIATE(double)
#undef BOREALIS_INSTANTIATE

}  // namespace borealis::cpu
