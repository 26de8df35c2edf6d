// Every op of the CUDA backend against the CPU backend on random inputs, and
// the GPU's own determinism (the same call twice gives the same bits).
//
// Tolerances (fp32): sums the GPU does in the CPU's order (embedding
// gradients, bias gradients, the position-embedding sum) must be equal bit
// for bit; everything else is compared as |gpu - cpu| <= tol * (1 + |cpu|)
// with the tol each test states: 1e-5 for elementwise ops and norms (other
// exp/tanh implementations, another reduction tree), 1e-4 for GEMMs and
// attention (cuBLAS's and the tiled kernels' summation orders over a few
// hundred terms).
//
// The "cuda" instances skip, with the reason printed, where no CUDA device
// can be used (a failure instead with BOREALIS_REQUIRE_CUDA set). Two more
// run everywhere: "emulated" runs the CUDA backend's own kernels and cuBLAS
// calls on the CUDA emulator (tests/kernels/cuda_emulator/), and "guarded"
// the CPU's ops behind memory the host may not touch, which checks the tests
// themselves.
#include <gtest/gtest.h>

#include <array>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <tuple>
#include <vector>

#include "core/half.h"
#include "kernels/backend.h"
#include "kernels/cuda/cuda_backend.h"
#include "kernels/cuda_emulator/cuda_emulator.h"
#include "kernels/cuda_emulator/emulated_cuda_backend.h"
#include "kernels/cuda_test_util.h"
#include "kernels/gradcheck.h"
#include "kernels/guarded_backend.h"

namespace borealis {
namespace {

using test::DeviceBuffer;
using test::to_host;

std::vector<float> rnd(std::size_t n, std::uint64_t seed, double scale = 1.0) {
  const std::vector<double> d = test::random_vector(n, seed, scale);
  return std::vector<float>(d.begin(), d.end());
}

void expect_close(const char* what, const std::vector<float>& gpu, const std::vector<float>& cpu,
                  double tol) {
  ASSERT_EQ(gpu.size(), cpu.size()) << what;
  double worst = 0.0;
  std::size_t at = 0;
  for (std::size_t i = 0; i < cpu.size(); ++i) {
    const double err = std::abs(static_cast<double>(gpu[i]) - cpu[i]) / (1.0 + std::abs(cpu[i]));
    if (!(err <= worst)) {  // NaN counts as the worst
      worst = std::isnan(err) ? INFINITY : err;
      at = i;
    }
  }
  EXPECT_LE(worst, tol) << what << ": element " << at << " gpu " << gpu[at] << " cpu " << cpu[at];
}

void expect_same_bits(const char* what, const std::vector<float>& a, const std::vector<float>& b) {
  ASSERT_EQ(a.size(), b.size()) << what;
  for (std::size_t i = 0; i < a.size(); ++i) {
    ASSERT_EQ(std::memcmp(&a[i], &b[i], sizeof(float)), 0)
        << what << ": element " << i << ": " << a[i] << " vs " << b[i];
  }
}

// AdamW's update at step t, with the op tests' hyperparameters.
Backend<float>::AdamWUpdate adamw_update_at(int t) {
  Backend<float>::AdamWUpdate u{};
  u.lr = 1e-3f;
  u.beta1 = 0.9f;
  u.beta2 = 0.95f;
  u.eps = 1e-8f;
  u.weight_decay = 0.1f;
  u.grad_scale = 0.5f;
  float beta1_t = 1.0f, beta2_t = 1.0f;
  for (int i = 0; i < t; ++i) {
    beta1_t *= u.beta1;
    beta2_t *= u.beta2;
  }
  u.c1 = 1.0f / (1.0f - beta1_t);
  u.c2 = 1.0f / (1.0f - beta2_t);
  return u;
}

// Run on the CUDA backend ("cuda"), on the same source under the CUDA
// emulator ("emulated"), and, to check the tests themselves, on
// GuardedBackend ("guarded": the CPU's ops behind memory the host may not
// touch; it must pass, mostly bit for bit).
class CudaOps : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    if (GetParam() == "guarded") {
      gpu = std::make_unique<test::GuardedBackend>();
      return;
    }
    if (GetParam() == "emulated") {
      live_before_ = cuda_emulator::live_allocations();
      gpu = emulated::make_cuda_backend();
      return;
    }
#ifdef BOREALIS_HAVE_CUDA_KERNELS
    BOREALIS_SKIP_WITHOUT_CUDA();
    gpu = make_cuda_backend();
#endif
  }
  // The backend frees every byte of device memory it allocated.
  void TearDown() override {
    gpu.reset();
    if (GetParam() == "emulated") {
      EXPECT_EQ(cuda_emulator::live_allocations(), live_before_);
    }
  }
  // Device memory on the backend under test.
  DeviceBuffer buf(std::size_t bytes) {
    return DeviceBuffer(*gpu, bytes);
  }
  template <typename T>
  DeviceBuffer dev(const std::vector<T>& host) {
    return test::to_device(*gpu, host);
  }

  std::unique_ptr<Backend<float>> cpu = make_cpu_backend<float>();
  std::unique_ptr<Backend<float>> gpu;

 private:
  std::size_t live_before_ = 0;
};

TEST_P(CudaOps, Matmul) {
  const int N = 150, C = 96, OC = 80;  // N spans three bias-reduction blocks
  auto x = rnd(N * C, 1), w = rnd(OC * C, 2), b = rnd(OC, 3), r = rnd(N * OC, 4);
  auto dx = x, dw0 = rnd(OC * C, 5), db0 = rnd(OC, 6);
  DeviceBuffer gx = dev(x), gw = dev(w), gb = dev(b), gr = dev(r);
  for (const bool acc : {false, true}) {
    auto out = rnd(N * OC, 7);
    DeviceBuffer gout = dev(out);
    cpu->matmul_forward(out.data(), x.data(), w.data(), b.data(), N, C, OC, acc);
    gpu->matmul_forward(gout.as<float>(), gx.as<float>(), gw.as<float>(), gb.as<float>(), N, C, OC,
                        acc);
    expect_close(acc ? "forward, accumulate" : "forward", to_host<float>(gout), out, 1e-4);
  }
  auto dw = dw0, db = db0;
  DeviceBuffer gdx = dev(dx), gdw = dev(dw0), gdb = dev(db0);
  cpu->matmul_backward(dx.data(), dw.data(), db.data(), r.data(), x.data(), w.data(), N, C, OC);
  gpu->matmul_backward(gdx.as<float>(), gdw.as<float>(), gdb.as<float>(), gr.as<float>(),
                       gx.as<float>(), gw.as<float>(), N, C, OC);
  expect_close("dinp", to_host<float>(gdx), dx, 1e-4);
  expect_close("dw (accumulated)", to_host<float>(gdw), dw, 1e-4);
  expect_same_bits("dbias (the CPU's order)", to_host<float>(gdb), db);
}

// An output projection with its residual add (and bias) in one GEMM (the
// residual as cuBLASLt's C), against the CPU's copy and accumulating GEMM:
// into a separate buffer and in place, with and without a bias.
TEST_P(CudaOps, MatmulWithResidual) {
  const int N = 45, C = 40, OC = 56;
  auto x = rnd(N * C, 41), w = rnd(OC * C, 42), b = rnd(OC, 43), res = rnd(N * OC, 44);
  DeviceBuffer gx = dev(x), gw = dev(w), gb = dev(b), gres = dev(res);
  for (const bool in_place : {false, true}) {
    for (const bool with_bias : {true, false}) {
      SCOPED_TRACE(testing::Message() << (in_place ? "in place" : "into another buffer")
                                      << (with_bias ? ", bias" : ", no bias"));
      // The output buffer: the residual itself, or one of other values.
      std::vector<float> out = in_place ? res : std::vector<float>(N * OC, -3.0f);
      DeviceBuffer gout = dev(out);
      const std::uint64_t lt_before = cuda_emulator::lt_matmuls();
      cpu->matmul_residual_forward(out.data(), in_place ? out.data() : res.data(), x.data(),
                                   w.data(), with_bias ? b.data() : nullptr, N, C, OC);
      gpu->matmul_residual_forward(gout.as<float>(), in_place ? gout.as<float>() : gres.as<float>(),
                                   gx.as<float>(), gw.as<float>(),
                                   with_bias ? gb.as<float>() : nullptr, N, C, OC);
      expect_close("out", to_host<float>(gout), out, 1e-4);
      if (GetParam() == "emulated") {
        EXPECT_EQ(cuda_emulator::lt_matmuls() - lt_before, 1u);
      }
    }
  }
}

// GPT-2's MLP GEMMs with GELU (and its gradient) in cuBLASLt's epilogue,
// against the CPU's separate ops: with widths that divide by 8 (the
// epilogue's buffer needs it) and without (matmul and GELU kernels).
TEST_P(CudaOps, MatmulWithGelu) {
  struct Shape {
    int N, C, OC;
    bool fused;  // whether cuBLASLt's epilogues can take it
  };
  for (const Shape& sh : {Shape{70, 48, 96, true}, Shape{33, 20, 52, false}}) {
    const int N = sh.N, C = sh.C, OC = sh.OC;
    SCOPED_TRACE(testing::Message() << "N " << N << ", C " << C << ", OC " << OC);
    auto x = rnd(N * C, 31), w = rnd(OC * C, 32), b = rnd(OC, 33);
    std::vector<float> out(N * OC), pre(N * OC);
    DeviceBuffer gx = dev(x), gw = dev(w), gb = dev(b);
    DeviceBuffer gout = buf(out.size() * sizeof(float)), gpre = buf(pre.size() * sizeof(float));
    const std::uint64_t lt_before = cuda_emulator::lt_matmuls();
    cpu->matmul_gelu_forward(out.data(), pre.data(), x.data(), w.data(), b.data(), N, C, OC);
    gpu->matmul_gelu_forward(gout.as<float>(), gpre.as<float>(), gx.as<float>(), gw.as<float>(),
                             gb.as<float>(), N, C, OC);
    expect_close("pre-activation", to_host<float>(gpre), pre, 1e-4);
    expect_close("gelu", to_host<float>(gout), out, 1e-4);
    // Backward of the down-projection (input width OC) through the GELU:
    // its input is `out`, the GELU's input `pre`.
    const int D = 24;
    auto w2 = rnd(D * OC, 34), dout = rnd(N * D, 35), dw0 = rnd(D * OC, 36), db0 = rnd(D, 37);
    auto dw = dw0, db = db0;
    std::vector<float> dpre(N * OC);
    DeviceBuffer gw2 = dev(w2), gdout = dev(dout), gdw = dev(dw0), gdb = dev(db0);
    DeviceBuffer gdpre = buf(dpre.size() * sizeof(float));
    cpu->matmul_backward_gelu(dpre.data(), dw.data(), db.data(), dout.data(), out.data(), w2.data(),
                              pre.data(), N, OC, D);
    gpu->matmul_backward_gelu(gdpre.as<float>(), gdw.as<float>(), gdb.as<float>(),
                              gdout.as<float>(), gout.as<float>(), gw2.as<float>(),
                              gpre.as<float>(), N, OC, D);
    expect_close("dpre", to_host<float>(gdpre), dpre, 1e-4);
    expect_close("dw (accumulated)", to_host<float>(gdw), dw, 1e-4);
    expect_same_bits("dbias (the CPU's order)", to_host<float>(gdb), db);
    if (GetParam() == "emulated") {
      // Both GEMMs took cuBLASLt's GELU epilogues; otherwise only the
      // forward's bias rode in one (matmul_forward's bias epilogue).
      EXPECT_EQ(cuda_emulator::lt_matmuls() - lt_before, sh.fused ? 2u : 1u);
    }
  }
}

TEST_P(CudaOps, MatmulRowwiseDoesNotDependOnBatch) {
  const int N = 5, C = 200, OC = 70;
  auto x = rnd(N * C, 11), w = rnd(OC * C, 12), b = rnd(OC, 13);
  std::vector<float> out(N * OC, 0.0f);
  DeviceBuffer gx = dev(x), gw = dev(w), gb = dev(b), gout = dev(out);
  cpu->matmul_forward_rowwise(out.data(), x.data(), w.data(), b.data(), N, C, OC, false);
  gpu->matmul_forward_rowwise(gout.as<float>(), gx.as<float>(), gw.as<float>(), gb.as<float>(), N,
                              C, OC, false);
  const auto all = to_host<float>(gout);
  expect_close("rowwise", all, out, 1e-4);
  // Row 3 alone gives the bits it had among five.
  DeviceBuffer one = buf(OC * sizeof(float));
  gpu->matmul_forward_rowwise(one.as<float>(), gx.as<float>() + 3 * C, gw.as<float>(),
                              gb.as<float>(), 1, C, OC, false);
  expect_same_bits("row 3", to_host<float>(one),
                   std::vector<float>(all.begin() + 3 * OC, all.begin() + 4 * OC));
}

TEST_P(CudaOps, Embedding) {
  const int B = 3, seq = 7, N = B * seq, C = 300, Vp = 40;
  std::vector<std::int32_t> tokens(N);
  for (int n = 0; n < N; ++n) tokens[n] = (n * 7) % 11 + (n % 3 == 0 ? 25 : 0);  // repeats
  auto wte = rnd(Vp * C, 21), wpe = rnd(seq * C, 22), dout = rnd(N * C, 23);
  DeviceBuffer gt = dev(tokens), gwte = dev(wte), gwpe = dev(wpe), gd = dev(dout);
  std::vector<float> out(N * C);
  DeviceBuffer gout = buf(out.size() * sizeof(float));
  cpu->embedding_forward(out.data(), tokens.data(), wte.data(), wpe.data(), N, seq, C);
  gpu->embedding_forward(gout.as<float>(), gt.as<std::int32_t>(), gwte.as<float>(),
                         gwpe.as<float>(), N, seq, C);
  expect_same_bits("forward", to_host<float>(gout), out);

  auto dwte = rnd(Vp * C, 24), dwpe = rnd(seq * C, 25);
  DeviceBuffer gdwte = dev(dwte), gdwpe = dev(dwpe);
  cpu->embedding_backward(dwte.data(), dwpe.data(), dout.data(), tokens.data(), N, seq, C);
  gpu->embedding_backward(gdwte.as<float>(), gdwpe.as<float>(), gd.as<float>(),
                          gt.as<std::int32_t>(), N, seq, C);
  expect_same_bits("dwte", to_host<float>(gdwte), dwte);
  expect_same_bits("dwpe", to_host<float>(gdwpe), dwpe);

  // The vocabulary-parallel part: rows [10, 35) only, no positions.
  cpu->embedding_forward_part(out.data(), tokens.data(), wte.data() + 10 * C, 10, 25, nullptr, N,
                              seq, C);
  gpu->embedding_forward_part(gout.as<float>(), gt.as<std::int32_t>(), gwte.as<float>() + 10 * C,
                              10, 25, nullptr, N, seq, C);
  expect_same_bits("forward part", to_host<float>(gout), out);
  cpu->embedding_backward_part(dwte.data() + 10 * C, nullptr, dout.data(), tokens.data(), 10, 25, N,
                               seq, C);
  gpu->embedding_backward_part(gdwte.as<float>() + 10 * C, nullptr, gd.as<float>(),
                               gt.as<std::int32_t>(), 10, 25, N, seq, C);
  expect_same_bits("dwte part", to_host<float>(gdwte), dwte);
}

TEST_P(CudaOps, LayerNorm) {
  const int N = 70, C = 200;
  auto x = rnd(N * C, 31, 2.0), w = rnd(C, 32), b = rnd(C, 33), g = rnd(N * C, 34);
  std::vector<float> out(N * C), mean(N), rstd(N);
  DeviceBuffer gx = dev(x), gw = dev(w), gb = dev(b), gg = dev(g);
  DeviceBuffer gout = buf(out.size() * 4), gmean = buf(N * 4), grstd = buf(N * 4);
  cpu->layernorm_forward(out.data(), mean.data(), rstd.data(), x.data(), w.data(), b.data(), N, C,
                         1e-5f);
  gpu->layernorm_forward(gout.as<float>(), gmean.as<float>(), grstd.as<float>(), gx.as<float>(),
                         gw.as<float>(), gb.as<float>(), N, C, 1e-5f);
  expect_close("out", to_host<float>(gout), out, 1e-5);
  expect_close("mean", to_host<float>(gmean), mean, 1e-5);
  expect_close("rstd", to_host<float>(grstd), rstd, 1e-5);
  // Backward from the CPU's saved statistics, so only backward is compared.
  gmean.upload(mean.data(), N * 4);
  grstd.upload(rstd.data(), N * 4);
  auto dx = rnd(N * C, 35), dw = rnd(C, 36), db = rnd(C, 37);
  DeviceBuffer gdx = dev(dx), gdw = dev(dw), gdb = dev(db);
  cpu->layernorm_backward(dx.data(), dw.data(), db.data(), g.data(), x.data(), w.data(),
                          mean.data(), rstd.data(), N, C);
  gpu->layernorm_backward(gdx.as<float>(), gdw.as<float>(), gdb.as<float>(), gg.as<float>(),
                          gx.as<float>(), gw.as<float>(), gmean.as<float>(), grstd.as<float>(), N,
                          C);
  expect_close("dinp (accumulated)", to_host<float>(gdx), dx, 1e-5);
  expect_close("dw", to_host<float>(gdw), dw, 1e-5);
  expect_same_bits("db (the CPU's order)", to_host<float>(gdb), db);
}

TEST_P(CudaOps, RmsNorm) {
  const int N = 40, C = 130;
  auto x = rnd(N * C, 41, 2.0), w = rnd(C, 42), g = rnd(N * C, 43);
  std::vector<float> out(N * C), rstd(N);
  DeviceBuffer gx = dev(x), gw = dev(w), gg = dev(g);
  DeviceBuffer gout = buf(out.size() * 4), grstd = buf(N * 4);
  cpu->rmsnorm_forward(out.data(), rstd.data(), x.data(), w.data(), N, C, 1e-6f);
  gpu->rmsnorm_forward(gout.as<float>(), grstd.as<float>(), gx.as<float>(), gw.as<float>(), N, C,
                       1e-6f);
  expect_close("out", to_host<float>(gout), out, 1e-5);
  expect_close("rstd", to_host<float>(grstd), rstd, 1e-5);
  grstd.upload(rstd.data(), N * 4);
  auto dx = rnd(N * C, 44), dw = rnd(C, 45);
  DeviceBuffer gdx = dev(dx), gdw = dev(dw);
  cpu->rmsnorm_backward(dx.data(), dw.data(), g.data(), x.data(), w.data(), rstd.data(), N, C);
  gpu->rmsnorm_backward(gdx.as<float>(), gdw.as<float>(), gg.as<float>(), gx.as<float>(),
                        gw.as<float>(), grstd.as<float>(), N, C);
  expect_close("dinp", to_host<float>(gdx), dx, 1e-5);
  expect_close("dw", to_host<float>(gdw), dw, 1e-5);
}

// The norms' row kernels take 8 values a lane in 16-byte accesses where
// the rows allow (C a multiple of 8, every array 16-byte aligned), else a
// value at a time, the same values in the same order: the same bits
// either way, and the CPU's results within the op tolerance.
TEST_P(CudaOps, NormsWithAndWithoutVectorAccesses) {
  for (const int C : {200, 130}) {
    const int N = 37;
    const auto x = rnd(N * C, 61, 2.0), w = rnd(C, 62), b = rnd(C, 63), g = rnd(N * C, 64),
               dx0 = rnd(N * C, 65);
    // Every output of the four ops, with the arrays `offset` floats into
    // their buffers (1: none 16-byte aligned).
    const auto run = [&](int offset) {
      const auto at = [&](const std::vector<float>& v) {
        std::vector<float> padded(static_cast<std::size_t>(offset), 0.0f);
        padded.insert(padded.end(), v.begin(), v.end());
        return dev(padded);
      };
      const auto back = [&](const DeviceBuffer& d) {
        const auto h = to_host<float>(d);
        return std::vector<float>(h.begin() + offset, h.end());
      };
      const std::vector<float> rows(static_cast<std::size_t>(N * C)), stats(N);
      DeviceBuffer gx = at(x), gw = at(w), gb = at(b), gg = at(g), gdx = at(dx0), grms = at(dx0);
      DeviceBuffer gout = at(rows), gmean = at(stats), grstd = at(stats), gdw = at(w), gdb = at(b),
                   grout = at(rows), grrstd = at(stats), grdw = at(w);
      const auto p = [&](DeviceBuffer& d) { return d.as<float>() + offset; };
      gpu->layernorm_forward(p(gout), p(gmean), p(grstd), p(gx), p(gw), p(gb), N, C, 1e-5f);
      gpu->layernorm_backward(p(gdx), p(gdw), p(gdb), p(gg), p(gx), p(gw), p(gmean), p(grstd), N,
                              C);
      gpu->rmsnorm_forward(p(grout), p(grrstd), p(gx), p(gw), N, C, 1e-6f);
      gpu->rmsnorm_backward(p(grms), p(grdw), p(gg), p(gx), p(gw), p(grrstd), N, C);
      return std::vector<std::vector<float>>{back(gout), back(gmean), back(grstd), back(gdx),
                                             back(gdw),  back(gdb),   back(grout), back(grrstd),
                                             back(grms), back(grdw)};
    };
    std::vector<float> out(N * C), mean(N), rstd(N), dx = dx0, dw = w, db = b, rout(N * C),
                                                     rrstd(N), rdx = dx0, rdw = w;
    cpu->layernorm_forward(out.data(), mean.data(), rstd.data(), x.data(), w.data(), b.data(), N, C,
                           1e-5f);
    cpu->layernorm_backward(dx.data(), dw.data(), db.data(), g.data(), x.data(), w.data(),
                            mean.data(), rstd.data(), N, C);
    cpu->rmsnorm_forward(rout.data(), rrstd.data(), x.data(), w.data(), N, C, 1e-6f);
    cpu->rmsnorm_backward(rdx.data(), rdw.data(), g.data(), x.data(), w.data(), rrstd.data(), N, C);
    const std::vector<std::vector<float>> cpu_results{out, mean, rstd,  dx,  dw,
                                                      db,  rout, rrstd, rdx, rdw};
    const char* names[] = {
        "layernorm out", "mean",         "rstd",         "layernorm dinp", "dw", "db",
        "rmsnorm out",   "rmsnorm rstd", "rmsnorm dinp", "rmsnorm dw"};
    const auto aligned = run(0), unaligned = run(1);
    for (std::size_t i = 0; i < aligned.size(); ++i) {
      SCOPED_TRACE(std::string(names[i]) + ", C " + std::to_string(C));
      expect_close("aligned", aligned[i], cpu_results[i], 1e-5);
      expect_same_bits("unaligned", unaligned[i], aligned[i]);
    }
  }
}

TEST_P(CudaOps, GeluAndSwiGlu) {
  const int N = 9, F = 333;
  auto x = rnd(N * 2 * F, 51, 4.0), d = rnd(N * 2 * F, 52);
  std::vector<float> out(x.size()), dx(x.size());
  DeviceBuffer gx = dev(x), gd = dev(d), gout = buf(out.size() * 4), gdx = buf(dx.size() * 4);
  const std::int64_t count = static_cast<std::int64_t>(x.size());
  cpu->gelu_forward(out.data(), x.data(), count);
  gpu->gelu_forward(gout.as<float>(), gx.as<float>(), count);
  expect_close("gelu", to_host<float>(gout), out, 1e-5);
  cpu->gelu_backward(dx.data(), x.data(), d.data(), count);
  gpu->gelu_backward(gdx.as<float>(), gx.as<float>(), gd.as<float>(), count);
  expect_close("gelu backward", to_host<float>(gdx), dx, 1e-5);

  std::vector<float> s(N * F);
  DeviceBuffer gs = buf(s.size() * 4);
  cpu->swiglu_forward(s.data(), x.data(), N, F);
  gpu->swiglu_forward(gs.as<float>(), gx.as<float>(), N, F);
  expect_close("swiglu", to_host<float>(gs), s, 1e-5);
  cpu->swiglu_backward(dx.data(), x.data(), d.data(), N, F);
  gpu->swiglu_backward(gdx.as<float>(), gx.as<float>(), gd.as<float>(), N, F);
  expect_close("swiglu backward", to_host<float>(gdx), dx, 1e-5);
}

TEST_P(CudaOps, Rope) {
  const int B = 2, seq = 300, NH = 4, NKV = 2, HD = 16;
  const int S = (NH + 2 * NKV) * HD;
  auto qkv = rnd(B * seq * S, 61);
  DeviceBuffer g = dev(qkv);
  cpu->rope_forward(qkv.data(), B, seq, NH, NKV, HD, 10000.0f);
  gpu->rope_forward(g.as<float>(), B, seq, NH, NKV, HD, 10000.0f);
  expect_close("forward", to_host<float>(g), qkv, 1e-5);
  cpu->rope_backward(qkv.data(), B, seq, NH, NKV, HD, 500000.0f);
  gpu->rope_backward(g.as<float>(), B, seq, NH, NKV, HD, 500000.0f);
  expect_close("backward", to_host<float>(g), qkv, 1e-5);
  // Positions 290.. of a decode step.
  cpu->rope_forward_at(qkv.data(), 7, 290, NH, NKV, HD, 10000.0f);
  gpu->rope_forward_at(g.as<float>(), 7, 290, NH, NKV, HD, 10000.0f);
  expect_close("at an offset", to_host<float>(g), qkv, 1e-5);
}

// Grouped-query attention over more than one of the CPU's 64-row tiles
// (and the GPU's: 64 query rows, 32 keys, 64 or 32 key rows for dk and dv),
// with head dimensions for both tiled kernels (up to 64, up to 128), one that
// is not a multiple of the warp, and one past them (the warp-per-row
// kernels).
TEST_P(CudaOps, Attention) {
  // (The warp-per-row kernels of HD 160 on a shorter sequence: slow on the emulator.)
  for (const auto& [HD, seq] : {std::pair{40, 90}, {64, 90}, {96, 90}, {160, 24}}) {
    SCOPED_TRACE("head dimension " + std::to_string(HD));
    const int B = 2, NH = 6, NKV = 2;
    const int S = (NH + 2 * NKV) * HD, C = NH * HD;
    auto qkv = rnd(B * seq * S, 71 + HD), dout = rnd(B * seq * C, 72 + HD);
    std::vector<float> out(B * seq * C), lse(B * NH * seq), dqkv(qkv.size());
    DeviceBuffer gqkv = dev(qkv), gd = dev(dout), gout = buf(out.size() * 4),
                 glse = buf(lse.size() * 4), gdqkv = buf(dqkv.size() * 4);
    cpu->attention_forward(out.data(), lse.data(), qkv.data(), B, seq, NH, NKV, HD);
    gpu->attention_forward(gout.as<float>(), glse.as<float>(), gqkv.as<float>(), B, seq, NH, NKV,
                           HD);
    expect_close("out", to_host<float>(gout), out, 1e-4);
    expect_close("lse", to_host<float>(glse), lse, 1e-4);
    cpu->attention_backward(dqkv.data(), dout.data(), qkv.data(), out.data(), lse.data(), B, seq,
                            NH, NKV, HD);
    gpu->attention_backward(gdqkv.as<float>(), gd.as<float>(), gqkv.as<float>(), gout.as<float>(),
                            glse.as<float>(), B, seq, NH, NKV, HD);
    const auto first = to_host<float>(gdqkv);
    expect_close("dqkv", first, dqkv, 1e-4);
    gpu->attention_backward(gdqkv.as<float>(), gd.as<float>(), gqkv.as<float>(), gout.as<float>(),
                            glse.as<float>(), B, seq, NH, NKV, HD);
    expect_same_bits("dqkv, twice", to_host<float>(gdqkv), first);
  }
}

TEST_P(CudaOps, PagedCacheAttention) {
  const int NH = 4, NKV = 2, HD = 32, block_size = 16, pos0 = 37, N = 5;
  const int S = (NH + 2 * NKV) * HD, KW = NKV * HD, pool_rows = 6 * block_size;
  const std::vector<std::int32_t> blocks = {4, 1, 5, 0};  // a shuffled block table
  auto kpool = rnd(pool_rows * KW, 81), vpool = rnd(pool_rows * KW, 82);
  auto qkv = rnd(N * S, 83);
  std::vector<float> out(N * NH * HD);
  DeviceBuffer gk = dev(kpool), gv = dev(vpool), gb = dev(blocks), gq = dev(qkv),
               gout = buf(out.size() * 4);
  cpu->attention_kv_forward(out.data(), kpool.data(), vpool.data(), blocks.data(), block_size,
                            qkv.data(), N, pos0, NH, NKV, HD);
  gpu->attention_kv_forward(gout.as<float>(), gk.as<float>(), gv.as<float>(), gb.as<std::int32_t>(),
                            block_size, gq.as<float>(), N, pos0, NH, NKV, HD);
  expect_close("out", to_host<float>(gout), out, 1e-4);
  expect_same_bits("k cache", to_host<float>(gk), kpool);
  expect_same_bits("v cache", to_host<float>(gv), vpool);
}

TEST_P(CudaOps, CrossEntropy) {
  const int N = 8, V = 1000, Vp = 1024;
  // N rows of `width` logits, V of them real.
  const auto rows_of = [&](int width) {
    auto x = rnd(N * width, 91, 5.0);
    // Rows whose maximum moves with every value each thread reads (the
    // online softmax rescales its sum each time), far above and below 0:
    // exp(100) overflows fp32, exp(-150) is 0.
    for (int j = 0; j < width; ++j) {
      x[6 * width + j] = 100.0f + 0.01f * static_cast<float>(j);
      x[7 * width + j] = -150.0f + 0.02f * static_cast<float>(j % 250) + 0.5f * x[j];
    }
    return x;
  };
  const std::vector<float> logits = rows_of(Vp);
  std::vector<std::int32_t> targets = {0, 999, 5, 500, 123, 998, 700, 3};
  DeviceBuffer gt = dev(targets);
  // Rows of 1024 (8 logits a thread at a time; with 1001 real, one eight
  // part padding) and of 1004 (one at a time).
  struct Rows {
    int width, real;
    float dloss;
  };
  for (const Rows r :
       {Rows{Vp, V, 0.0f}, {Vp, V, 0.25f}, {Vp, 1001, 0.25f}, {1004, V, 0.0f}, {1004, V, 0.25f}}) {
    SCOPED_TRACE("rows of " + std::to_string(r.width) + ", " + std::to_string(r.real) +
                 " real, dloss " + std::to_string(r.dloss));
    auto x = rows_of(r.width);
    std::vector<float> losses(N);
    DeviceBuffer gx = dev(x), gl = buf(N * 4);
    cpu->crossentropy_forward_backward(x.data(), losses.data(), targets.data(), N, r.real, r.width,
                                       r.dloss);
    gpu->crossentropy_forward_backward(gx.as<float>(), gl.as<float>(), gt.as<std::int32_t>(), N,
                                       r.real, r.width, r.dloss);
    expect_close("losses", to_host<float>(gl), losses, 1e-5);
    expect_close("logits / gradient", to_host<float>(gx), x, 1e-5);
  }
  // The vocabulary-parallel steps on the columns [512, 1024) of the same
  // rows (V = 488 real columns there), the sums taken as the group would.
  const int v0 = 512, Vl = V - v0, Vpl = Vp - v0;
  std::vector<float> part(N * Vpl);
  for (int n = 0; n < N; ++n) {
    for (int j = 0; j < Vpl; ++j) part[n * Vpl + j] = logits[n * Vp + v0 + j];
  }
  std::vector<float> row_max(N), sums(2 * N), losses(N);
  DeviceBuffer gp = dev(part), gm = buf(N * 4), gs = buf(2 * N * 4), gl = buf(N * 4);
  cpu->crossentropy_part_max(row_max.data(), part.data(), N, Vl, Vpl);
  gpu->crossentropy_part_max(gm.as<float>(), gp.as<float>(), N, Vl, Vpl);
  expect_same_bits("row max", to_host<float>(gm), row_max);
  cpu->crossentropy_part_sums(part.data(), sums.data(), row_max.data(), targets.data(), v0, N, Vl,
                              Vpl, true);
  gpu->crossentropy_part_sums(gp.as<float>(), gs.as<float>(), gm.as<float>(), gt.as<std::int32_t>(),
                              v0, N, Vl, Vpl, true);
  expect_close("sums", to_host<float>(gs), sums, 1e-5);
  expect_close("exp in place", to_host<float>(gp), part, 1e-5);
  gs.upload(sums.data(), sums.size() * 4);
  gp.upload(part.data(), part.size() * 4);
  cpu->crossentropy_part_finish(part.data(), losses.data(), row_max.data(), sums.data(),
                                targets.data(), v0, N, Vl, Vpl, 0.5f);
  gpu->crossentropy_part_finish(gp.as<float>(), gl.as<float>(), gm.as<float>(), gs.as<float>(),
                                gt.as<std::int32_t>(), v0, N, Vl, Vpl, 0.5f);
  expect_close("part losses", to_host<float>(gl), losses, 1e-5);
  expect_close("part gradient", to_host<float>(gp), part, 1e-5);
}

TEST_P(CudaOps, OptimizerArithmetic) {
  const std::int64_t count = (1 << 17) + 12345;  // more than one block of the sum of squares
  auto p = rnd(count, 101), g = rnd(count, 102, 3.0), m = rnd(count, 103, 0.1),
       v = rnd(count, 104, 0.1);
  for (auto& x : v) x = x * x;
  DeviceBuffer gp = dev(p), gg = dev(g), gm = dev(m), gv = dev(v);
  const Backend<float>::AdamWUpdate u = adamw_update_at(2);
  cpu->adamw_update(p.data(), g.data(), m.data(), v.data(), count, u);
  gpu->adamw_update(gp.as<float>(), gg.as<float>(), gm.as<float>(), gv.as<float>(), count, u);
  expect_close("params", to_host<float>(gp), p, 1e-6);
  expect_close("m", to_host<float>(gm), m, 1e-6);
  expect_close("v", to_host<float>(gv), v, 1e-6);

  const double cs = cpu->sum_of_squares(g.data(), count);
  const double gs = gpu->sum_of_squares(gg.as<float>(), count);
  EXPECT_NEAR(gs, cs, 1e-12 * cs);
  EXPECT_EQ(gpu->sum_of_squares(gg.as<float>(), count), gs);

  cpu->scale(g.data(), 0.75f, count);
  gpu->scale(gg.as<float>(), 0.75f, count);
  expect_same_bits("scale", to_host<float>(gg), g);
  cpu->add(g.data(), p.data(), count);
  gpu->add(gg.as<float>(), gp.as<float>(), count);
  expect_close("add", to_host<float>(gg), g, 1e-6);
  gpu->copy(gm.as<float>(), gg.as<float>(), count);
  expect_same_bits("copy", to_host<float>(gm), to_host<float>(gg));
  gpu->fill(gm.as<float>(), 2.5f, count);
  expect_same_bits("fill", to_host<float>(gm), std::vector<float>(count, 2.5f));
}

// The elementwise ops take 8 elements at a time where all their arrays
// allow 16-byte accesses, and one at a time elsewhere: before the first
// element where they do (arrays that start mid-way through 16 bytes, as
// tensors in the flat buffers do), after the last run of 8, and everywhere
// where the arrays' alignments differ. The results are the same bits
// wherever the arrays start, and nothing outside them is written.
TEST_P(CudaOps, ElementwiseOpsAtAnyAlignment) {
  const Backend<float>::AdamWUpdate u = adamw_update_at(1);
  // x on the device between `offset` and 8 floats of NaN, and back without
  // them (which must still be NaN).
  constexpr int kAfter = 8;
  const auto at = [&](const std::vector<float>& x, int offset) {
    std::vector<float> padded(static_cast<std::size_t>(offset), NAN);
    padded.insert(padded.end(), x.begin(), x.end());
    padded.insert(padded.end(), kAfter, NAN);
    return dev(padded);
  };
  const auto back = [](const DeviceBuffer& b, int offset) {
    const auto host = to_host<float>(b);
    const std::size_t end = host.size() - kAfter;
    for (std::size_t i = 0; i < host.size(); ++i) {
      if (i < static_cast<std::size_t>(offset) || i >= end) {
        EXPECT_TRUE(std::isnan(host[i])) << "written outside the array, at " << i;
      }
    }
    return std::vector<float>(host.begin() + offset,
                              host.begin() + static_cast<std::ptrdiff_t>(end));
  };
  for (const std::int64_t count : {1, 7, 8, 13, 1029}) {
    // Offsets in floats of params, grads, m and v: the first are all
    // aligned, then all 4 or 12 bytes past (a head of 3 or 1), then each
    // its own (nothing in runs of 8).
    const std::array<std::array<int, 4>, 4> offsets{
        {{0, 0, 0, 0}, {1, 1, 1, 1}, {3, 3, 3, 3}, {0, 1, 2, 3}}};
    std::vector<std::vector<float>> aligned;
    for (const auto& off : offsets) {
      SCOPED_TRACE(testing::Message() << count << " elements at offsets " << off[0] << " " << off[1]
                                      << " " << off[2] << " " << off[3]);
      const auto n = static_cast<std::size_t>(count);
      auto p = rnd(n, 111), g = rnd(n, 112, 3.0), m = rnd(n, 113, 0.1), v = rnd(n, 114, 0.1);
      for (auto& x : v) x = x * x;
      DeviceBuffer gp = at(p, off[0]), gg = at(g, off[1]), gm = at(m, off[2]), gv = at(v, off[3]);
      float* dp = gp.as<float>() + off[0];
      float* dg = gg.as<float>() + off[1];
      float* dm = gm.as<float>() + off[2];
      float* dv = gv.as<float>() + off[3];
      cpu->adamw_update(p.data(), g.data(), m.data(), v.data(), count, u);
      gpu->adamw_update(dp, dg, dm, dv, count, u);
      cpu->scale(g.data(), 0.75f, count);
      gpu->scale(dg, 0.75f, count);
      cpu->add(g.data(), p.data(), count);
      gpu->add(dg, dp, count);
      gpu->fill(dv, 2.5f, count);
      const std::vector<std::vector<float>> results{back(gp, off[0]), back(gm, off[2]),
                                                    back(gg, off[1]), back(gv, off[3])};
      expect_close("params", results[0], p, 1e-6);
      expect_close("m", results[1], m, 1e-6);
      expect_close("scale and add", results[2], g, 1e-6);
      expect_same_bits("fill", results[3], std::vector<float>(n, 2.5f));
      if (aligned.empty()) {
        aligned = results;
      } else {
        for (std::size_t r = 0; r < results.size(); ++r) {
          expect_same_bits("as when aligned", results[r], aligned[r]);
        }
      }
    }
  }
}

// bf16 matmuls (Precision::kBf16): the GPU rounds both operands of each
// GEMM to bf16 and accumulates in fp32, so it must equal the CPU's fp32
// GEMM on operands rounded the same way, within the fp32 GEMM tolerance;
// the bias gradient sums the unrounded fp32 output gradient in the CPU's
// order, bit for bit.
class CudaBf16Ops : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    if (GetParam() == "emulated") {
      gpu = emulated::make_cuda_backend(0, Precision::kBf16);
      return;
    }
#ifdef BOREALIS_HAVE_CUDA_KERNELS
    BOREALIS_SKIP_WITHOUT_CUDA();
    gpu = make_cuda_backend(0, Precision::kBf16);
#endif
  }
  std::unique_ptr<Backend<float>> cpu = make_cpu_backend<float>();
  std::unique_ptr<Backend<float>> gpu;
};

// Round to the nearest bf16, ties to even (finite inputs).
float round_bf16(float x) {
  std::uint32_t u;
  std::memcpy(&u, &x, 4);
  const std::uint32_t low = u & 0xffffu;
  u &= 0xffff0000u;
  if (low > 0x8000u || (low == 0x8000u && (u & 0x10000u) != 0)) u += 0x10000u;
  float r;
  std::memcpy(&r, &u, 4);
  return r;
}

std::vector<float> rounded(std::vector<float> v) {
  for (float& x : v) x = round_bf16(x);
  return v;
}

TEST_P(CudaBf16Ops, MatmulRoundsOperandsToBf16) {
  const int N = 150, C = 96, OC = 80;
  const auto x = rnd(N * C, 1), w = rnd(OC * C, 2), b = rnd(OC, 3), r = rnd(N * OC, 4);
  const auto xr = rounded(x), wr = rounded(w), rr = rounded(r);
  DeviceBuffer gx = test::to_device(*gpu, x), gw = test::to_device(*gpu, w),
               gb = test::to_device(*gpu, b), gr = test::to_device(*gpu, r);
  std::vector<float> out(N * OC), exact(N * OC);
  DeviceBuffer gout(*gpu, out.size() * 4);
  cpu->matmul_forward(out.data(), xr.data(), wr.data(), b.data(), N, C, OC, false);
  cpu->matmul_forward(exact.data(), x.data(), w.data(), b.data(), N, C, OC, false);
  gpu->matmul_forward(gout.as<float>(), gx.as<float>(), gw.as<float>(), gb.as<float>(), N, C, OC,
                      false);
  const auto got = to_host<float>(gout);
  expect_close("forward (bf16 operands)", got, out, 1e-4);
  double off = 0;  // how far bf16 is from fp32: the rounding did happen
  for (std::size_t i = 0; i < got.size(); ++i)
    off = std::max(off, static_cast<double>(std::abs(got[i] - exact[i])));
  EXPECT_GT(off, 1e-3);

  std::vector<float> dx(N * C), dw(OC * C, 0.5f), db(OC, 0.25f), dw_unused(OC * C);
  DeviceBuffer gdx(*gpu, dx.size() * 4), gdw = test::to_device(*gpu, dw),
                                         gdb = test::to_device(*gpu, db);
  cpu->matmul_backward(dx.data(), dw.data(), nullptr, rr.data(), xr.data(), wr.data(), N, C, OC);
  cpu->matmul_backward(nullptr, dw_unused.data(), db.data(), r.data(), x.data(), w.data(), N, C,
                       OC);
  gpu->matmul_backward(gdx.as<float>(), gdw.as<float>(), gdb.as<float>(), gr.as<float>(),
                       gx.as<float>(), gw.as<float>(), N, C, OC);
  expect_close("dinp (bf16 operands)", to_host<float>(gdx), dx, 1e-4);
  expect_close("dw (bf16 operands, accumulated)", to_host<float>(gdw), dw, 1e-4);
  expect_same_bits("dbias (fp32, the CPU's order)", to_host<float>(gdb), db);
}

// bf16 matmul inputs (Bf16Inputs): each producer's bf16 output is the
// bits of its fp32 output rounded, and each matmul given its input in bf16
// gives the bits it gives for the fp32 input it rounds to that: shapes that
// run on cuBLASLt (C % 8 == 0 for the GELU gradient's aux) and ones that
// do not; accumulating and in place where the op allows it. The ops on the
// MLP's pre-activation in bf16 (the activations, their gradients) give the
// bits of their fp32 forms on the rounded pre-activation, rounded, with
// rows that take their 16-byte (8 values a thread) form and rows that do
// not.
TEST_P(CudaBf16Ops, Bf16InputsEqualRoundingLater) {
  Bf16Inputs<float>* h = gpu->bf16_inputs();
  ASSERT_NE(h, nullptr);
  const auto bits = [](const std::vector<float>& v) {
    std::vector<std::uint16_t> r;
    for (float x : v) r.push_back(float_to_bf16(x));
    return r;
  };
  // v's values rounded to bf16, in fp32.
  const auto rounded = [&](const std::vector<float>& v) {
    std::vector<float> r;
    for (const std::uint16_t b : bits(v)) r.push_back(bf16_to_float(b));
    return r;
  };
  const auto bf16_of = [](const DeviceBuffer& b) { return to_host<std::uint16_t>(b); };
  // A bf16 output against the fp32 output it rounds, where a GPU may compute
  // it otherwise (a GEMM's, for which cuBLASLt may pick another algorithm;
  // a kernel's products, which nvcc may contract otherwise): the same bits
  // on the emulator, within one bf16 rounding on a GPU.
  const auto expect_bf16_of = [&](const char* what, const DeviceBuffer& got16,
                                  const std::vector<float>& want) {
    if (GetParam() == "cuda") {
      std::vector<float> got;
      for (const std::uint16_t v : bf16_of(got16)) got.push_back(bf16_to_float(v));
      EXPECT_LE(test::relative_norm(got.data(), want.data(), static_cast<std::int64_t>(got.size())),
                8e-3)
          << what;
    } else {
      EXPECT_EQ(bf16_of(got16), bits(want)) << what;
    }
  };
  {
    const int N = 37, C = 72;
    const auto x = rnd(N * C, 91), w = rnd(C, 92), b = rnd(C, 93);
    DeviceBuffer gx = test::to_device(*gpu, x), gw = test::to_device(*gpu, w),
                 gb = test::to_device(*gpu, b);
    DeviceBuffer f(*gpu, N * C * 4), hb(*gpu, N * C * 2), m1(*gpu, N * 4), r1(*gpu, N * 4),
        m2(*gpu, N * 4), r2(*gpu, N * 4);
    gpu->layernorm_forward(f.as<float>(), m1.as<float>(), r1.as<float>(), gx.as<float>(),
                           gw.as<float>(), gb.as<float>(), N, C, 1e-5f);
    h->layernorm_forward(hb.as<std::uint16_t>(), m2.as<float>(), r2.as<float>(), gx.as<float>(),
                         gw.as<float>(), gb.as<float>(), N, C, 1e-5f);
    EXPECT_EQ(bf16_of(hb), bits(to_host<float>(f))) << "layernorm";
    expect_same_bits("layernorm mean", to_host<float>(m2), to_host<float>(m1));
    expect_same_bits("layernorm rstd", to_host<float>(r2), to_host<float>(r1));
    gpu->rmsnorm_forward(f.as<float>(), r1.as<float>(), gx.as<float>(), gw.as<float>(), N, C,
                         1e-6f);
    h->rmsnorm_forward(hb.as<std::uint16_t>(), r2.as<float>(), gx.as<float>(), gw.as<float>(), N, C,
                       1e-6f);
    EXPECT_EQ(bf16_of(hb), bits(to_host<float>(f))) << "rmsnorm";
    expect_same_bits("rmsnorm rstd", to_host<float>(r2), to_host<float>(r1));
    // The norms' backward keeping the residual gradient's bf16 form too:
    // dinp (accumulated onto) and the weight gradients the same bits, and
    // dinp16 dinp rounded.
    for (const bool layernorm : {true, false}) {
      SCOPED_TRACE(layernorm ? "layernorm_backward" : "rmsnorm_backward");
      const auto dy = rnd(N * C, 107), d0 = rnd(N * C, 108);
      DeviceBuffer gdy = test::to_device(*gpu, dy), da = test::to_device(*gpu, d0),
                   dc = test::to_device(*gpu, d0), d16(*gpu, N * C * 2), dwa(*gpu, C * 4),
                   dwc(*gpu, C * 4), dba(*gpu, C * 4), dbc(*gpu, C * 4);
      if (layernorm) {
        gpu->layernorm_backward(da.as<float>(), dwa.as<float>(), dba.as<float>(), gdy.as<float>(),
                                gx.as<float>(), gw.as<float>(), m1.as<float>(), r1.as<float>(), N,
                                C);
        h->layernorm_backward(dc.as<float>(), d16.as<std::uint16_t>(), dwc.as<float>(),
                              dbc.as<float>(), gdy.as<float>(), gx.as<float>(), gw.as<float>(),
                              m1.as<float>(), r1.as<float>(), N, C);
      } else {
        gpu->rmsnorm_backward(da.as<float>(), dwa.as<float>(), gdy.as<float>(), gx.as<float>(),
                              gw.as<float>(), r1.as<float>(), N, C);
        h->rmsnorm_backward(dc.as<float>(), d16.as<std::uint16_t>(), dwc.as<float>(),
                            gdy.as<float>(), gx.as<float>(), gw.as<float>(), r1.as<float>(), N, C);
      }
      const auto dinp = to_host<float>(da);
      expect_same_bits("dinp", to_host<float>(dc), dinp);
      EXPECT_EQ(bf16_of(d16), bits(dinp)) << "dinp16";
      expect_same_bits("dw", to_host<float>(dwc), to_host<float>(dwa));
      expect_same_bits("db", to_host<float>(dbc), to_host<float>(dba));
    }
  }
  // The activations on the pre-activation in bf16: rows of 72 values go 8 a
  // thread (16-byte accesses), rows of 36 a value a thread; the same bits.
  for (const int C : {72, 36}) {
    SCOPED_TRACE("rows of " + std::to_string(C));
    const int N = 37;
    const auto x = rnd(N * C, 91), gu = rnd(N * 2 * C, 94), dout = rnd(N * C, 104);
    DeviceBuffer gxr = test::to_device(*gpu, rounded(x)), gxh = test::to_device(*gpu, bits(x)),
                 ggu = test::to_device(*gpu, rounded(gu)), gguh = test::to_device(*gpu, bits(gu)),
                 gd = test::to_device(*gpu, dout), f(*gpu, N * C * 4), hb(*gpu, N * C * 2),
                 df(*gpu, N * 2 * C * 4), dh(*gpu, N * 2 * C * 2);
    gpu->gelu_forward(f.as<float>(), gxr.as<float>(), N * C);
    h->gelu_forward(hb.as<std::uint16_t>(), gxh.as<std::uint16_t>(), N * C);
    EXPECT_EQ(bf16_of(hb), bits(to_host<float>(f))) << "gelu";
    gpu->swiglu_forward(f.as<float>(), ggu.as<float>(), N, C);
    h->swiglu_forward(hb.as<std::uint16_t>(), gguh.as<std::uint16_t>(), N, C);
    EXPECT_EQ(bf16_of(hb), bits(to_host<float>(f))) << "swiglu";
    gpu->swiglu_backward(df.as<float>(), ggu.as<float>(), gd.as<float>(), N, C);
    h->swiglu_backward(dh.as<std::uint16_t>(), gguh.as<std::uint16_t>(), gd.as<float>(), N, C);
    EXPECT_EQ(bf16_of(dh), bits(to_host<float>(df))) << "swiglu_backward";
  }
  for (const bool forward : {true, false}) {
    // RoPE into bf16, forward (qkv for attention) and backward (dqkv for the
    // qkv GEMMs): the rotated q and k heads and the v heads, rounded; the
    // input itself left as it was.
    const int B = 2, seq = 24, NH = 4, NKV = 2, HD = 16, S = (NH + 2 * NKV) * HD;
    SCOPED_TRACE(forward ? "rope_forward" : "rope_backward");
    const auto x = rnd(B * seq * S, forward ? 106 : 105);
    DeviceBuffer a = test::to_device(*gpu, x), c = test::to_device(*gpu, x),
                 out(*gpu, B * seq * S * 2);
    if (forward) {
      gpu->rope_forward(a.as<float>(), B, seq, NH, NKV, HD, 10000.0f);
      h->rope_forward(out.as<std::uint16_t>(), c.as<float>(), B, seq, NH, NKV, HD, 10000.0f);
    } else {
      gpu->rope_backward(a.as<float>(), B, seq, NH, NKV, HD, 10000.0f);
      h->rope_backward(out.as<std::uint16_t>(), c.as<float>(), B, seq, NH, NKV, HD, 10000.0f);
    }
    EXPECT_EQ(bf16_of(out), bits(to_host<float>(a)));
    expect_same_bits("input kept", to_host<float>(c), x);
  }
  // Attention writes its output both ways: on tensor cores (head dimension
  // 64) and with the warp-per-row kernels (160).
  for (const int HD : {64, 160}) {
    const int B = 2, seq = 40, NH = 4, NKV = 2, C = NH * HD, S = (NH + 2 * NKV) * HD;
    DeviceBuffer gqkv = test::to_device(*gpu, rnd(B * seq * S, 103 + HD));
    DeviceBuffer a(*gpu, B * seq * C * 4), c(*gpu, B * seq * C * 4), hb(*gpu, B * seq * C * 2),
        la(*gpu, B * NH * seq * 4), lc(*gpu, B * NH * seq * 4);
    gpu->attention_forward(a.as<float>(), la.as<float>(), gqkv.as<float>(), B, seq, NH, NKV, HD);
    h->attention_forward(c.as<float>(), hb.as<std::uint16_t>(), lc.as<float>(), gqkv.as<float>(), B,
                         seq, NH, NKV, HD);
    SCOPED_TRACE("attention, head dimension " + std::to_string(HD));
    expect_same_bits("output", to_host<float>(c), to_host<float>(a));
    expect_same_bits("log-sum-exp", to_host<float>(lc), to_host<float>(la));
    EXPECT_EQ(bf16_of(hb), bits(to_host<float>(a)));
  }
  // Attention reading qkv in bf16 (the tensor-core kernels, head dimensions
  // up to 128: 64, 128 and 40): the same bits forward and backward as from
  // the fp32 qkv it rounds, which those kernels round as they read it.
  for (const int HD : {64, 128, 40, 160}) {
    const int B = 2, seq = 40, NH = 4, NKV = 2, C = NH * HD, S = (NH + 2 * NKV) * HD;
    SCOPED_TRACE("attention from bf16 qkv, head dimension " + std::to_string(HD));
    const auto qkv = rnd(B * seq * S, 107 + HD);
    DeviceBuffer gqkv = test::to_device(*gpu, qkv), hqkv = test::to_device(*gpu, bits(qkv));
    DeviceBuffer a(*gpu, B * seq * C * 4), c(*gpu, B * seq * C * 4), ha(*gpu, B * seq * C * 2),
        hc(*gpu, B * seq * C * 2), la(*gpu, B * NH * seq * 4), lc(*gpu, B * NH * seq * 4);
    const std::uint16_t* q16 = hqkv.as<std::uint16_t>();
    if (HD > 128) {
      EXPECT_FALSE(h->attention_reads_bf16_qkv(B, NH, NKV, HD));
      EXPECT_THROW(h->attention_forward(c.as<float>(), hc.as<std::uint16_t>(), lc.as<float>(), q16,
                                        B, seq, NH, NKV, HD),
                   std::logic_error);
      continue;
    }
    EXPECT_TRUE(h->attention_reads_bf16_qkv(B, NH, NKV, HD));
    h->attention_forward(a.as<float>(), ha.as<std::uint16_t>(), la.as<float>(), gqkv.as<float>(), B,
                         seq, NH, NKV, HD);
    h->attention_forward(c.as<float>(), hc.as<std::uint16_t>(), lc.as<float>(), q16, B, seq, NH,
                         NKV, HD);
    expect_same_bits("output", to_host<float>(c), to_host<float>(a));
    expect_same_bits("log-sum-exp", to_host<float>(lc), to_host<float>(la));
    EXPECT_EQ(bf16_of(hc), bf16_of(ha));
    // The output in bf16 only.
    DeviceBuffer h2(*gpu, B * seq * C * 2), l2(*gpu, B * NH * seq * 4);
    h->attention_forward(nullptr, h2.as<std::uint16_t>(), l2.as<float>(), q16, B, seq, NH, NKV, HD);
    EXPECT_EQ(bf16_of(h2), bf16_of(ha)) << "output in bf16 only";
    expect_same_bits("log-sum-exp, output in bf16 only", to_host<float>(l2), to_host<float>(la));
    // Backward from the output and its gradient in bf16 (the fp32 forms
    // rounded): the fp32 backward's bits, which reads them rounded; and the
    // qkv gradient into bf16 as well (GPT-2's qkv GEMMs read it so).
    const auto dout = rnd(B * seq * C, 108 + HD);
    DeviceBuffer gd = test::to_device(*gpu, dout), gdh = test::to_device(*gpu, bits(dout));
    DeviceBuffer da(*gpu, B * seq * S * 4), dc(*gpu, B * seq * S * 4), dh(*gpu, B * seq * S * 2);
    gpu->attention_backward(da.as<float>(), gd.as<float>(), gqkv.as<float>(), a.as<float>(),
                            la.as<float>(), B, seq, NH, NKV, HD);
    h->attention_backward(dc.as<float>(), gdh.as<std::uint16_t>(), q16, ha.as<std::uint16_t>(),
                          la.as<float>(), B, seq, NH, NKV, HD);
    expect_same_bits("qkv gradient", to_host<float>(dc), to_host<float>(da));
    h->attention_backward(dh.as<std::uint16_t>(), gdh.as<std::uint16_t>(), q16,
                          ha.as<std::uint16_t>(), la.as<float>(), B, seq, NH, NKV, HD);
    EXPECT_EQ(bf16_of(dh), bits(to_host<float>(da))) << "qkv gradient in bf16";
    // Llama's, with RoPE's backward: the fp32 gradient rotated by
    // rope_backward, rounded. Head dimensions of the kernels' own size (64,
    // 128) rotate in the kernels' stores, with no RoPE launch; others (40)
    // run the two ops.
    DeviceBuffer got(*gpu, B * seq * S * 2);
    const std::uint64_t ropes = cuda_emulator::launches("rope");
    h->attention_rope_backward(got.as<std::uint16_t>(), gdh.as<std::uint16_t>(), q16,
                               ha.as<std::uint16_t>(), la.as<float>(), B, seq, NH, NKV, HD,
                               10000.0f);
    if (GetParam() == "emulated") {
      EXPECT_EQ(cuda_emulator::launches("rope") - ropes, HD == 40 ? 1u : 0u);
    }
    gpu->rope_backward(da.as<float>(), B, seq, NH, NKV, HD, 10000.0f);
    expect_bf16_of("qkv gradient with RoPE's, in bf16", got, to_host<float>(da));
  }
  for (const auto& [N, C, OC] : {std::tuple{70, 48, 40}, {45, 36, 20}}) {
    SCOPED_TRACE("N " + std::to_string(N) + ", C " + std::to_string(C) + ", OC " +
                 std::to_string(OC));
    const auto x = rnd(N * C, 95), w = rnd(OC * C, 96), b = rnd(OC, 97), r = rnd(N * OC, 98),
               pre = rnd(N * C, 99), dw0 = rnd(OC * C, 100), db0 = rnd(OC, 101);
    DeviceBuffer gx = test::to_device(*gpu, x), gxh = test::to_device(*gpu, bits(x)),
                 gw = test::to_device(*gpu, w), gb = test::to_device(*gpu, b),
                 gr = test::to_device(*gpu, r), gprer = test::to_device(*gpu, rounded(pre)),
                 gpreh = test::to_device(*gpu, bits(pre));
    const std::uint16_t* xh = gxh.as<std::uint16_t>();
    // Forward: with and without a bias, accumulating into r; the residual
    // form apart and in place.
    for (const bool accumulate : {false, true}) {
      for (const float* bias : {static_cast<const float*>(nullptr), gb.as<const float>()}) {
        DeviceBuffer a = test::to_device(*gpu, r), c = test::to_device(*gpu, r);
        gpu->matmul_forward(a.as<float>(), gx.as<float>(), gw.as<float>(), bias, N, C, OC,
                            accumulate);
        h->matmul_forward(c.as<float>(), xh, gw.as<float>(), bias, N, C, OC, accumulate);
        expect_same_bits("matmul_forward", to_host<float>(c), to_host<float>(a));
      }
    }
    // Forward into bf16 (GPT-2's qkv): the fp32 product rounded, with the
    // bias in cuBLASLt's epilogue (or with the fallback path's rounding
    // pass). On a GPU, cuBLASLt may pick another algorithm for a bf16
    // output: within one bf16 rounding there.
    for (const float* bias : {static_cast<const float*>(nullptr), gb.as<const float>()}) {
      DeviceBuffer a(*gpu, N * OC * 4), c(*gpu, N * OC * 2);
      gpu->matmul_forward(a.as<float>(), gx.as<float>(), gw.as<float>(), bias, N, C, OC, false);
      h->matmul_forward(c.as<std::uint16_t>(), xh, gw.as<float>(), bias, N, C, OC);
      expect_bf16_of("matmul_forward into bf16", c, to_host<float>(a));
    }
    for (const bool in_place : {false, true}) {
      DeviceBuffer a = test::to_device(*gpu, r), c = test::to_device(*gpu, r);
      DeviceBuffer ao(*gpu, N * OC * 4), co(*gpu, N * OC * 4);
      float* out_a = in_place ? a.as<float>() : ao.as<float>();
      float* out_c = in_place ? c.as<float>() : co.as<float>();
      gpu->matmul_residual_forward(out_a, a.as<float>(), gx.as<float>(), gw.as<float>(),
                                   gb.as<float>(), N, C, OC);
      h->matmul_residual_forward(out_c, c.as<float>(), xh, gw.as<float>(), gb.as<float>(), N, C,
                                 OC);
      expect_same_bits("matmul_residual_forward", to_host<float>(in_place ? c : co),
                       to_host<float>(in_place ? a : ao));
    }
    // Backward: the gradients accumulate onto dw0 and db0; the weight
    // gradient is the same with GELU's gradient in the input's GEMM, which
    // reads the pre-activation in bf16 and writes the input gradient so.
    // And the input gradient into bf16 (the attention output's). Each with
    // the output gradient in fp32 and with its bf16 form as well (the
    // residual stream's, as the norms' backward leave it): the same bits,
    // the GEMMs reading the bf16 form instead of rounding (on the emulator,
    // which counts launches, one rounding pass fewer: the weights' is left).
    DeviceBuffer grh = test::to_device(*gpu, bits(r));
    for (const bool both : {false, true}) {
      SCOPED_TRACE(both ? "output gradient in fp32 and bf16" : "output gradient in fp32");
      const std::uint16_t* gr16 = both ? grh.as<std::uint16_t>() : nullptr;
      const auto expect_roundings = [&](auto&& run) {
        const std::uint64_t before = cuda_emulator::launches("bf16 copy");
        run();
        if (GetParam() == "emulated") {
          EXPECT_EQ(cuda_emulator::launches("bf16 copy") - before, both ? 1u : 2u);
        }
      };
      std::vector<float> dw_plain;
      {
        DeviceBuffer da(*gpu, N * C * 4), dch(*gpu, N * C * 2);
        DeviceBuffer dwa = test::to_device(*gpu, dw0), dwc = test::to_device(*gpu, dw0);
        DeviceBuffer dba = test::to_device(*gpu, db0), dbc = test::to_device(*gpu, db0);
        gpu->matmul_backward(da.as<float>(), dwa.as<float>(), dba.as<float>(), gr.as<float>(),
                             gx.as<float>(), gw.as<float>(), N, C, OC);
        expect_roundings([&] {
          h->matmul_backward(dch.as<std::uint16_t>(), dwc.as<float>(), dbc.as<float>(),
                             gr.as<float>(), gr16, xh, gw.as<float>(), N, C, OC);
        });
        SCOPED_TRACE("matmul_backward, input gradient in bf16");
        expect_bf16_of("input gradient", dch, to_host<float>(da));
        expect_same_bits("weight gradient", to_host<float>(dwc), to_host<float>(dwa));
        expect_same_bits("bias gradient", to_host<float>(dbc), to_host<float>(dba));
      }
      for (const bool gelu : {false, true}) {
        DeviceBuffer da(*gpu, N * C * 4), dc(*gpu, N * C * 4), dch(*gpu, N * C * 2);
        DeviceBuffer dwa = test::to_device(*gpu, dw0), dwc = test::to_device(*gpu, dw0);
        DeviceBuffer dba = test::to_device(*gpu, db0), dbc = test::to_device(*gpu, db0);
        if (gelu) {
          gpu->matmul_backward_gelu(da.as<float>(), dwa.as<float>(), dba.as<float>(),
                                    gr.as<float>(), gx.as<float>(), gw.as<float>(),
                                    gprer.as<float>(), N, C, OC);
          const std::uint64_t lt_before = cuda_emulator::lt_matmuls();
          expect_roundings([&] {
            h->matmul_backward_gelu(dch.as<std::uint16_t>(), dwc.as<float>(), dbc.as<float>(),
                                    gr.as<float>(), gr16, xh, gw.as<float>(),
                                    gpreh.as<std::uint16_t>(), N, C, OC);
          });
          // The DGELU epilogue with a bf16 output and aux where C % 8 == 0.
          if (GetParam() == "emulated") {
            EXPECT_EQ(cuda_emulator::lt_matmuls() - lt_before, C % 8 == 0 ? 1u : 0u);
          }
        } else {
          gpu->matmul_backward(da.as<float>(), dwa.as<float>(), dba.as<float>(), gr.as<float>(),
                               gx.as<float>(), gw.as<float>(), N, C, OC);
          expect_roundings([&] {
            h->matmul_backward(dc.as<float>(), dwc.as<float>(), dbc.as<float>(), gr.as<float>(),
                               gr16, xh, gw.as<float>(), N, C, OC);
          });
        }
        const char* what = gelu ? "matmul_backward_gelu" : "matmul_backward";
        SCOPED_TRACE(what);
        if (gelu) {
          expect_bf16_of("input gradient", dch, to_host<float>(da));
        } else {
          expect_same_bits("input gradient", to_host<float>(dc), to_host<float>(da));
        }
        expect_same_bits("weight gradient", to_host<float>(dwc), to_host<float>(dwa));
        expect_same_bits("bias gradient", to_host<float>(dbc), to_host<float>(dba));
        if (gelu) {
          expect_same_bits("weight gradient, with GELU and without", to_host<float>(dwa), dw_plain);
        } else {
          dw_plain = to_host<float>(dwa);
        }
      }
    }
    // The output gradient in bf16 only: the lm head's (no bias) and the MLP
    // up-projection's (its bias gradient sums the rounded values in fp32).
    DeviceBuffer grr = test::to_device(*gpu, rounded(r));
    for (const bool bias : {false, true}) {
      SCOPED_TRACE(bias ? "output gradient in bf16, with a bias" : "output gradient in bf16");
      DeviceBuffer da(*gpu, N * C * 4), dc(*gpu, N * C * 4);
      DeviceBuffer dwa = test::to_device(*gpu, dw0), dwc = test::to_device(*gpu, dw0);
      DeviceBuffer dba = test::to_device(*gpu, db0), dbc = test::to_device(*gpu, db0);
      gpu->matmul_backward(da.as<float>(), dwa.as<float>(), bias ? dba.as<float>() : nullptr,
                           grr.as<float>(), gx.as<float>(), gw.as<float>(), N, C, OC);
      h->matmul_backward(dc.as<float>(), dwc.as<float>(), bias ? dbc.as<float>() : nullptr, nullptr,
                         grh.as<std::uint16_t>(), xh, gw.as<float>(), N, C, OC);
      expect_same_bits("input gradient", to_host<float>(dc), to_host<float>(da));
      expect_same_bits("weight gradient", to_host<float>(dwc), to_host<float>(dwa));
      expect_same_bits("bias gradient", to_host<float>(dbc), to_host<float>(dba));
    }
  }
  // The loss from bf16 logits, its gradient in bf16 over them: on the
  // rounded logits, the fp32 op's losses (their bits) and its gradient
  // rounded; with dloss = 0, the losses and the logits left as they are.
  // Rows of 320 (8 logits a thread at a time) and of 306 (one).
  const int N = 29, V = 300;
  std::vector<std::int32_t> targets;
  for (int n = 0; n < N; ++n) targets.push_back((n * 37) % V);
  targets[3] = V - 1;
  DeviceBuffer gt = test::to_device(*gpu, targets);
  for (const auto& [Vp, dloss] : {std::pair{320, 0.5f}, {320, 0.0f}, {306, 0.5f}, {306, 0.0f}}) {
    SCOPED_TRACE("rows of " + std::to_string(Vp) + ", dloss " + std::to_string(dloss));
    const std::vector<std::uint16_t> logits16 = bits(rnd(N * Vp, 102, 4.0));
    std::vector<float> logits;
    for (const std::uint16_t v : logits16) logits.push_back(bf16_to_float(v));
    DeviceBuffer a = test::to_device(*gpu, logits), c = test::to_device(*gpu, logits16),
                 la(*gpu, N * 4), lc(*gpu, N * 4);
    gpu->crossentropy_forward_backward(a.as<float>(), la.as<float>(), gt.as<std::int32_t>(), N, V,
                                       Vp, dloss);
    h->crossentropy_forward_backward(c.as<std::uint16_t>(), lc.as<float>(), gt.as<std::int32_t>(),
                                     N, V, Vp, dloss);
    expect_same_bits("losses", to_host<float>(lc), to_host<float>(la));
    EXPECT_EQ(bf16_of(c), dloss != 0.0f ? bits(to_host<float>(a)) : logits16) << "logits' gradient";
  }
}

// ||a - b|| / ||b||.
double relative_error(const std::vector<float>& a, const std::vector<float>& b) {
  return test::relative_norm(a.data(), b.data(), static_cast<std::int64_t>(b.size()));
}

// The weights from their bf16 copy (Bf16Inputs::use_weight_copy): the
// matmuls give the bits they give rounding the weights themselves (GEMMs
// and cuBLASLt's, forward and backward, weights at offsets into the
// buffer), they read the copy, not the weights (changed afterwards, the
// results stay), an operand reaching past the buffer's end is rounded
// itself, and once stopped the weights are read again.
TEST_P(CudaBf16Ops, WeightsFromTheirBf16Copy) {
  Bf16Inputs<float>* h = gpu->bf16_inputs();
  ASSERT_NE(h, nullptr);
  const int N = 24, C = 32, OC = 40, at = 12;  // the second weight at an offset of 12 floats
  const std::int64_t P = at + std::int64_t{OC} * C;
  const auto params = rnd(P, 301), x = rnd(N * C, 302), b = rnd(OC, 303), dy = rnd(N * OC, 304);
  DeviceBuffer gp = test::to_device(*gpu, params), gx = test::to_device(*gpu, x),
               gb = test::to_device(*gpu, b), gdy = test::to_device(*gpu, dy), copy(*gpu, P * 2),
               y(*gpu, N * OC * 4), y16(*gpu, N * OC * 2), dx(*gpu, N * C * 4),
               dx16(*gpu, N * C * 2), dw(*gpu, OC * C * 4);
  const std::vector<std::uint16_t> x16 = [&] {
    std::vector<std::uint16_t> r;
    for (const float v : x) r.push_back(float_to_bf16(v));
    return r;
  }();
  DeviceBuffer gx16 = test::to_device(*gpu, x16);
  // Each matmul on the weight at `w` (floats into the buffer), results in a
  // row: forward without a bias (a GEMM) and with one (cuBLASLt), the bf16
  // output, backward's input and weight gradients, and the bf16 input
  // gradient.
  const auto run = [&](std::int64_t w) {
    const float* wp = gp.as<float>() + w;
    std::vector<float> r;
    const auto add = [&](const std::vector<float>& v) { r.insert(r.end(), v.begin(), v.end()); };
    gpu->matmul_forward(y.as<float>(), gx.as<float>(), wp, nullptr, N, C, OC, false);
    add(to_host<float>(y));
    gpu->matmul_forward(y.as<float>(), gx.as<float>(), wp, gb.as<float>(), N, C, OC, false);
    add(to_host<float>(y));
    h->matmul_forward(y16.as<std::uint16_t>(), gx16.as<std::uint16_t>(), wp, gb.as<float>(), N, C,
                      OC);
    for (const std::uint16_t v : to_host<std::uint16_t>(y16)) r.push_back(bf16_to_float(v));
    gpu->fill(dw.as<float>(), 0.0f, OC * C);
    gpu->matmul_backward(dx.as<float>(), dw.as<float>(), nullptr, gdy.as<float>(), gx.as<float>(),
                         wp, N, C, OC);
    add(to_host<float>(dx));
    add(to_host<float>(dw));
    h->matmul_backward(dx16.as<std::uint16_t>(), dw.as<float>(), nullptr, gdy.as<float>(), nullptr,
                       gx16.as<std::uint16_t>(), wp, N, C, OC);
    for (const std::uint16_t v : to_host<std::uint16_t>(dx16)) r.push_back(bf16_to_float(v));
    return r;
  };
  // The same bits on the emulator; on a GPU cuBLAS may pick another
  // algorithm for operands aligned otherwise.
  const auto expect_same = [&](const char* what, const std::vector<float>& got,
                               const std::vector<float>& want) {
    if (GetParam() == "cuda") {
      expect_close(what, got, want, 1e-5);
    } else {
      expect_same_bits(what, got, want);
    }
  };
  for (const std::int64_t w : {std::int64_t{0}, std::int64_t{at}}) {
    SCOPED_TRACE("the weight at " + std::to_string(w));
    const auto before = run(w);
    h->use_weight_copy(gp.as<float>(), copy.as<std::uint16_t>(), P, true);
    expect_same("from the copy", run(w), before);
    // The weights changed: the copy, still in use, is what the matmuls read.
    gp.upload(rnd(P, 305).data(), P * 4);
    expect_same("from the copy, the weights changed since", run(w), before);
    h->use_weight_copy(nullptr, nullptr, 0, false);
    const auto changed = run(w);
    EXPECT_NE(changed, before);
    // A copy of less than the whole weight: its rounding in the matmul.
    h->use_weight_copy(gp.as<float>(), copy.as<std::uint16_t>(), w + std::int64_t{OC} * C - 1,
                       true);
    expect_same("reaching past the copy", run(w), changed);
    h->use_weight_copy(nullptr, nullptr, 0, false);
    gp.upload(params.data(), P * 4);
  }
  EXPECT_THROW(h->use_weight_copy(gp.as<float>(), nullptr, P, true), std::invalid_argument);
}

// Attention on tensor cores (bf16 q, k, v, output gradient and
// probabilities; fp32 scores, statistics and sums) against the CPU's fp32,
// over several of its tiles (64 query rows, 32 keys; 64 or 32 key rows, 32
// queries) with head dimensions for both instantiations (up to 64: 64, 40,
// zero-padded to 48, 16, and 36, staged a value at a time, not 8; up to
// 128: 128 and 96): the
// output and every gradient within 1e-2 relative in norm (measured on the
// emulator: 2e-3 and up to 3.5e-3), the log-sum-exp within 1e-2, and the
// same bits twice.
TEST_P(CudaBf16Ops, AttentionOnTensorCores) {
  for (const int HD : {64, 40, 16, 36, 128, 96}) {
    SCOPED_TRACE("head dimension " + std::to_string(HD));
    const int B = 2, seq = 90, NH = 6, NKV = 2;
    const int S = (NH + 2 * NKV) * HD, C = NH * HD;
    const auto qkv = rnd(B * seq * S, 81 + HD), dout = rnd(B * seq * C, 82 + HD);
    std::vector<float> out(B * seq * C), lse(B * NH * seq), dqkv(qkv.size());
    DeviceBuffer gqkv = test::to_device(*gpu, qkv), gd = test::to_device(*gpu, dout),
                 gout(*gpu, out.size() * 4), glse(*gpu, lse.size() * 4),
                 gdqkv(*gpu, dqkv.size() * 4);
    cpu->attention_forward(out.data(), lse.data(), qkv.data(), B, seq, NH, NKV, HD);
    gpu->attention_forward(gout.as<float>(), glse.as<float>(), gqkv.as<float>(), B, seq, NH, NKV,
                           HD);
    const double out_error = relative_error(to_host<float>(gout), out);
    EXPECT_LE(out_error, 1e-2);
    EXPECT_GT(out_error, 1e-5) << "no bf16 rounding: not the tensor-core kernels";
    expect_close("lse", to_host<float>(glse), lse, 1e-2);
    cpu->attention_backward(dqkv.data(), dout.data(), qkv.data(), out.data(), lse.data(), B, seq,
                            NH, NKV, HD);
    gpu->attention_backward(gdqkv.as<float>(), gd.as<float>(), gqkv.as<float>(), gout.as<float>(),
                            glse.as<float>(), B, seq, NH, NKV, HD);
    const auto first = to_host<float>(gdqkv);
    // q, k and v parts of every row separately.
    for (const auto& [name, col0, width] :
         {std::tuple{"dq", 0, C}, {"dk", C, NKV * HD}, {"dv", C + NKV * HD, NKV * HD}}) {
      std::vector<float> a, b;
      for (int n = 0; n < B * seq; ++n) {
        for (int c = col0; c < col0 + width; ++c) {
          a.push_back(first[static_cast<std::size_t>(n) * S + c]);
          b.push_back(dqkv[static_cast<std::size_t>(n) * S + c]);
        }
      }
      const double error = relative_error(a, b);
      EXPECT_LE(error, 1e-2) << name;
      std::printf("[ measured ] head dimension %d: output %.2e, %s %.2e relative to fp32\n", HD,
                  out_error, name, error);
    }
    gpu->attention_backward(gdqkv.as<float>(), gd.as<float>(), gqkv.as<float>(), gout.as<float>(),
                            glse.as<float>(), B, seq, NH, NKV, HD);
    expect_same_bits("dqkv, twice", to_host<float>(gdqkv), first);
  }
}

INSTANTIATE_TEST_SUITE_P(Backends, CudaBf16Ops,
                         ::testing::ValuesIn(test::gpu_backends_under_test()),
                         [](const auto& param_info) { return param_info.param; });

void expect_head_dim_limit(Backend<float>& gpu) {
  DeviceBuffer b(gpu, 4);
  EXPECT_THROW(gpu.attention_forward(b.as<float>(), b.as<float>(), b.as<float>(), 1, 1, 1, 1, 512),
               std::invalid_argument);
}

#ifdef BOREALIS_HAVE_CUDA_KERNELS
TEST(CudaLimits, HeadDimensionOverTheLimitIsAnError) {
  BOREALIS_SKIP_WITHOUT_CUDA();
  expect_head_dim_limit(*make_cuda_backend());
}
#endif

TEST(EmulatedCudaLimits, HeadDimensionOverTheLimitIsAnError) {
  expect_head_dim_limit(*emulated::make_cuda_backend());
}

std::vector<std::string> backends_under_test() {
  std::vector<std::string> names = test::gpu_backends_under_test();
  names.push_back("guarded");
  return names;
}

INSTANTIATE_TEST_SUITE_P(Backends, CudaOps, ::testing::ValuesIn(backends_under_test()),
                         [](const auto& param_info) { return param_info.param; });

}  // namespace
}  // namespace borealis
