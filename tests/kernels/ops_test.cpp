// Every CPU op: forward against a direct formula where one is short, and
// backward against central finite differences in double precision.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <numbers>

#include "core/threads.h"
#include "kernels/backend.h"
#include "kernels/cpu/vec_math.h"
#include "kernels/gradcheck.h"

namespace borealis {
namespace {

using test::dot;
using test::expect_gradient;
using test::random_vector;

class Ops : public ::testing::Test {
 protected:
  test::SingleThreadScope one_thread;  // the math; threading is checked below
  std::unique_ptr<Backend<double>> be = make_cpu_backend<double>();
};

TEST_F(Ops, MatmulForwardMatchesDefinition) {
  const int N = 3, C = 4, OC = 5;
  auto x = random_vector(N * C, 1), w = random_vector(OC * C, 2), b = random_vector(OC, 3);
  std::vector<double> out(N * OC, 0.0);
  be->matmul_forward(out.data(), x.data(), w.data(), b.data(), N, C, OC, false);
  for (int n = 0; n < N; ++n) {
    for (int o = 0; o < OC; ++o) {
      double s = b[o];
      for (int c = 0; c < C; ++c) s += x[n * C + c] * w[o * C + c];
      EXPECT_NEAR(out[n * OC + o], s, 1e-12);
    }
  }
  // accumulate adds to what is there (the fused residual add).
  std::vector<double> acc(N * OC, 1.5);
  be->matmul_forward(acc.data(), x.data(), w.data(), b.data(), N, C, OC, true);
  for (int i = 0; i < N * OC; ++i) EXPECT_NEAR(acc[i], out[i] + 1.5, 1e-12);
}

TEST_F(Ops, MatmulBackward) {
  const int N = 70, C = 5, OC = 6;  // N > one reduction block of the bias sum
  auto x = random_vector(N * C, 4), w = random_vector(OC * C, 5), b = random_vector(OC, 6);
  auto r = random_vector(N * OC, 7);
  std::vector<double> out(N * OC);
  auto loss = [&] {
    be->matmul_forward(out.data(), x.data(), w.data(), b.data(), N, C, OC, false);
    return dot(out, r);
  };
  std::vector<double> dx(N * C, 9.0), dw(OC * C, 0.0), db(OC, 0.0);
  be->matmul_backward(dx.data(), dw.data(), db.data(), r.data(), x.data(), w.data(), N, C, OC);
  expect_gradient("dx", x.data(), x.size(), dx, loss);
  expect_gradient("dw", w.data(), w.size(), dw, loss);
  expect_gradient("db", b.data(), b.size(), db, loss);
  // Parameter gradients accumulate.
  be->matmul_backward(nullptr, dw.data(), db.data(), r.data(), x.data(), w.data(), N, C, OC);
  std::vector<double> dw1(OC * C, 0.0), db1(OC, 0.0);
  be->matmul_backward(nullptr, dw1.data(), db1.data(), r.data(), x.data(), w.data(), N, C, OC);
  for (int i = 0; i < OC * C; ++i) EXPECT_NEAR(dw[i], 2 * dw1[i], 1e-12);
  for (int i = 0; i < OC; ++i) EXPECT_NEAR(db[i], 2 * db1[i], 1e-12);
}

TEST_F(Ops, LayerNorm) {
  const int N = 40, C = 7;
  auto x = random_vector(N * C, 8, 2.0), w = random_vector(C, 9), b = random_vector(C, 10);
  auto r = random_vector(N * C, 11);
  std::vector<double> out(N * C), mean(N), rstd(N);
  auto loss = [&] {
    be->layernorm_forward(out.data(), mean.data(), rstd.data(), x.data(), w.data(), b.data(), N, C,
                          1e-5f);
    return dot(out, r);
  };
  loss();
  double m = 0, v = 0;
  for (int c = 0; c < C; ++c) m += x[c] / C;
  for (int c = 0; c < C; ++c) v += (x[c] - m) * (x[c] - m) / C;
  EXPECT_NEAR(out[2], (x[2] - m) / std::sqrt(v + 1e-5) * w[2] + b[2], 1e-12);
  std::vector<double> dx(N * C, 0.0), dw(C, 0.0), db(C, 0.0);
  be->layernorm_backward(dx.data(), dw.data(), db.data(), r.data(), x.data(), w.data(), mean.data(),
                         rstd.data(), N, C);
  expect_gradient("dx", x.data(), x.size(), dx, loss);
  expect_gradient("dw", w.data(), w.size(), dw, loss);
  expect_gradient("db", b.data(), b.size(), db, loss);
}

TEST_F(Ops, RmsNorm) {
  const int N = 40, C = 6;
  auto x = random_vector(N * C, 12, 2.0), w = random_vector(C, 13), r = random_vector(N * C, 14);
  std::vector<double> out(N * C), rstd(N);
  auto loss = [&] {
    be->rmsnorm_forward(out.data(), rstd.data(), x.data(), w.data(), N, C, 1e-5f);
    return dot(out, r);
  };
  loss();
  double ss = 0;
  for (int c = 0; c < C; ++c) ss += x[c] * x[c] / C;
  EXPECT_NEAR(out[3], x[3] / std::sqrt(ss + 1e-5) * w[3], 1e-12);
  std::vector<double> dx(N * C, 0.0), dw(C, 0.0);
  be->rmsnorm_backward(dx.data(), dw.data(), r.data(), x.data(), w.data(), rstd.data(), N, C);
  expect_gradient("dx", x.data(), x.size(), dx, loss);
  expect_gradient("dw", w.data(), w.size(), dw, loss);
}

TEST_F(Ops, Gelu) {
  const int n = 50;
  auto x = random_vector(n, 15, 4.0), r = random_vector(n, 16);
  std::vector<double> out(n);
  auto loss = [&] {
    be->gelu_forward(out.data(), x.data(), n);
    return dot(out, r);
  };
  loss();
  const double k = std::sqrt(2.0 / std::numbers::pi);
  EXPECT_NEAR(out[0], 0.5 * x[0] * (1 + std::tanh(k * (x[0] + 0.044715 * std::pow(x[0], 3)))),
              1e-14);
  std::vector<double> dx(n);
  be->gelu_backward(dx.data(), x.data(), r.data(), n);
  expect_gradient("dx", x.data(), x.size(), dx, loss);
}

TEST_F(Ops, SwiGlu) {
  const int N = 3, F = 5;
  auto x = random_vector(N * 2 * F, 17, 3.0), r = random_vector(N * F, 18);
  std::vector<double> out(N * F);
  auto loss = [&] {
    be->swiglu_forward(out.data(), x.data(), N, F);
    return dot(out, r);
  };
  loss();
  const double g = x[1], u = x[F + 1];
  EXPECT_NEAR(out[1], g / (1 + std::exp(-g)) * u, 1e-14);
  std::vector<double> dx(N * 2 * F);
  be->swiglu_backward(dx.data(), x.data(), r.data(), N, F);
  expect_gradient("dx", x.data(), x.size(), dx, loss);
}

TEST_F(Ops, Rope) {
  const int B = 2, seq = 5, NH = 4, NKV = 2, HD = 6;
  const int S = (NH + 2 * NKV) * HD;
  auto x = random_vector(B * seq * S, 19), r = random_vector(B * seq * S, 20);
  std::vector<double> y;
  auto loss = [&] {
    y = x;
    be->rope_forward(y.data(), B, seq, NH, NKV, HD, 10000.0f);
    return dot(y, r);
  };
  loss();
  // Position 0 is not rotated; v heads are never rotated; rotation keeps norms.
  for (int i = 0; i < S; ++i) EXPECT_DOUBLE_EQ(y[i], x[i]);
  const int t = 3, h = 1, i = 2;  // pair (i, i + HD/2) of q head h at position t
  const double a = t * std::pow(10000.0, -2.0 * i / HD);
  const std::size_t at = static_cast<std::size_t>(t) * S + h * HD;
  EXPECT_NEAR(y[at + i], x[at + i] * std::cos(a) - x[at + i + HD / 2] * std::sin(a), 1e-12);
  for (int c = (NH + NKV) * HD; c < S; ++c) EXPECT_DOUBLE_EQ(y[t * S + c], x[t * S + c]);
  std::vector<double> dx = r;
  be->rope_backward(dx.data(), B, seq, NH, NKV, HD, 10000.0f);
  expect_gradient("dx", x.data(), x.size(), dx, loss);
}

// Naive causal attention: explicit scores and softmax per (b, h, t).
std::vector<double> attention_reference(const std::vector<double>& qkv, int B, int seq, int NH,
                                        int NKV, int HD) {
  const int S = (NH + 2 * NKV) * HD, C = NH * HD;
  std::vector<double> out(static_cast<std::size_t>(B) * seq * C, 0.0);
  for (int b = 0; b < B; ++b) {
    for (int h = 0; h < NH; ++h) {
      const int g = h / (NH / NKV);
      for (int t = 0; t < seq; ++t) {
        std::vector<double> s(t + 1);
        double mx = -1e300, sum = 0;
        for (int u = 0; u <= t; ++u) {
          double d = 0;
          for (int c = 0; c < HD; ++c) {
            d += qkv[(b * seq + t) * S + h * HD + c] * qkv[(b * seq + u) * S + C + g * HD + c];
          }
          s[u] = d / std::sqrt(HD);
          mx = std::max(mx, s[u]);
        }
        for (auto& v : s) sum += (v = std::exp(v - mx));
        for (int u = 0; u <= t; ++u) {
          for (int c = 0; c < HD; ++c) {
            out[(b * seq + t) * C + h * HD + c] +=
                s[u] / sum * qkv[(b * seq + u) * S + C + NKV * HD + g * HD + c];
          }
        }
      }
    }
  }
  return out;
}

TEST_F(Ops, AttentionGqaAcrossTiles) {
  // seq 70 spans two 64-row query tiles; 4 query heads share 2 kv heads.
  const int B = 2, seq = 70, NH = 4, NKV = 2, HD = 4;
  const int S = (NH + 2 * NKV) * HD, C = NH * HD;
  auto qkv = random_vector(static_cast<std::size_t>(B) * seq * S, 21, 2.0);
  auto r = random_vector(static_cast<std::size_t>(B) * seq * C, 22);
  std::vector<double> out(B * seq * C), lse(B * NH * seq);
  auto loss = [&] {
    be->attention_forward(out.data(), lse.data(), qkv.data(), B, seq, NH, NKV, HD);
    return dot(out, r);
  };
  loss();
  const auto ref = attention_reference(qkv, B, seq, NH, NKV, HD);
  for (std::size_t i = 0; i < ref.size(); ++i) ASSERT_NEAR(out[i], ref[i], 1e-12) << i;
  std::vector<double> dqkv(qkv.size(), 7.0);
  be->attention_backward(dqkv.data(), r.data(), qkv.data(), out.data(), lse.data(), B, seq, NH, NKV,
                         HD);
  // Every q, k and v element of the first sequence's first and last rows,
  // plus a stride through the rest.
  std::vector<std::size_t> which;
  for (std::size_t i = 0; i < qkv.size(); i += 7) which.push_back(i);
  for (int c = 0; c < S; ++c) {
    which.push_back(static_cast<std::size_t>(c));
    which.push_back(static_cast<std::size_t>(seq - 1) * S + c);
  }
  expect_gradient("dqkv", qkv.data(), qkv.size(), dqkv, loss, which);
}

TEST_F(Ops, CrossEntropyMasksPaddedVocabulary) {
  const int N = 4, V = 7, Vp = 64;
  auto logits = random_vector(N * Vp, 23, 3.0);
  for (int n = 0; n < N; ++n) logits[n * Vp + V + 1] = 1e6;  // huge padded logit: must not count
  const std::vector<std::int32_t> targets = {0, 6, 3, 3};
  std::vector<double> losses(N);
  const double dloss = 0.25;
  auto loss = [&] {
    std::vector<double> tmp = logits;
    be->crossentropy_forward_backward(tmp.data(), losses.data(), targets.data(), N, V, Vp, 0.0);
    double s = 0;
    for (double l : losses) s += l;
    return dloss * s;
  };
  loss();
  double mx = -1e300, sum = 0;
  for (int j = 0; j < V; ++j) mx = std::max(mx, logits[Vp + j]);
  for (int j = 0; j < V; ++j) sum += std::exp(logits[Vp + j] - mx);
  EXPECT_NEAR(losses[1], std::log(sum) + mx - logits[Vp + 6], 1e-12);
  std::vector<double> grad = logits;
  be->crossentropy_forward_backward(grad.data(), losses.data(), targets.data(), N, V, Vp, dloss);
  for (int n = 0; n < N; ++n) {
    for (int j = V; j < Vp; ++j) EXPECT_EQ(grad[n * Vp + j], 0.0);
  }
  std::vector<std::size_t> real;
  for (int n = 0; n < N; ++n) {
    for (int j = 0; j < V; ++j) real.push_back(static_cast<std::size_t>(n * Vp + j));
  }
  expect_gradient("dlogits", logits.data(), logits.size(), grad, loss, real);
}

TEST_F(Ops, Embedding) {
  const int B = 2, seq = 3, C = 4, V = 5;
  const std::vector<std::int32_t> tokens = {1, 4, 1, 1, 0, 4};  // repeated ids
  auto wte = random_vector(V * C, 24), wpe = random_vector(seq * C, 25);
  auto r = random_vector(B * seq * C, 26);
  std::vector<double> out(B * seq * C);
  auto loss = [&] {
    be->embedding_forward(out.data(), tokens.data(), wte.data(), wpe.data(), B * seq, seq, C);
    return dot(out, r);
  };
  loss();
  EXPECT_DOUBLE_EQ(out[4 * C + 2], wte[0 * C + 2] + wpe[1 * C + 2]);
  std::vector<double> dwte(V * C, 0.0), dwpe(seq * C, 0.0);
  be->embedding_backward(dwte.data(), dwpe.data(), r.data(), tokens.data(), B * seq, seq, C);
  expect_gradient("dwte", wte.data(), wte.size(), dwte, loss);
  expect_gradient("dwpe", wpe.data(), wpe.size(), dwpe, loss);
  for (int c = 0; c < C; ++c) EXPECT_EQ(dwte[2 * C + c], 0.0);  // token 2 unused
}

// Our own loops give bit-identical results on 1 and 2 threads (fixed
// reduction blocks, one owner per output); sizes are above the threshold
// where loops go parallel.
TEST(OpsThreads, ResultsDoNotDependOnThreadCount) {
  const int B = 2, seq = 100, NH = 4, NKV = 2, HD = 16, C = NH * HD, V = 300;
  const int S = (NH + 2 * NKV) * HD, N = B * seq;
  const auto qkv = random_vector(static_cast<std::size_t>(N) * S, 40);
  const auto x = random_vector(static_cast<std::size_t>(N) * C, 41);
  const auto w = random_vector(C, 42);
  std::vector<std::int32_t> tokens(N);
  for (int i = 0; i < N; ++i) tokens[i] = (i * 37) % V;
  auto run = [&](int threads) {
    const int saved = cpu_threads();
    set_cpu_threads(threads);
    auto be = make_cpu_backend<double>();
    std::vector<double> out(static_cast<std::size_t>(N) * C), lse(B * NH * seq);
    std::vector<double> dqkv(qkv.size()), dx(x.size(), 0.0), dw(C, 0.0), db(C, 0.0);
    std::vector<double> mean(N), rstd(N), ln(x.size()), dwte(static_cast<std::size_t>(V) * C, 0.0);
    be->attention_forward(out.data(), lse.data(), qkv.data(), B, seq, NH, NKV, HD);
    be->attention_backward(dqkv.data(), x.data(), qkv.data(), out.data(), lse.data(), B, seq, NH,
                           NKV, HD);
    be->layernorm_forward(ln.data(), mean.data(), rstd.data(), x.data(), w.data(), w.data(), N, C,
                          1e-5f);
    be->layernorm_backward(dx.data(), dw.data(), db.data(), out.data(), x.data(), w.data(),
                           mean.data(), rstd.data(), N, C);
    be->embedding_backward(dwte.data(), nullptr, out.data(), tokens.data(), N, seq, C);
    set_cpu_threads(saved);
    return std::vector<std::vector<double>>{out, lse, dqkv, ln, dx, dw, db, dwte};
  };
  const auto one = run(1);
  const auto two = run(2);
  for (std::size_t i = 0; i < one.size(); ++i) EXPECT_EQ(one[i], two[i]) << "output " << i;
}

// The float kernels use a polynomial exp; it must stay within a few ulp of libm.
TEST(BackendMemory, CpuArraysAreZeroedHostMemory) {
  auto be = make_cpu_backend<float>();
  EXPECT_TRUE(be->host_memory());
  BackendArray<float> a(*be, 1000);
  ASSERT_EQ(a.size(), 1000);
  for (std::int64_t i = 0; i < a.size(); ++i) ASSERT_EQ(a.data()[i], 0.0f);
  const std::vector<float> in = {1.5f, -2.0f, 3.25f};
  be->upload(a.data() + 10, in.data(), in.size() * sizeof(float));
  std::vector<float> out(3);
  be->download(out.data(), a.data() + 10, out.size() * sizeof(float));
  EXPECT_EQ(out, in);
  // Moving hands the memory over; the moved-from array is empty.
  float* const p = a.data();
  BackendArray<float> b(std::move(a));
  EXPECT_EQ(b.data(), p);
  EXPECT_EQ(a.data(), nullptr);  // NOLINT(bugprone-use-after-move): the contract under test
  EXPECT_EQ(a.size(), 0);
  BackendArray<std::int32_t> ids(*be, 0);
  EXPECT_EQ(ids.size(), 0);
}

TEST(VecMath, FastExpMatchesLibm) {
  float worst = 0;
  for (float x = -80.0f; x < 80.0f; x += 0.0137f) {
    const double ref = std::exp(static_cast<double>(x));
    const float got = cpu::fast_expf(x);
    worst = std::max(worst, static_cast<float>(std::abs(got - ref) / ref));
  }
  EXPECT_LT(worst, 4 * std::numeric_limits<float>::epsilon());
  EXPECT_GT(cpu::fast_expf(-1000.0f), 0.0f);
  EXPECT_LT(cpu::fast_expf(-1000.0f), 1e-37f);
}

// The float path (fast exp, float BLAS) agrees with the double path.
TEST(OpsFloat, AttentionMatchesDouble) {
  const int B = 1, seq = 200, NH = 2, NKV = 1, HD = 8;  // four query tiles
  const int S = (NH + 2 * NKV) * HD, C = NH * HD;
  auto qkv = random_vector(static_cast<std::size_t>(B) * seq * S, 27, 2.0);
  auto d = random_vector(static_cast<std::size_t>(B) * seq * C, 28);
  std::vector<float> qkv_f(qkv.begin(), qkv.end()), d_f(d.begin(), d.end());
  std::vector<double> out(B * seq * C), lse(B * NH * seq), dqkv(qkv.size());
  std::vector<float> out_f(out.size()), lse_f(lse.size()), dqkv_f(qkv.size());
  auto bd = make_cpu_backend<double>();
  auto bf = make_cpu_backend<float>();
  bd->attention_forward(out.data(), lse.data(), qkv.data(), B, seq, NH, NKV, HD);
  bf->attention_forward(out_f.data(), lse_f.data(), qkv_f.data(), B, seq, NH, NKV, HD);
  bd->attention_backward(dqkv.data(), d.data(), qkv.data(), out.data(), lse.data(), B, seq, NH, NKV,
                         HD);
  bf->attention_backward(dqkv_f.data(), d_f.data(), qkv_f.data(), out_f.data(), lse_f.data(), B,
                         seq, NH, NKV, HD);
  for (std::size_t i = 0; i < out.size(); ++i) ASSERT_NEAR(out_f[i], out[i], 1e-5) << i;
  for (std::size_t i = 0; i < dqkv.size(); ++i) ASSERT_NEAR(dqkv_f[i], dqkv[i], 1e-5) << i;
}

}  // namespace
}  // namespace borealis
