// Parity with PyTorch: tiny GPT-2 and Llama models get the same weights
// (exchanged as safetensors) and the same batch in Borealis and in a plain
// PyTorch implementation (tests/model/torch_reference.py, run with Debian's
// /usr/bin/python3 and python3-torch). Compared: the mean loss and every
// per-token loss, every parameter gradient, and the parameters after three
// AdamW steps with global-norm clipping and a warm-up + cosine schedule.
//
// PyTorch computes in float64, so its figures are the exact math and the
// differences measure Borealis's float32 rounding. The relative error of a
// tensor is max_i |borealis_i - torch_i| / max_i |torch_i| (one scale per
// tensor, so elements near zero do not blow it up); it must stay below 1e-4.
// After the AdamW steps, the few elements whose gradient is too small for
// float32 to decide AdamW's step are held to AdamW's own bound instead (see
// compare_params).
//
// Logits are not compared directly: the model fuses the lm head with the
// loss and never keeps the logits, so the per-token losses (one
// log-sum-exp and one target logit per row) stand in for them.
//
// Without PyTorch the tests are skipped, or fail when BOREALIS_REQUIRE_TORCH=1
// (CI sets it: .ci/run installs python3-torch).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <nlohmann/json.hpp>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "kernels/gradcheck.h"
#include "model/model.h"
#include "model/safetensors.h"
#include "optim/adamw.h"
#include "optim/schedule.h"
#include "test_util.h"

namespace borealis {
namespace {

constexpr const char* kPython = "/usr/bin/python3";
constexpr double kTolerance = 1e-4;
constexpr int kSteps = 3;

std::string reference_script() {
  return std::string(BOREALIS_SOURCE_DIR) + "/tests/model/torch_reference.py";
}

// max |a - b| / max |b|; b is the reference.
double rel_error(std::span<const float> a, std::span<const float> b) {
  double diff = 0, scale = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    diff = std::max(diff, std::abs(static_cast<double>(a[i]) - b[i]));
    scale = std::max(scale, std::abs(static_cast<double>(b[i])));
  }
  return scale > 0 ? diff / scale : diff;
}

struct Worst {
  double error = 0;
  std::string tensor;
};

// The largest per-tensor relative error between two flat buffers in layout order.
Worst worst_tensor(const ParamLayout& layout, const std::vector<float>& a,
                   const std::vector<float>& b) {
  Worst w;
  for (const auto& v : layout.views()) {
    const auto n = static_cast<std::size_t>(v.size);
    const auto off = static_cast<std::size_t>(v.offset);
    const double e = rel_error({a.data() + off, n}, {b.data() + off, n});
    if (e >= w.error) w = {e, v.name};
  }
  return w;
}

struct Settings {
  AdamWConfig adamw;
  LrSchedule schedule;
  double max_norm = 0.5;
  int B = 3, T = 40;

  Settings() {
    adamw.beta1 = 0.9f;
    adamw.beta2 = 0.95f;
    adamw.eps = 1e-8f;
    adamw.weight_decay = 0.1f;
    schedule.decay = LrDecay::kCosine;
    schedule.lr_max = 1e-3;
    schedule.lr_min = 1e-4;
    schedule.warmup_steps = 2;  // step 0 warms up, step 1 peaks, step 2 ends the decay
    schedule.total_steps = kSteps;
    schedule.validate();
  }
};

// What Borealis computed, and what torch_reference.py wrote.
struct Outcome {
  double loss = 0;
  std::vector<float> losses, grads, params;
  std::vector<double> step_losses, grad_norms;
};

// Weights for the test: the seeded init plus noise on every tensor, so norm
// weights are not all one, biases not zero and padded vocabulary rows not
// zero (they must still get no gradient and no say in the loss).
Model<float> make_model(const ModelConfig& config, Backend<float>& backend) {
  Model<float> model(config, backend);
  model.init(7);
  const auto noise = test::random_vector(static_cast<std::size_t>(model.num_params()), 11, 0.05);
  for (std::int64_t i = 0; i < model.num_params(); ++i) {
    model.params()[i] += static_cast<float>(noise[static_cast<std::size_t>(i)]);
  }
  model.set_loss_chunk_rows(32);  // several chunks of the fused loss head
  return model;
}

Outcome run_borealis(Backend<float>& backend, Model<float>& model, const Settings& s,
                     const std::vector<std::int32_t>& tokens,
                     const std::vector<std::int32_t>& targets) {
  Outcome o;
  AdamW optimizer(backend, model.layout(), s.adamw);
  const auto n = static_cast<std::size_t>(model.num_params());
  for (int step = 0; step < kSteps; ++step) {
    model.zero_grad();
    const float loss = model.forward(tokens.data(), targets.data(), s.B, s.T, true);
    model.backward();
    if (step == 0) {
      o.loss = loss;
      o.losses.assign(model.losses().begin(), model.losses().end());
      o.grads.assign(model.grads(), model.grads() + n);
    }
    const double norm = global_norm(backend, model.grads(), model.num_params());
    optimizer.step(model.params(), model.grads(), static_cast<float>(s.schedule.lr(step)),
                   clip_scale(norm, s.max_norm));
    o.step_losses.push_back(loss);
    o.grad_norms.push_back(norm);
  }
  o.params.assign(model.params(), model.params() + n);
  return o;
}

// The job file for torch_reference.py; its results go to `out`.
void write_job(const std::filesystem::path& out, const Model<float>& model, const Settings& s,
               const std::vector<std::int32_t>& tokens, const std::vector<std::int32_t>& targets) {
  std::filesystem::create_directories(out);
  save_safetensors(out / "weights.safetensors", model.layout(), model.params());
  nlohmann::json job;
  job["config"] = nlohmann::json::parse(model_config_to_json(model.config()));
  job["weights"] = (out / "weights.safetensors").string();
  job["batch"] = s.B;
  job["seq"] = s.T;
  job["tokens"] = tokens;
  job["targets"] = targets;
  job["adamw"] = {{"beta1", s.adamw.beta1},
                  {"beta2", s.adamw.beta2},
                  {"eps", s.adamw.eps},
                  {"weight_decay", s.adamw.weight_decay}};
  job["schedule"] = {{"decay", "cosine"},
                     {"lr_max", s.schedule.lr_max},
                     {"lr_min", s.schedule.lr_min},
                     {"warmup_steps", s.schedule.warmup_steps},
                     {"total_steps", s.schedule.total_steps},
                     {"decay_steps", s.schedule.decay_steps}};
  job["steps"] = kSteps;
  job["max_norm"] = s.max_norm;
  job["out"] = out.string();
  test::write_file(out / "job.json", job.dump());
}

// What torch_reference.py wrote for the job in `out`.
Outcome read_result(const std::filesystem::path& out, const ParamLayout& layout,
                    const Settings& s) {
  Outcome o;
  const auto result = nlohmann::json::parse(test::read_file(out / "result.json"));
  o.loss = result.at("loss").get<double>();
  for (double x : result.at("losses")) o.losses.push_back(static_cast<float>(x));
  o.step_losses = result.at("step_losses").get<std::vector<double>>();
  o.grad_norms = result.at("grad_norms").get<std::vector<double>>();
  const auto lrs = result.at("lrs").get<std::vector<double>>();
  EXPECT_EQ(lrs.size(), static_cast<std::size_t>(kSteps));
  for (std::size_t i = 0; i < lrs.size(); ++i) {
    EXPECT_NEAR(lrs[i], s.schedule.lr(static_cast<std::int64_t>(i)), 1e-12) << "lr of step " << i;
  }
  o.grads.resize(static_cast<std::size_t>(layout.total()));
  o.params.resize(static_cast<std::size_t>(layout.total()));
  load_safetensors(out / "grads.safetensors", layout, o.grads.data());
  load_safetensors(out / "params.safetensors", layout, o.params.data());
  return o;
}

std::vector<std::int32_t> random_ids(std::size_t n, int vocab, std::uint64_t seed) {
  std::vector<std::int32_t> ids;
  for (double x : test::random_vector(n, seed)) {
    ids.push_back(std::min(vocab - 1, static_cast<std::int32_t>((x + 1.0) / 2.0 * vocab)));
  }
  return ids;
}

ModelConfig llama_tiny_tied() {
  ModelConfig c = model_preset("llama-tiny");
  c.name = "llama-tiny-tied";
  c.tied_embeddings = true;
  c.n_kv_head = 1;  // all query heads share one kv head
  return c;
}

struct Batch {
  std::vector<std::int32_t> tokens, targets;
};

Batch make_batch(const ModelConfig& config, const Settings& s) {
  const auto ids = random_ids(static_cast<std::size_t>(s.B) * s.T + 1, config.vocab_size, 3);
  return {{ids.begin(), ids.end() - 1}, {ids.begin() + 1, ids.end()}};
}

// Runs PyTorch once for every model of the suite (importing torch takes
// seconds); the tests then run Borealis and compare.
class TorchParity : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = std::make_unique<test::TempDir>();
    const Settings s;
    std::vector<std::string> args{reference_script()};
    for (const ModelConfig& config :
         {model_preset("gpt2-tiny"), model_preset("llama-tiny"), llama_tiny_tied()}) {
      auto backend = make_cpu_backend<float>();
      const Model<float> model = make_model(config, *backend);
      const Batch batch = make_batch(config, s);
      write_job(*dir_ / config.name, model, s, batch.tokens, batch.targets);
      args.push_back((*dir_ / config.name / "job.json").string());
    }
    if (!std::filesystem::exists(kPython)) {
      missing_ = std::string(kPython) + " does not exist";
      return;
    }
    const auto r = test::run_program(kPython, args);
    if (r.exit_code == 3) {
      std::string err = r.err;
      while (!err.empty() && err.back() == '\n') err.pop_back();
      missing_ = std::string(kPython) + " lacks torch or numpy: " + err;
    } else if (r.exit_code != 0) {
      failure_ =
          "torch_reference.py exited with status " + std::to_string(r.exit_code) + ":\n" + r.err;
    }
  }
  static void TearDownTestSuite() { dir_.reset(); }

  // Skips without torch (fails with BOREALIS_REQUIRE_TORCH=1); fails when the
  // script failed. Returns whether the test can go on.
  static bool ready(std::string& why_not, bool& skip) {
    skip = false;
    if (!missing_.empty()) {
      const char* require = std::getenv("BOREALIS_REQUIRE_TORCH");
      skip = require == nullptr || std::string(require) != "1";
      why_not = skip ? missing_ + "; set BOREALIS_REQUIRE_TORCH=1 to make this a failure"
                     : "BOREALIS_REQUIRE_TORCH=1 but " + missing_;
      return false;
    }
    why_not = failure_;
    return failure_.empty();
  }

  // Borealis's outcome (with tamper applied to its weights first, when
  // given) and PyTorch's, for one model of the suite.
  static std::pair<Outcome, Outcome> outcomes(const ModelConfig& config,
                                              void (*tamper)(Model<float>&) = nullptr) {
    const Settings s;
    auto backend = make_cpu_backend<float>();
    Model<float> model = make_model(config, *backend);
    const Batch batch = make_batch(config, s);
    Outcome ref = read_result(*dir_ / config.name, model.layout(), s);
    if (tamper != nullptr) tamper(model);
    return {run_borealis(*backend, model, s, batch.tokens, batch.targets), std::move(ref)};
  }

  void expect_parity(const ModelConfig& config);

  static inline std::unique_ptr<test::TempDir> dir_;
  static inline std::string missing_;  // why torch cannot run, if it cannot
  static inline std::string failure_;  // how the script failed, if it did
};

#define REQUIRE_TORCH_RESULTS()          \
  do {                                   \
    std::string why_not;                 \
    bool skip = false;                   \
    if (!ready(why_not, skip)) {         \
      if (skip) GTEST_SKIP() << why_not; \
      FAIL() << why_not;                 \
    }                                    \
  } while (0)

// Parameters after the steps. AdamW moves an element by lr * m / (sqrt(v) +
// eps), about lr * sign(g) whatever the size of g; where the gradient is tiny
// against its tensor (cancellation, or GPT-2's key bias, whose gradient is
// exactly zero in exact math because the softmax ignores a shift of a row of
// scores), float32 rounding (~1e-6 of the tensor's largest gradient) decides
// that step and float64 does not. Such elements (|g| < 1e-4 * max |g| of the
// tensor in the first step, gradient not exactly zero on both sides) are held
// to the bound AdamW itself gives, lr_max per step; they must stay under 1%
// of all elements. Every other element is in the relative comparison:
// max |a - b| over them / max |b| over the tensor.
struct ParamComparison {
  Worst worst;
  std::int64_t loose = 0;  // elements held to the AdamW bound instead
};

ParamComparison compare_params(const ParamLayout& layout, const Outcome& a, const Outcome& b,
                               const Settings& s) {
  ParamComparison r;
  for (const auto& v : layout.views()) {
    const auto begin = static_cast<std::size_t>(v.offset);
    const auto end = begin + static_cast<std::size_t>(v.size);
    double gmax = 0, scale = 0, diff = 0;
    for (std::size_t i = begin; i < end; ++i) {
      gmax = std::max(gmax, std::abs(static_cast<double>(b.grads[i])));
      scale = std::max(scale, std::abs(static_cast<double>(b.params[i])));
    }
    for (std::size_t i = begin; i < end; ++i) {
      const double d = std::abs(static_cast<double>(a.params[i]) - b.params[i]);
      const bool both_zero = a.grads[i] == 0.0f && b.grads[i] == 0.0f;
      if (!both_zero && std::abs(b.grads[i]) < 1e-4 * gmax) {
        ++r.loose;
        EXPECT_LE(d, kSteps * s.schedule.lr_max) << v.name << "[" << i - begin << "]";
      } else {
        diff = std::max(diff, d);
      }
    }
    const double e = scale > 0 ? diff / scale : diff;
    if (e >= r.worst.error) r.worst = {e, v.name};
  }
  return r;
}

// GPT-2's key bias gets no gradient (see compare_params): both sides must
// compute only rounding noise there.
void expect_key_bias_noise(const ModelConfig& c, const ParamLayout& layout, const Outcome& a,
                           const Outcome& b) {
  if (!c.has_bias()) return;
  for (int l = 0; l < c.n_layer; ++l) {
    const auto begin = static_cast<std::size_t>(layout.layer(l).qkv_b + c.d_model);
    for (std::size_t i = begin; i < begin + static_cast<std::size_t>(c.n_kv_head * c.head_dim());
         ++i) {
      EXPECT_LT(std::abs(b.grads[i]), 1e-12 * b.grad_norms[0]) << "key bias gradient";
      EXPECT_LT(std::abs(a.grads[i]), 1e-6 * b.grad_norms[0]) << "key bias gradient";
    }
  }
}

void TorchParity::expect_parity(const ModelConfig& config) {
  const Settings s;
  const ParamLayout layout(config);
  const auto [a, b] = outcomes(config);
  EXPECT_LT(std::abs(a.loss - b.loss) / std::abs(b.loss), kTolerance)
      << "loss " << a.loss << " vs torch " << b.loss;
  ASSERT_EQ(a.losses.size(), b.losses.size());
  EXPECT_LT(rel_error(a.losses, b.losses), kTolerance) << "per-token losses";

  const Worst g = worst_tensor(layout, a.grads, b.grads);
  EXPECT_LT(g.error, kTolerance) << "gradient of " << g.tensor;
  // Padded vocabulary rows get exactly zero gradient on both sides.
  const ParamView& head = layout.find(config.tied_embeddings ? "wte" : "lm_head.w");
  for (std::int64_t i = head.offset + std::int64_t{config.vocab_size} * config.d_model;
       i < head.offset + head.size; ++i) {
    ASSERT_EQ(a.grads[static_cast<std::size_t>(i)], 0.0f);
    ASSERT_EQ(b.grads[static_cast<std::size_t>(i)], 0.0f);
  }

  ASSERT_EQ(a.step_losses.size(), b.step_losses.size());
  for (std::size_t i = 0; i < a.step_losses.size(); ++i) {
    EXPECT_LT(std::abs(a.step_losses[i] - b.step_losses[i]) / b.step_losses[i], kTolerance)
        << "loss of step " << i;
    EXPECT_LT(std::abs(a.grad_norms[i] - b.grad_norms[i]) / b.grad_norms[i], kTolerance)
        << "gradient norm of step " << i;
  }
  // Clipping must have been exercised, and the steps must have moved the loss.
  EXPECT_GT(b.grad_norms[0], s.max_norm);
  EXPECT_LT(b.step_losses.back(), b.step_losses.front());

  expect_key_bias_noise(config, layout, a, b);
  const ParamComparison p = compare_params(layout, a, b, s);
  EXPECT_LT(p.worst.error, kTolerance)
      << "parameter " << p.worst.tensor << " after " << kSteps << " steps";
  EXPECT_LT(p.loose, layout.total() / 100);
  // The steps moved the parameters (otherwise the comparison above proves little).
  auto backend = make_cpu_backend<float>();
  const Model<float> fresh = make_model(config, *backend);
  const std::vector<float> before(fresh.params(), fresh.params() + fresh.num_params());
  for (const auto& v : layout.views()) {
    const auto n = static_cast<std::size_t>(v.size);
    const auto off = static_cast<std::size_t>(v.offset);
    EXPECT_GT(rel_error({before.data() + off, n}, {b.params.data() + off, n}), 10 * kTolerance)
        << v.name << " did not move";
  }
  std::printf(
      "  %s: loss %.6f vs %.6f; worst gradient error %.2e (%s), worst parameter error "
      "after %d steps %.2e (%s; %lld elements held to the AdamW bound)\n",
      config.name.c_str(), a.loss, b.loss, g.error, g.tensor.c_str(), kSteps, p.worst.error,
      p.worst.tensor.c_str(), static_cast<long long>(p.loose));
}

TEST_F(TorchParity, Gpt2Tiny) {
  REQUIRE_TORCH_RESULTS();
  expect_parity(model_preset("gpt2-tiny"));
}

TEST_F(TorchParity, LlamaTinyUntied) {
  REQUIRE_TORCH_RESULTS();
  expect_parity(model_preset("llama-tiny"));  // grouped-query attention, untied lm head
}

TEST_F(TorchParity, LlamaTinyTied) {
  REQUIRE_TORCH_RESULTS();
  expect_parity(llama_tiny_tied());
}

// The comparison notices a difference: one weight changed on Borealis's side
// after the weights went to PyTorch shows in the losses and gradients.
TEST_F(TorchParity, DetectsAWeightThatDiffers) {
  REQUIRE_TORCH_RESULTS();
  const ModelConfig config = model_preset("llama-tiny");
  const auto [a, b] =
      outcomes(config, [](Model<float>& m) { m.param("h.1.attn.qkv.w")[5] += 0.5f; });
  EXPECT_GT(rel_error(a.losses, b.losses), kTolerance);
  EXPECT_GT(worst_tensor(ParamLayout(config), a.grads, b.grads).error, kTolerance);
}

}  // namespace
}  // namespace borealis
