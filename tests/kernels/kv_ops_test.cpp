// The inference ops of the CPU backend: single-row matmul (the matrix-vector
// path), RoPE at an offset and key/value-cache attention, each against the
// training op it must agree with.
#include <gtest/gtest.h>

#include <cstring>
#include <tuple>

#include "kernels/backend.h"
#include "kernels/cpu/ops.h"
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

// Runs a 150-position sequence through attention_kv_forward in pieces (that
// cross the 64-row query tiles and the cache blocks; single rows; GQA) over
// the cache blocks `blocks` of block_size positions in a pool of pool_blocks,
// against causal attention over the whole sequence; checks where the keys
// and values were stored.
void check_cache_attention(Backend<double>& be, const std::vector<std::int32_t>& blocks,
                           int block_size, int pool_blocks, const std::vector<int>& pieces) {
  const int seq = 150, NH = 6, NKV = 2, HD = 8;
  const int S = (NH + 2 * NKV) * HD, C = NH * HD, KW = NKV * HD;
  const auto qkv = random_vector(static_cast<std::size_t>(seq) * S, 9, 2.0);
  std::vector<double> ref(static_cast<std::size_t>(seq) * C), lse(NH * seq);
  be.attention_forward(ref.data(), lse.data(), qkv.data(), 1, seq, NH, NKV, HD);

  std::vector<double> kp(static_cast<std::size_t>(pool_blocks) * block_size * KW, -1);
  std::vector<double> vp(kp.size(), -1);
  int pos = 0;
  for (int n : pieces) {
    std::vector<double> out(static_cast<std::size_t>(n) * C, 42.0);
    be.attention_kv_forward(out.data(), kp.data(), vp.data(), blocks.data(), block_size,
                            qkv.data() + pos * S, n, pos, NH, NKV, HD);
    for (int i = 0; i < n * C; ++i) {
      ASSERT_NEAR(out[i], ref[pos * C + i], 1e-12) << "piece at " << pos << ", element " << i;
    }
    pos += n;
  }
  ASSERT_EQ(pos, seq);
  for (int t = 0; t < seq; ++t) {
    const std::size_t row =
        static_cast<std::size_t>(blocks[static_cast<std::size_t>(t / block_size)]) * block_size +
        t % block_size;
    for (int j = 0; j < KW; ++j) {
      ASSERT_EQ(kp[row * KW + j], qkv[t * S + C + j]);
      ASSERT_EQ(vp[row * KW + j], qkv[t * S + C + KW + j]);
    }
  }
}

TEST_F(KvOps, CacheAttentionInPiecesMatchesCausalAttention) {
  // One block as long as the sequence: a contiguous cache.
  check_cache_attention(*be, {0}, 150, 1, {5, 1, 1, 70, 1, 66, 6});
}

TEST_F(KvOps, PagedCacheAttentionMatchesCausalAttention) {
  // Blocks of 16 positions in a shuffled order within a larger pool.
  check_cache_attention(*be, {7, 2, 11, 0, 5, 9, 1, 3, 10, 4}, 16, 12,
                        {3, 20, 1, 1, 64, 40, 1, 20});
}

TEST_F(KvOps, RowwiseMatmulMatchesDefinitionAndEveryRowIsTheSameWhateverTheBatch) {
  const auto fb = make_cpu_backend<float>();
  // C not a multiple of the vector width, OC not a multiple of the tile.
  const int C = 203, OC = 70, N = 37;
  auto xd = random_vector(static_cast<std::size_t>(N) * C, 21);
  auto wd = random_vector(static_cast<std::size_t>(OC) * C, 22);
  auto bd = random_vector(OC, 23);
  const std::vector<float> x(xd.begin(), xd.end()), w(wd.begin(), wd.end()),
      b(bd.begin(), bd.end());
  std::vector<float> all(static_cast<std::size_t>(N) * OC, 0.5f);
  fb->matmul_forward_rowwise(all.data(), x.data(), w.data(), b.data(), N, C, OC, true);
  for (int n = 0; n < N; ++n) {
    for (int o = 0; o < OC; ++o) {
      double s = 0.5 + b[o];
      for (int c = 0; c < C; ++c) s += double(x[n * C + c]) * w[o * C + c];
      ASSERT_NEAR(all[n * OC + o], s, 1e-4) << n << "," << o;
    }
  }
  // The same rows in batches of other sizes and offsets: bit-identical.
  for (int rows : {1, 2, 3, 5, 8, 33}) {
    for (int r0 = 0; r0 + rows <= N; r0 += 7) {
      std::vector<float> part(static_cast<std::size_t>(rows) * OC, 0.5f);
      fb->matmul_forward_rowwise(part.data(), x.data() + r0 * C, w.data(), b.data(), rows, C, OC,
                                 true);
      for (int i = 0; i < rows * OC; ++i) {
        ASSERT_EQ(part[i], all[r0 * OC + i]) << rows << " rows from " << r0 << ", element " << i;
      }
    }
  }
  // The AVX-512 form (where the build has it) gives the 256-bit kernel's
  // bits, at every row count, tile edge and remainder of C.
  for (const auto& [rows, in, out] :
       {std::tuple{37, 203, 70}, {4, 768, 64}, {1, 16, 8}, {5, 7, 9}, {32, 768, 2304}}) {
    const auto xs = random_vector(static_cast<std::size_t>(rows) * in, 31);
    const auto ws = random_vector(static_cast<std::size_t>(out) * in, 32);
    const auto bs = random_vector(static_cast<std::size_t>(out), 33);
    const std::vector<float> xf(xs.begin(), xs.end()), wf(ws.begin(), ws.end()),
        bf(bs.begin(), bs.end());
    std::vector<float> fast(static_cast<std::size_t>(rows) * out, 0.25f), plain(fast);
    cpu::matmul_forward_rowwise(fast.data(), xf.data(), wf.data(), bf.data(), rows, in, out, true);
    cpu::matmul_forward_rowwise_portable(plain.data(), xf.data(), wf.data(), bf.data(), rows, in,
                                         out, true);
    EXPECT_EQ(std::memcmp(fast.data(), plain.data(), fast.size() * sizeof(float)), 0)
        << rows << " x " << in << " -> " << out;
  }
  // Without bias or accumulation, against the double backend.
  std::vector<double> dref(static_cast<std::size_t>(N) * OC);
  be->matmul_forward_rowwise(dref.data(), xd.data(), wd.data(), nullptr, N, C, OC, false);
  for (int n = 0; n < N; ++n) {
    for (int o = 0; o < OC; ++o) {
      double s = 0;
      for (int c = 0; c < C; ++c) s += xd[n * C + c] * wd[o * C + c];
      ASSERT_NEAR(dref[n * OC + o], s, 1e-12);
    }
  }
}

}  // namespace
}  // namespace borealis
