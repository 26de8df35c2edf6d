// The inference matmul (Backend::matmul_forward_rowwise: every output row
// the same bits whatever rows share the call) at a model's shapes: GFLOP/s
// of the kernel this build uses, against the 256-bit kernel it replaces
// where AVX-512 is present (matmul_forward_rowwise_portable, the same bits)
// and OpenBLAS sgemm (not row-invariant) in the same run.
//
//   rowwise_bench [--model gpt2-124m] [--rows 1,8,32] [--threads N] [--repeats 5]
//
// Each figure is the best of --repeats calls after one warm-up call, on
// random inputs; the weights of a shape (up to 154 MB for gpt2-124m's
// output layer) are larger than the caches, as in serving.
#include <fmt/format.h>
#include <omp.h>

#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "bench_util.h"
#include "kernels/cpu/ops.h"
#include "model/config.h"

namespace borealis {
namespace {

struct Shape {
  std::string name;
  int C, OC;
};

int main_impl(int argc, char** argv) {
  std::string preset = "gpt2-124m";
  std::vector<int> rows = {1, 8, 32};
  int threads = 0, repeats = 5;
  for (int i = 1; i < argc; ++i) {
    const std::string flag = argv[i];
    if (flag == "--help" || flag == "-h") {
      std::printf(
          "usage: rowwise_bench [--model PRESET] [--rows 1,8,32] [--threads N] [--repeats 5]\n");
      return 0;
    }
    if (i + 1 >= argc) throw Error("missing value", flag);
    const char* value = argv[++i];
    if (flag == "--model") {
      preset = value;
    } else if (flag == "--rows") {
      rows = bench::parse_int_list(flag, value);
    } else if (flag == "--threads") {
      threads = bench::parse_positive_int(flag, value);
    } else if (flag == "--repeats") {
      repeats = bench::parse_positive_int(flag, value);
    } else {
      throw Error("unknown flag (see --help)", flag);
    }
  }
  if (threads > 0) omp_set_num_threads(threads);
  const ModelConfig c = model_preset(preset);
  const int C = c.d_model;
  const std::vector<Shape> shapes = {{"attn.qkv", C, c.qkv_width()},
                                     {"attn.proj", C, C},
                                     {"mlp.fc", C, c.fc_width()},
                                     {"mlp.proj", c.d_ff, C},
                                     {"lm_head", C, c.padded_vocab}};
  std::printf("%s, %d threads, best of %d; GFLOP/s\n", preset.c_str(), omp_get_max_threads(),
              repeats);
  std::printf("%-10s %5s %12s %12s %8s %12s %8s %s\n", "shape", "rows", "rowwise", "256-bit",
              "ratio", "sgemm", "ratio", "bits");
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  for (const Shape& s : shapes) {
    std::vector<float> w(static_cast<std::size_t>(s.OC) * s.C);
    for (float& x : w) x = u(rng);
    for (int n : rows) {
      std::vector<float> x(static_cast<std::size_t>(n) * s.C),
          a(static_cast<std::size_t>(n) * s.OC), b(a.size());
      for (float& v : x) v = u(rng);
      const auto best = [&](auto&& call) {
        call();
        double t = 1e30;
        for (int r = 0; r < repeats; ++r) {
          const auto t0 = bench::Clock::now();
          call();
          t = std::min(t, bench::seconds_since(t0));
        }
        return 2.0 * n * s.C * s.OC / t / 1e9;
      };
      const double fast = best([&] {
        cpu::matmul_forward_rowwise<float>(a.data(), x.data(), w.data(), nullptr, n, s.C, s.OC,
                                           false);
      });
      const double portable = best([&] {
        cpu::matmul_forward_rowwise_portable<float>(b.data(), x.data(), w.data(), nullptr, n, s.C,
                                                    s.OC, false);
      });
      const bool same = std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
      const double blas = best([&] {
        cpu::gemm<float>(false, true, n, s.OC, s.C, 1.0f, x.data(), s.C, w.data(), s.C, 0.0f,
                         b.data(), s.OC);
      });
      std::printf("%-10s %5d %12.1f %12.1f %7.2fx %12.1f %7.2fx %s\n", s.name.c_str(), n, fast,
                  portable, fast / portable, blas, fast / blas, same ? "same" : "DIFFERENT");
    }
  }
  return 0;
}

}  // namespace
}  // namespace borealis

int main(int argc, char** argv) {
  return borealis::bench::main_with_errors([&] { return borealis::main_impl(argc, argv); });
}
