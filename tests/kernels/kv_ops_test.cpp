// The inference ops of the CPU backend: single-row matmul (the matrix-vector
// path), RoPE at an offset and key/value-cache attention, each against the
// training op it must agree with.
#include <gtest/gtest.h>

#include "kernels/backend.h"
#include "kernels/gradcheck.h"

namespace borealis {
namespace {

using test::random_vector;

class KvOps : public ::testing::Test {
 protected:
  std::unique_ptr<Backend<double>> be = make_cpu_backend<double>();
};

TEST_F(KvOps, SingleRowMatmulMatchesDefinition) {
  const int C = 37, OC = 53;
  auto x = random_vector(C, 1), w = random_vector(OC * C, 2), b = random_vector(OC, 3);
  std::vector<double> out(OC, 0.0), acc(OC, 1.5), plain(OC, 9.0);
  be->matmul_forward(out.data(), x.data(), w.data(), b.data(), 1, C, OC, false);
  be->matmul_forward(acc.data(), x.data(), w.data(), b.data(), 1, C, OC, true);
  be->matmul_forward(plain.data(), x.data(), w.data(), nullptr, 1, C, OC, false);
  for (int o = 0; o < OC; ++o) {
    double s = 0;
    for (int c = 0; c < C; ++c) s += x[c] * w[o * C + c];
    EXPECT_NEAR(out[o], s + b[o], 1e-12);
    EXPECT_NEAR(acc[o], s + b[o] + 1.5, 1e-12);
    EXPECT_NEAR(plain[o], s, 1e-12);
  }
}

TEST_F(KvOps, RopeAtAnOffsetMatchesRopeOverTheSequence) {
  const int seq = 50, NH = 4, NKV = 2, HD = 8;
  const int S = (NH + 2 * NKV) * HD;
  const auto qkv = random_vector(static_cast<std::size_t>(seq) * S, 5);
  auto full = qkv;
  be->rope_forward(full.data(), 1, seq, NH, NKV, HD, 10000.0f);
  // Another backend, whose angle table grows with the positions asked for.
  const auto at = make_cpu_backend<double>();
  for (const auto& [pos0, n] : {std::pair{0, 7}, std::pair{17, 1}, std::pair{20, 30}}) {
    std::vector<double> part(qkv.begin() + pos0 * S, qkv.begin() + (pos0 + n) * S);
    at->rope_forward_at(part.data(), n, pos0, NH, NKV, HD, 10000.0f);
    for (int i = 0; i < n * S; ++i) {
      ASSERT_NEAR(part[i], full[pos0 * S + i], 1e-13) << "pos0 " << pos0 << " element " << i;
    }
  }
}

TEST_F(KvOps, CacheAttentionInPiecesMatchesCausalAttention) {
  // 150 positions: pieces that cross the 64-row query tiles, single rows, GQA.
  const int seq = 150, NH = 6, NKV = 2, HD = 8;
  const int S = (NH + 2 * NKV) * HD, C = NH * HD, KW = NKV * HD;
  const auto qkv = random_vector(static_cast<std::size_t>(seq) * S, 9, 2.0);
  std::vector<double> ref(static_cast<std::size_t>(seq) * C), lse(NH * seq);
  be->attention_forward(ref.data(), lse.data(), qkv.data(), 1, seq, NH, NKV, HD);

  std::vector<double> kc(static_cast<std::size_t>(seq) * KW, -1), vc(kc.size(), -1);
  int pos = 0;
  for (int n : {5, 1, 1, 70, 1, 66, 6}) {
    std::vector<double> out(static_cast<std::size_t>(n) * C, 42.0);
    be->attention_kv_forward(out.data(), kc.data(), vc.data(), qkv.data() + pos * S, n, pos, NH,
                             NKV, HD);
    for (int i = 0; i < n * C; ++i) {
      ASSERT_NEAR(out[i], ref[pos * C + i], 1e-12) << "piece at " << pos << ", element " << i;
    }
    pos += n;
  }
  ASSERT_EQ(pos, seq);
  for (int t = 0; t < seq; ++t) {
    for (int j = 0; j < KW; ++j) {
      ASSERT_EQ(kc[t * KW + j], qkv[t * S + C + j]);
      ASSERT_EQ(vc[t * KW + j], qkv[t * S + C + KW + j]);
    }
  }
}

}  // namespace
}  // namespace borealis
