// Whole-model tests: presets and layout, finite-difference gradient checks of
// tiny GPT-2 and Llama models in double precision, padded-vocabulary masking,
// gradient accumulation, determinism and overfitting a fixed batch.
#include "model/model.h"

#include <gtest/gtest.h>

#include "core/error.h"
#include "kernels/gradcheck.h"
#include "kernels/timed_backend.h"
#include "optim/adamw.h"

namespace borealis {
namespace {

struct Batch {
  std::vector<std::int32_t> tokens, targets;
};

Batch make_batch(int B, int seq, int vocab, std::uint64_t seed) {
  Batch b;
  auto r = test::random_vector(static_cast<std::size_t>(B) * seq + 1, seed);
  std::vector<std::int32_t> ids;
  for (double x : r) ids.push_back(static_cast<std::int32_t>((x + 1.0) / 2.0 * (vocab - 1)));
  b.tokens.assign(ids.begin(), ids.end() - 1);
  b.targets.assign(ids.begin() + 1, ids.end());
  return b;
}

TEST(ModelConfig, Presets) {
  const ModelConfig g = model_preset("gpt2-124m");
  EXPECT_EQ(g.padded_vocab, 50304);
  EXPECT_EQ(ParamLayout(g).total(), 124475904);  // llm.c's count for padded GPT-2 124M
  const ModelConfig l = model_preset("llama-20m");
  const std::int64_t C = l.d_model, F = l.d_ff, S = l.qkv_width();
  EXPECT_EQ(S, (6 + 2 * 2) * 64);
  EXPECT_EQ(ParamLayout(l).total(),
            l.padded_vocab * C + l.n_layer * (2 * C + S * C + C * C + 2 * F * C + C * F) + C);
  EXPECT_EQ(model_preset("gpt2-tiny").padded_vocab, 128);
  for (const auto& name : model_preset_names()) EXPECT_EQ(model_preset(name).name, name);
  try {
    model_preset("gpt5");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(e.message().find("unknown model preset 'gpt5'"), std::string::npos);
    EXPECT_NE(e.message().find("llama-20m"), std::string::npos);
  }
  ModelConfig bad = model_preset("llama-tiny");
  bad.n_kv_head = 3;
  EXPECT_THROW(bad.validate(), Error);
}

TEST(ModelConfig, LayoutViews) {
  const ParamLayout gl(model_preset("gpt2-tiny"));
  EXPECT_EQ(gl.find("h.1.attn.qkv.w").shape, (std::vector<std::int64_t>{96, 32}));
  EXPECT_TRUE(gl.find("h.0.mlp.proj.w").residual_projection);
  EXPECT_EQ(gl.lm_head(), gl.wte());
  const ParamLayout ll(model_preset("llama-tiny"));
  EXPECT_EQ(ll.find("h.0.mlp.fc.w").shape, (std::vector<std::int64_t>{96, 32}));  // gate|up
  EXPECT_NE(ll.lm_head(), ll.wte());                                              // untied
  EXPECT_THROW(ll.find("h.0.attn.qkv.b"), std::out_of_range);
  std::int64_t next = 0;
  for (const auto& v : ll.views()) {
    EXPECT_EQ(v.offset, next) << v.name;
    next += v.size;
  }
  EXPECT_EQ(next, ll.total());
}

TEST(ModelInit, SeededAndScaled) {
  const ModelConfig c = model_preset("gpt2-tiny");
  const ParamLayout layout(c);
  std::vector<float> a(layout.total()), b(layout.total()), d(layout.total());
  init_params(c, layout, a.data(), 1);
  init_params(c, layout, b.data(), 1);
  init_params(c, layout, d.data(), 2);
  EXPECT_EQ(a, b);
  EXPECT_NE(a, d);
  auto stddev = [&](const std::string& name) {
    const ParamView& v = layout.find(name);
    double s = 0;
    for (std::int64_t i = 0; i < v.size; ++i) s += double(a[v.offset + i]) * a[v.offset + i];
    return std::sqrt(s / v.size);
  };
  EXPECT_NEAR(stddev("h.0.attn.qkv.w"), 0.02, 0.003);
  EXPECT_NEAR(stddev("h.0.attn.proj.w"), 0.02 / std::sqrt(4.0), 0.002);
  EXPECT_EQ(a[layout.find("h.0.ln1.w").offset], 1.0f);
  EXPECT_EQ(a[layout.find("h.0.ln1.b").offset], 0.0f);
  EXPECT_EQ(a[layout.find("h.0.attn.qkv.b").offset], 0.0f);
  const std::int64_t padded_row = 97 * 32;  // first padded vocabulary row of wte
  for (int i = 0; i < 32; ++i) EXPECT_EQ(a[padded_row + i], 0.0f);
}

// B sequences of seq tokens; samples per tensor (all of a tensor when it is
// at most twice that).
void check_model_gradients(const std::string& preset, int B = 2, int seq = 5, int samples = 24,
                           int chunk_rows = 3) {
  const test::SingleThreadScope one_thread;
  auto be = make_cpu_backend<double>();
  ModelConfig c = model_preset(preset);
  c.max_seq = std::max(c.max_seq, seq);
  Model<double> model(c, *be);
  model.init(3);
  // Move every parameter off its init (norm weights 1, biases 0) so each term counts.
  auto noise = test::random_vector(static_cast<std::size_t>(model.num_params()), 4, 0.05);
  for (std::int64_t i = 0; i < model.num_params(); ++i) model.params()[i] += noise[i];
  const int V = c.vocab_size, C = c.d_model;
  for (auto name : {"wte", "lm_head.w"}) {
    if (c.tied_embeddings && std::string(name) == "lm_head.w") continue;
    auto w = model.param(name);
    std::fill(w.begin() + static_cast<std::ptrdiff_t>(V) * C, w.end(), 0.0);
  }
  const Batch batch = make_batch(B, seq, V, 5);
  model.set_loss_chunk_rows(chunk_rows);  // 10 rows by 3: chunks of 3, 3, 3 and 1
  model.zero_grad();
  model.forward(batch.tokens.data(), batch.targets.data(), B, seq, true);
  model.backward();
  const std::vector<double> grads(model.grads(), model.grads() + model.num_params());
  auto loss = [&] {
    return model.forward(batch.tokens.data(), batch.targets.data(), B, seq, false);
  };
  for (const auto& v : model.layout().views()) {
    std::vector<std::size_t> which;
    if (v.size <= 2 * samples) {
      for (std::int64_t i = 0; i < v.size; ++i) which.push_back(static_cast<std::size_t>(i));
    } else {
      for (std::int64_t i = 0; i < samples; ++i) {
        which.push_back(static_cast<std::size_t>((i * 7919 + 13) % v.size));
      }
    }
    if (v.name == "wte") {
      for (int t = 0; t < 3; ++t) which.push_back(static_cast<std::size_t>(batch.tokens[t] * C));
      which.push_back(static_cast<std::size_t>(V * C + 1));  // padded row: zero gradient
    }
    std::vector<double> analytic(grads.begin() + v.offset, grads.begin() + v.offset + v.size);
    test::expect_gradient(v.name, model.params() + v.offset, static_cast<std::size_t>(v.size),
                          analytic, loss, which);
  }
  const auto wte_grad = model.grad("wte");
  for (auto it = wte_grad.begin() + static_cast<std::ptrdiff_t>(V) * C; it != wte_grad.end();
       ++it) {
    ASSERT_EQ(*it, 0.0);
  }
}

TEST(ModelGradients, TinyGpt2MatchesFiniteDifferences) {
  check_model_gradients("gpt2-tiny");
}

TEST(ModelGradients, TinyLlamaMatchesFiniteDifferences) {
  check_model_gradients("llama-tiny");
}

// Sequences over several 64-row attention tiles (and several loss chunks).
TEST(ModelGradients, LongSequencesMatchFiniteDifferences) {
  check_model_gradients("gpt2-tiny", 1, 150, 3, 64);
  check_model_gradients("llama-tiny", 1, 150, 3, 64);
}

// The float path (float BLAS, polynomial exp) against the double path on the
// same weights: a model-level check of the kernels that training uses.
TEST(ModelGradients, FloatMatchesDouble) {
  for (const char* preset : {"gpt2-tiny", "llama-tiny"}) {
    const ModelConfig c = model_preset(preset);
    auto bf = make_cpu_backend<float>();
    auto bd = make_cpu_backend<double>();
    Model<float> mf(c, *bf);
    Model<double> md(c, *bd);
    mf.init(31);
    std::copy(mf.params(), mf.params() + mf.num_params(), md.params());
    const Batch batch = make_batch(3, 20, c.vocab_size, 32);
    mf.zero_grad();
    md.zero_grad();
    const float lf = mf.forward(batch.tokens.data(), batch.targets.data(), 3, 20, true);
    const double ld = md.forward(batch.tokens.data(), batch.targets.data(), 3, 20, true);
    mf.backward();
    md.backward();
    EXPECT_NEAR(lf, ld, 1e-5 * ld) << preset;
    double gmax = 0;
    for (std::int64_t i = 0; i < md.num_params(); ++i)
      gmax = std::max(gmax, std::abs(md.grads()[i]));
    // float has 24 bits: a few ulp of error per op, over two layers, stays
    // well under 1e-4 of the largest gradient; a wrong term would not.
    for (std::int64_t i = 0; i < md.num_params(); ++i) {
      ASSERT_NEAR(mf.grads()[i], md.grads()[i], 1e-4 * gmax) << preset << " " << i;
    }
  }
}

TEST(ModelGradients, AccumulationEqualsFullBatch) {
  auto be = make_cpu_backend<double>();
  Model<double> model(model_preset("llama-tiny"), *be);
  model.init(9);
  const int B = 4, seq = 6;
  const Batch batch = make_batch(B, seq, 97, 10);
  model.zero_grad();
  const double full = model.forward(batch.tokens.data(), batch.targets.data(), B, seq, true);
  model.backward();
  const std::vector<double> want(model.grads(), model.grads() + model.num_params());
  model.zero_grad();
  double sum = 0;
  for (int half = 0; half < 2; ++half) {
    const std::size_t off = static_cast<std::size_t>(half) * 2 * seq;
    sum += model.forward(batch.tokens.data() + off, batch.targets.data() + off, 2, seq, true, 0.5);
    model.backward();
  }
  EXPECT_NEAR(sum / 2, full, 1e-12);
  for (std::int64_t i = 0; i < model.num_params(); ++i) {
    ASSERT_NEAR(model.grads()[i], want[static_cast<std::size_t>(i)], 1e-12) << i;
  }
}

// The loss head's chunk size is the backend's: a backend that takes few
// logits at a time gets chunks of the rows (equal ones, rounded up to 16
// rows), with the loss and gradients of one whole chunk; the CPU's and the
// CUDA backend's sizes are those backend.h states.
TEST(Model, LossHeadChunksAreTheBackends) {
  struct SmallChunks final : TimedBackend<double> {
    using TimedBackend<double>::TimedBackend;
    std::int64_t loss_chunk_elems() const override { return 20 * 128; }  // 20 rows of 128
  };
  auto cpu = make_cpu_backend<double>();
  EXPECT_EQ(cpu->loss_chunk_elems(), std::int64_t{1} << 25);
  SmallChunks small(*cpu);
  const ModelConfig c = model_preset("gpt2-tiny");  // padded vocabulary 128
  Model<double> whole(c, *cpu), chunked(c, small);
  whole.init(21);
  chunked.init(21);
  const int B = 4, seq = 16;  // 64 rows: at most 20 per chunk, so 4 chunks of 16
  const Batch batch = make_batch(B, seq, c.vocab_size, 22);
  whole.zero_grad();
  chunked.zero_grad();
  const double a = whole.forward(batch.tokens.data(), batch.targets.data(), B, seq, true);
  const double b = chunked.forward(batch.tokens.data(), batch.targets.data(), B, seq, true);
  EXPECT_EQ(whole.loss_chunk_rows(), B * seq);
  EXPECT_EQ(chunked.loss_chunk_rows(), 16);
  whole.backward();
  chunked.backward();
  EXPECT_NEAR(a, b, 1e-12 * a);
  for (std::int64_t i = 0; i < whole.num_params(); ++i) {
    ASSERT_NEAR(chunked.grads()[i], whole.grads()[i], 1e-12) << i;
  }
}

TEST(Model, PaddedVocabularyIsMaskedOut) {
  auto be = make_cpu_backend<float>();
  const ModelConfig c = model_preset("gpt2-tiny");
  Model<float> model(c, *be);
  model.init(11);
  const Batch batch = make_batch(2, 8, c.vocab_size, 12);
  model.zero_grad();
  const float before = model.forward(batch.tokens.data(), batch.targets.data(), 2, 8, true);
  model.backward();
  const std::vector<float> grads(model.grads(), model.grads() + model.num_params());
  // Huge padded embedding rows give huge padded logits; the loss must not see them.
  auto wte = model.param("wte");
  std::fill(wte.begin() + c.vocab_size * c.d_model, wte.end(), 100.0f);
  model.zero_grad();
  const float after = model.forward(batch.tokens.data(), batch.targets.data(), 2, 8, true);
  model.backward();
  EXPECT_EQ(before, after);
  auto g = model.grad("wte");
  for (std::size_t i = static_cast<std::size_t>(c.vocab_size) * c.d_model; i < g.size(); ++i) {
    ASSERT_EQ(g[i], 0.0f);
  }
  for (std::int64_t i = 0; i < model.num_params(); ++i) {
    ASSERT_NEAR(model.grads()[i], grads[static_cast<std::size_t>(i)], 1e-6) << i;
  }
}

TEST(Model, RejectsBadInput) {
  auto be = make_cpu_backend<float>();
  Model<float> model(model_preset("gpt2-tiny"), *be);
  Batch batch = make_batch(1, 8, 97, 13);
  batch.tokens[3] = 97;  // == vocab_size: a padded id, not a token
  EXPECT_THROW(model.forward(batch.tokens.data(), batch.targets.data(), 1, 8, false), Error);
  const Batch big = make_batch(1, 65, 97, 14);
  EXPECT_THROW(model.forward(big.tokens.data(), big.targets.data(), 1, 65, false), Error);
  EXPECT_THROW(model.reserve(0, 8), Error);
  EXPECT_THROW(model.backward(), std::logic_error);
}

// A few AdamW steps on one fixed batch; returns the losses.
std::vector<float> train_fixed_batch(const std::string& preset, int steps, float lr) {
  auto be = make_cpu_backend<float>();
  const ModelConfig c = model_preset(preset);
  Model<float> model(c, *be);
  model.init(21);
  AdamW opt(*be, model.layout(), AdamWConfig{});
  const int B = 2, seq = 16;
  const Batch batch = make_batch(B, seq, c.vocab_size, 22);
  std::vector<float> losses;
  for (int s = 0; s < steps; ++s) {
    model.zero_grad();
    losses.push_back(model.forward(batch.tokens.data(), batch.targets.data(), B, seq, true));
    model.backward();
    clip_grad_norm(*be, model.grads(), model.num_params(), 1.0);
    opt.step(model.params(), model.grads(), lr);
  }
  return losses;
}

TEST(Model, DeterministicLosses) {
  for (const char* preset : {"gpt2-tiny", "llama-tiny"}) {
    const auto a = train_fixed_batch(preset, 5, 1e-2f);
    const auto b = train_fixed_batch(preset, 5, 1e-2f);
    EXPECT_EQ(a, b) << preset;  // bit-identical
  }
}

TEST(Model, OverfitsFixedBatch) {
  for (const char* preset : {"gpt2-tiny", "llama-tiny"}) {
    const auto losses = train_fixed_batch(preset, 60, 1e-2f);
    EXPECT_NEAR(losses.front(), std::log(97.0f), 0.1f) << preset;  // ~uniform at init
    EXPECT_LT(losses.back(), 0.3f * losses.front()) << preset;
  }
}

}  // namespace
}  // namespace borealis
