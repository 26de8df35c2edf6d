// Tensor-parallel parts in one process: the layout's parts tile each whole
// tensor, and the vocabulary-parallel ops, combined over parts as a group
// would combine them, give the whole-vocabulary ops' results. (The model
// over real groups: tests/train/tp_mpi_test.cpp.)
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "core/error.h"
#include "kernels/backend.h"
#include "model/config.h"
#include "model/params.h"

namespace borealis {
namespace {

std::vector<double> random_values(std::size_t n, unsigned seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<double> d(0.0, 2.0);
  std::vector<double> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

TEST(TensorSplit, PartsTileEveryTensor) {
  for (const char* preset : {"gpt2-tiny", "llama-tiny"}) {
    const ModelConfig config = model_preset(preset);
    const ParamLayout whole(config);
    for (int size : {2, 4}) {
      if (config.n_kv_head % size != 0) continue;
      SCOPED_TRACE(std::string(preset) + " in " + std::to_string(size));
      std::vector<ParamLayout> parts;
      for (int r = 0; r < size; ++r) parts.emplace_back(config, TensorSplit{r, size});
      const auto data = random_values(static_cast<std::size_t>(whole.total()), 5);
      std::vector<double> rebuilt(data.size(), 0.0);
      for (const ParamView& w : whole.views()) {
        std::int64_t held = 0;
        for (const ParamLayout& p : parts) {
          const ParamView& v = p.find(w.name);
          EXPECT_EQ(v.whole_shape, w.shape) << w.name;
          std::vector<double> piece(static_cast<std::size_t>(v.size));
          take_part(v, data.data() + w.offset, piece.data());
          put_part(v, piece.data(), rebuilt.data() + w.offset);
          held += v.size;
        }
        // Split tensors are cut into equal parts; the rest is whole on every rank.
        const bool split = parts[0].find(w.name).is_split();
        EXPECT_EQ(held, split ? w.size : w.size * size) << w.name;
      }
      EXPECT_EQ(rebuilt, data);
    }
  }
}

TEST(TensorSplit, AttentionPartsHoldWholeHeads) {
  // llama-tiny: 4 query heads, 2 key/value heads of 8; rank 1 of 2 holds
  // query heads 2-3 and key/value head 1.
  const ModelConfig config = model_preset("llama-tiny");
  const ParamLayout part(config, TensorSplit{1, 2});
  const ParamView& qkv = part.find("h.0.attn.qkv.w");
  ASSERT_EQ(qkv.runs.size(), 3u);
  EXPECT_EQ(qkv.runs[0].begin, 16);  // q heads 2, 3
  EXPECT_EQ(qkv.runs[0].length, 16);
  EXPECT_EQ(qkv.runs[1].begin, 32 + 8);       // k head 1
  EXPECT_EQ(qkv.runs[2].begin, 32 + 16 + 8);  // v head 1
  EXPECT_EQ(qkv.shape, (std::vector<std::int64_t>{32, 32}));
  const ParamView& fc = part.find("h.0.mlp.fc.w");  // gate | up, 24 units each
  ASSERT_EQ(fc.runs.size(), 2u);
  EXPECT_EQ(fc.runs[0].begin, 24);
  EXPECT_EQ(fc.runs[1].begin, 48 + 24);
  EXPECT_EQ(part.find("h.0.attn.proj.w").split_dim, 1);
  EXPECT_FALSE(part.find("h.0.ln1.w").is_split());
  EXPECT_EQ(part.find("lm_head.w").shape, (std::vector<std::int64_t>{64, 32}));
}

TEST(TensorSplit, UndividedDimensionsAreErrors) {
  const ModelConfig config = model_preset("llama-tiny");
  try {
    ParamLayout bad(config, TensorSplit{0, 4});
    FAIL() << "4 does not divide the 2 key/value heads";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("n_kv_head = 2"), std::string::npos) << e.what();
  }
  ModelConfig odd = model_preset("gpt2-tiny");
  odd.d_ff = 126;
  EXPECT_NO_THROW(check_tensor_split(odd, 2, ""));
  EXPECT_THROW(check_tensor_split(odd, 4, ""), Error);
}

// The vocabulary-parallel cross-entropy over 4 parts of 32 columns (97 real
// of 128), combined as the group would, against the whole-row op.
TEST(TensorSplit, VocabularyParallelCrossEntropyMatchesWholeRows) {
  auto backend = make_cpu_backend<double>();
  const int N = 5, V = 97, Vp = 128, parts = 4, Vl = Vp / parts;
  const auto logits = random_values(static_cast<std::size_t>(N) * Vp, 9);
  const std::vector<std::int32_t> targets = {0, 31, 32, 96, 50};
  const double dloss = 0.25;
  std::vector<double> whole = logits;
  std::vector<double> losses(N);
  backend->crossentropy_forward_backward(whole.data(), losses.data(), targets.data(), N, V, Vp,
                                         dloss);

  std::vector<std::vector<double>> part(parts);
  std::vector<double> row_max(N, -INFINITY), sums(2 * N, 0.0);
  for (int r = 0; r < parts; ++r) {
    part[r].resize(static_cast<std::size_t>(N) * Vl);
    for (int n = 0; n < N; ++n) {
      std::copy_n(logits.begin() + n * Vp + r * Vl, Vl, part[r].begin() + n * Vl);
    }
    std::vector<double> mx(N);
    backend->crossentropy_part_max(mx.data(), part[r].data(), N, std::clamp(V - r * Vl, 0, Vl), Vl);
    for (int n = 0; n < N; ++n) row_max[n] = std::max(row_max[n], mx[n]);
  }
  for (int r = 0; r < parts; ++r) {
    std::vector<double> s(2 * N);
    backend->crossentropy_part_sums(part[r].data(), s.data(), row_max.data(), targets.data(),
                                    r * Vl, N, std::clamp(V - r * Vl, 0, Vl), Vl, true);
    for (int i = 0; i < 2 * N; ++i) sums[i] += s[i];
  }
  for (int r = 0; r < parts; ++r) {
    std::vector<double> part_losses(N);
    backend->crossentropy_part_finish(part[r].data(), part_losses.data(), row_max.data(),
                                      sums.data(), targets.data(), r * Vl, N,
                                      std::clamp(V - r * Vl, 0, Vl), Vl, dloss);
    for (int n = 0; n < N; ++n) {
      EXPECT_NEAR(part_losses[n], losses[n], 1e-12);
      for (int j = 0; j < Vl; ++j) {
        EXPECT_NEAR(part[r][n * Vl + j], whole[n * Vp + r * Vl + j], 1e-14)
            << "row " << n << " column " << r * Vl + j;
      }
    }
  }
}

// The embedding's parts add up to the whole lookup, and each part's
// gradient is the whole gradient's rows.
TEST(TensorSplit, VocabularyParallelEmbeddingMatchesWholeTable) {
  auto backend = make_cpu_backend<double>();
  const int N = 6, seq = 3, C = 4, Vp = 8, parts = 2, Vl = Vp / parts;
  const auto wte = random_values(static_cast<std::size_t>(Vp) * C, 1);
  const auto wpe = random_values(static_cast<std::size_t>(seq) * C, 2);
  const auto dout = random_values(static_cast<std::size_t>(N) * C, 3);
  const std::vector<std::int32_t> tokens = {0, 7, 3, 4, 4, 1};
  std::vector<double> out(N * C), dwte(Vp * C, 0.0), dwpe(seq * C, 0.0);
  backend->embedding_forward(out.data(), tokens.data(), wte.data(), wpe.data(), N, seq, C);
  backend->embedding_backward(dwte.data(), dwpe.data(), dout.data(), tokens.data(), N, seq, C);
  std::vector<double> sum(N * C, 0.0);
  for (int r = 0; r < parts; ++r) {
    std::vector<double> o(N * C), dw(Vl * C, 0.0), dp(seq * C, 0.0);
    backend->embedding_forward_part(o.data(), tokens.data(), wte.data() + r * Vl * C, r * Vl, Vl,
                                    r == 0 ? wpe.data() : nullptr, N, seq, C);
    for (int i = 0; i < N * C; ++i) sum[i] += o[i];
    backend->embedding_backward_part(dw.data(), dp.data(), dout.data(), tokens.data(), r * Vl, Vl,
                                     N, seq, C);
    EXPECT_EQ(dw, std::vector<double>(dwte.begin() + r * Vl * C, dwte.begin() + (r + 1) * Vl * C));
    EXPECT_EQ(dp, dwpe);
  }
  EXPECT_EQ(sum, out);
}

}  // namespace
}  // namespace borealis
