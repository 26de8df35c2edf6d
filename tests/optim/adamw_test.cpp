// AdamW, weight-decay exclusion and gradient clipping against values worked
// out by hand (see the comments for the arithmetic).
#include "optim/adamw.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>

#include "kernels/timed_backend.h"
#include "model/config.h"

namespace borealis {
namespace {

// The optimizer's arithmetic is the backend's (kernels/backend.h).
Backend<float>& cpu() {
  static const auto backend = make_cpu_backend<float>();
  return *backend;
}

// Two steps with grads 0.5 then -0.25 on a parameter starting at 1.0,
// lr 0.1, betas (0.9, 0.95), eps 1e-8, weight decay 0.1:
//  step 1: m = 0.05, v = 0.0125; m^ = 0.5, v^ = 0.25 -> update 1 (less 2e-8)
//          decayed:   p = 1 - 0.1 * (1 + 0.1 * 1)        = 0.89
//          undecayed: p = 1 - 0.1 * 1                    = 0.90
//  step 2: m = 0.02, v = 0.015; m^ = 0.02 / 0.19, v^ = 0.015 / 0.0975
//          m^ / sqrt(v^) = 0.2683702...
//          decayed:   p = 0.89 - 0.1 * (0.26837 + 0.089) = 0.8542631
//          undecayed: p = 0.90 - 0.1 * 0.26837           = 0.8731631
struct Probe {
  std::int64_t index;
  float expect_step1, expect_step2;
};

// grad_scale multiplies the gradients (clipping fused into the update): the
// same steps result from gradients 4x as large with grad_scale 0.25.
void run_two_steps(const AdamWConfig& config, const std::vector<Probe>& probes,
                   float grad_scale = 1.0f) {
  const ParamLayout layout(model_preset("gpt2-tiny"));
  AdamW opt(cpu(), layout, config);
  std::vector<float> params(layout.total(), 0.0f), grads(layout.total(), 0.0f);
  for (const auto& p : probes) params[p.index] = 1.0f;
  for (const auto& p : probes) grads[p.index] = 0.5f / grad_scale;
  opt.step(params.data(), grads.data(), 0.1f, grad_scale);
  for (const auto& p : probes) EXPECT_NEAR(params[p.index], p.expect_step1, 1e-6) << p.index;
  for (const auto& p : probes) grads[p.index] = -0.25f / grad_scale;
  opt.step(params.data(), grads.data(), 0.1f, grad_scale);
  for (const auto& p : probes) EXPECT_NEAR(params[p.index], p.expect_step2, 1e-6) << p.index;
  EXPECT_EQ(opt.steps(), 2);
  EXPECT_EQ(opt.state_bytes(), 2 * sizeof(float) * layout.total());
}

constexpr float kDecayed1 = 0.89f, kDecayed2 = 0.8542631f;
constexpr float kPlain1 = 0.90f, kPlain2 = 0.8731631f;

TEST(AdamW, HandComputedStepsAndDefaultExclusions) {
  const ParamLayout layout(model_preset("gpt2-tiny"));
  AdamWConfig config;
  config.beta1 = 0.9f;
  config.beta2 = 0.95f;
  config.eps = 1e-8f;
  config.weight_decay = 0.1f;
  run_two_steps(config, {
                            {layout.find("h.0.attn.qkv.w").offset + 5, kDecayed1, kDecayed2},
                            {layout.find("h.1.mlp.proj.w").offset, kDecayed1, kDecayed2},
                            {layout.find("h.0.ln1.w").offset + 1, kPlain1, kPlain2},
                            {layout.find("h.0.attn.qkv.b").offset, kPlain1, kPlain2},
                            {layout.find("wte").offset + 7, kPlain1, kPlain2},
                            {layout.find("wpe").offset, kPlain1, kPlain2},
                        });
}

TEST(AdamW, GradScaleAppliesToGradients) {
  const ParamLayout layout(model_preset("gpt2-tiny"));
  AdamWConfig config;
  config.weight_decay = 0.1f;
  run_two_steps(config,
                {
                    {layout.find("h.0.attn.qkv.w").offset + 5, kDecayed1, kDecayed2},
                    {layout.find("h.0.ln1.w").offset + 1, kPlain1, kPlain2},
                },
                0.25f);
}

TEST(AdamW, OptInDecayForNormsBiasesEmbeddings) {
  const ParamLayout layout(model_preset("gpt2-tiny"));
  AdamWConfig config;
  config.weight_decay = 0.1f;
  config.decay_norms = true;
  config.decay_biases = true;
  config.decay_embeddings = true;
  run_two_steps(config, {
                            {layout.find("h.0.ln1.w").offset + 1, kDecayed1, kDecayed2},
                            {layout.find("lnf.b").offset, kDecayed1, kDecayed2},
                            {layout.find("h.0.attn.qkv.b").offset, kDecayed1, kDecayed2},
                            {layout.find("wte").offset + 7, kDecayed1, kDecayed2},
                        });
}

TEST(AdamW, ZeroGradientOnlyDecays) {
  const ParamLayout layout(model_preset("llama-tiny"));
  AdamW opt(cpu(), layout, AdamWConfig{});
  std::vector<float> params(layout.total(), 2.0f), grads(layout.total(), 0.0f);
  opt.step(params.data(), grads.data(), 0.5f);
  // Decoupled decay: p -= lr * wd * p = 2 - 0.5 * 0.1 * 2.
  EXPECT_FLOAT_EQ(params[layout.find("lm_head.w").offset], 1.9f);
  EXPECT_FLOAT_EQ(params[layout.find("h.0.ln2.w").offset], 2.0f);
}

// ZeRO-1: optimizers of contiguous shards, cut anywhere (also inside a
// tensor, between a decayed matrix and an undecayed norm), make the same
// update bit for bit as one optimizer of the whole buffer.
TEST(AdamW, ShardsCutAnywhereMatchTheWholeBuffer) {
  const ParamLayout layout(model_preset("gpt2-tiny"));
  const std::int64_t n = layout.total();
  AdamWConfig config;
  config.decay_biases = true;  // a mix of decayed and undecayed neighbours
  std::vector<float> p0(static_cast<std::size_t>(n)), g1(p0.size()), g2(p0.size());
  for (std::int64_t i = 0; i < n; ++i) {
    p0[i] = std::sin(0.37f * static_cast<float>(i));
    g1[i] = std::cos(0.11f * static_cast<float>(i)) * 1e-2f;
    g2[i] = std::sin(0.05f * static_cast<float>(i) + 1.0f) * 1e-3f;
  }
  std::vector<float> whole = p0;
  AdamW full(cpu(), layout, config);
  full.step(whole.data(), g1.data(), 1e-2f, 0.5f);
  full.step(whole.data(), g2.data(), 1e-2f, 0.5f);
  const std::int64_t norm_end = layout.find("h.0.ln1.w").offset + 13;  // inside a norm
  for (const std::vector<std::int64_t>& cuts :
       {std::vector<std::int64_t>{0, n / 2, n}, std::vector<std::int64_t>{0, norm_end, n},
        std::vector<std::int64_t>{0, 1, n / 3, n / 3 + 7, n - 1, n}}) {
    std::vector<float> sharded = p0;
    for (std::size_t k = 0; k + 1 < cuts.size(); ++k) {
      AdamW part(cpu(), layout, config, cuts[k], cuts[k + 1]);
      EXPECT_EQ(part.state_bytes(), 2 * sizeof(float) * (cuts[k + 1] - cuts[k]));
      part.step(sharded.data() + cuts[k], g1.data() + cuts[k], 1e-2f, 0.5f);
      part.step(sharded.data() + cuts[k], g2.data() + cuts[k], 1e-2f, 0.5f);
    }
    EXPECT_EQ(std::memcmp(sharded.data(), whole.data(), whole.size() * sizeof(float)), 0)
        << "cut at " << cuts[1];
  }
  EXPECT_THROW(AdamW(cpu(), layout, config, 5, 4), std::invalid_argument);
  EXPECT_THROW(AdamW(cpu(), layout, config, 0, n + 1), std::invalid_argument);
}

TEST(GradClip, GlobalNormAndClipping) {
  std::vector<float> g(100000, 0.0f);
  g[3] = 3.0f;
  g[99999] = 4.0f;  // in another reduction block
  EXPECT_DOUBLE_EQ(global_norm(cpu(), g.data(), static_cast<std::int64_t>(g.size())), 5.0);
  EXPECT_DOUBLE_EQ(clip_grad_norm(cpu(), g.data(), static_cast<std::int64_t>(g.size()), 10.0), 5.0);
  EXPECT_EQ(g[3], 3.0f);  // below the limit: untouched
  EXPECT_DOUBLE_EQ(clip_grad_norm(cpu(), g.data(), static_cast<std::int64_t>(g.size()), 1.0), 5.0);
  EXPECT_NEAR(g[3], 0.6f, 1e-6);
  EXPECT_NEAR(g[99999], 0.8f, 1e-6);
  EXPECT_NEAR(global_norm(cpu(), g.data(), static_cast<std::int64_t>(g.size())), 1.0, 1e-6);
  EXPECT_EQ(clip_scale(0.5, 1.0), 1.0f);
  EXPECT_EQ(clip_scale(5.0, 0.0), 1.0f);  // max_norm 0: no clipping
  EXPECT_NEAR(clip_scale(4.0, 2.0), 0.5f, 1e-6);
}

// The update, the norm and the clipping reach the parameters only through
// the backend: a backend that sees no optimizer op would mean a second
// definition of AdamW outside it.
TEST(AdamW, ArithmeticGoesThroughTheBackend) {
  const ParamLayout layout(model_preset("gpt2-tiny"));
  TimedBackend<float> timed(cpu());
  AdamW opt(timed, layout, AdamWConfig{});
  std::vector<float> params(layout.total(), 1.0f), grads(layout.total(), 0.5f);
  EXPECT_EQ(timed.seconds().count("optimizer"), 0u);
  opt.step(params.data(), grads.data(), 0.1f);
  EXPECT_EQ(timed.seconds().count("optimizer"), 1u);
  timed.reset();
  EXPECT_GT(clip_grad_norm(timed, grads.data(), layout.total(), 1.0), 1.0);
  EXPECT_EQ(timed.seconds().count("optimizer"), 1u);
  EXPECT_NEAR(global_norm(cpu(), grads.data(), layout.total()), 1.0, 1e-6);
}

// The update is elementwise: one call per run of adjacent tensors that
// decay alike gives the bits of one call per tensor, in fewer calls (each a
// kernel launch on a GPU).
TEST(AdamW, AdjacentTensorsThatDecayAlikeShareOneUpdate) {
  struct Counting final : TimedBackend<float> {
    using TimedBackend<float>::TimedBackend;
    void adamw_update(float* p, const float* g, float* m, float* v, std::int64_t n,
                      const AdamWUpdate& u) override {
      ++calls;
      TimedBackend<float>::adamw_update(p, g, m, v, n, u);
    }
    int calls = 0;
  };
  for (const char* preset : {"gpt2-tiny", "llama-tiny"}) {
    SCOPED_TRACE(preset);
    const ModelConfig config = model_preset(preset);
    const ParamLayout layout(config);
    const AdamWConfig adamw{};
    Counting counting(cpu());
    AdamW opt(counting, layout, adamw);
    // Runs of equal decay in the layout's order, by hand. GPT-2: wte wpe and
    // the first ln1 w b; then a block's qkv.w | qkv.b | proj.w | proj.b ln2
    // w b | fc.w | fc.b | fcproj.w | fcproj.b with the next block's ln1 (or
    // lnf). Llama: wte and the first ln1; then a block's qkv.w proj.w | ln2
    // | fc.w fcproj.w | the next ln1 (or lnf); then lm_head.w if untied.
    const int L = config.n_layer;
    const int runs = config.family == ModelFamily::kGpt2
                         ? 1 + 8 * L
                         : 1 + 4 * L + (config.tied_embeddings ? 0 : 1);
    const std::int64_t n = layout.total();
    std::vector<float> p(n), g(n), m(n, 0.0f), v(n, 0.0f);
    for (std::int64_t i = 0; i < n; ++i) {
      p[i] = std::sin(0.37f * static_cast<float>(i));
      g[i] = std::cos(0.11f * static_cast<float>(i));
    }
    std::vector<float> one_by_one = p;
    opt.step(p.data(), g.data(), 0.1f);
    EXPECT_EQ(counting.calls, runs);
    // The same step, tensor by tensor.
    Backend<float>::AdamWUpdate u{};
    u.lr = 0.1f;
    u.beta1 = adamw.beta1;
    u.beta2 = adamw.beta2;
    u.eps = adamw.eps;
    u.grad_scale = 1.0f;
    u.c1 = static_cast<float>(1.0 / (1.0 - static_cast<double>(adamw.beta1)));  // step 1
    u.c2 = static_cast<float>(1.0 / (1.0 - static_cast<double>(adamw.beta2)));
    for (const ParamView& view : layout.views()) {
      u.weight_decay = opt.decays(view) ? adamw.weight_decay : 0.0f;
      cpu().adamw_update(one_by_one.data() + view.offset, g.data() + view.offset,
                         m.data() + view.offset, v.data() + view.offset, view.size, u);
    }
    EXPECT_EQ(p, one_by_one);
  }
}

// The double instantiation (for gradient checks) computes the same update.
TEST(AdamW, DoubleBackendMatchesTheFormula) {
  const auto backend = make_cpu_backend<double>();
  Backend<double>::AdamWUpdate u{};
  u.lr = 0.1f;
  u.beta1 = 0.9f;
  u.beta2 = 0.95f;
  u.eps = 1e-8f;
  u.weight_decay = 0.1f;
  u.grad_scale = 1.0f;
  u.c1 = 10.0f;  // 1 / (1 - 0.9): step 1
  u.c2 = 20.0f;  // 1 / (1 - 0.95)
  double p = 1.0, g = 0.5, m = 0.0, v = 0.0;
  backend->adamw_update(&p, &g, &m, &v, 1, u);
  EXPECT_NEAR(m, 0.05, 1e-7);  // the betas are floats: 1 - 0.9f is 0.1 to 1e-7
  EXPECT_NEAR(v, 0.0125, 1e-7);
  EXPECT_NEAR(p, 0.89, 1e-6);  // as kDecayed1
  EXPECT_DOUBLE_EQ(backend->sum_of_squares(std::vector<double>{3, 4}.data(), 2), 25.0);
}

}  // namespace
}  // namespace borealis
