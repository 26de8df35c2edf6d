// A whole model on the CUDA backend against the same model on the CPU
// backend (fp32): the loss within 1e-4 relative, each parameter tensor's
// gradient within 1e-4 relative in norm (||gpu - cpu|| / ||cpu||), then
// AdamW steps on the device tracking the CPU's; and the GPU run repeating
// bit for bit. The "cuda" instances skip, with the reason printed, where no
// CUDA device can be used (a failure instead with BOREALIS_REQUIRE_CUDA
// set); the "emulated" ones run the CUDA backend's source on the CUDA
// emulator (tests/kernels/cuda_emulator/) everywhere.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <tuple>
#include <vector>

#include "core/error.h"
#include "kernels/backend.h"
#include "kernels/cuda/cuda_backend.h"
#include "kernels/cuda_emulator/cuda_emulator.h"
#include "kernels/cuda_emulator/emulated_cuda_backend.h"
#include "kernels/cuda_test_util.h"
#include "kernels/timed_backend.h"
#include "model/model.h"
#include "optim/adamw.h"

namespace borealis {
namespace {

struct Tokens {
  std::vector<std::int32_t> tokens, targets;
};

Tokens make_tokens(int N, int V, std::uint32_t seed) {
  Tokens t;
  std::uint32_t s = seed * 2654435761u + 1;
  for (int i = 0; i <= N; ++i) {
    s = s * 1664525u + 1013904223u;
    t.tokens.push_back(static_cast<std::int32_t>((s >> 8) % static_cast<std::uint32_t>(V)));
  }
  t.targets.assign(t.tokens.begin() + 1, t.tokens.end());
  t.tokens.pop_back();
  return t;
}

std::vector<float> download(Backend<float>& be, const float* p, std::int64_t n) {
  std::vector<float> host(static_cast<std::size_t>(n));
  be.download(host.data(), p, host.size() * sizeof(float));
  return host;
}

using test::relative_norm;

// Parameters: the backend ("cuda" or "emulated") and the model preset.
class CudaModel : public ::testing::TestWithParam<std::tuple<std::string, std::string>> {
 protected:
  void SetUp() override {
#ifdef BOREALIS_HAVE_CUDA_KERNELS
    if (std::get<0>(GetParam()) == "cuda") BOREALIS_SKIP_WITHOUT_CUDA();
#endif
    gpu = make_gpu(Precision::kFp32);
  }
  // The backend under test with its matmuls in `precision`.
  static std::unique_ptr<Backend<float>> make_gpu(Precision precision) {
    if (std::get<0>(GetParam()) == "emulated") return emulated::make_cuda_backend(0, precision);
#ifdef BOREALIS_HAVE_CUDA_KERNELS
    return make_cuda_backend(0, precision);
#else
    throw std::logic_error("no CUDA backend in this build");
#endif
  }
  static ModelConfig preset() {
    return model_preset(std::get<1>(GetParam()));
  }
  std::unique_ptr<Backend<float>> cpu = make_cpu_backend<float>();
  std::unique_ptr<Backend<float>> gpu;
};

TEST_P(CudaModel, LossGradientsAndStepsMatchTheCpu) {
  ModelConfig c = preset();
  const int B = 2, seq = 64, N = B * seq;
  c.max_seq = std::max(c.max_seq, seq);
  Model<float> on_cpu(c, *cpu), on_gpu(c, *gpu);
  on_cpu.init(7);
  on_gpu.init(7);  // the same seeded values, written from the host
  const std::int64_t P = on_cpu.num_params();
  EXPECT_EQ(download(*gpu, on_gpu.params(), P),
            std::vector<float>(on_cpu.params(), on_cpu.params() + P));

  AdamWConfig oc;
  AdamW opt_cpu(*cpu, on_cpu.layout(), oc), opt_gpu(*gpu, on_gpu.layout(), oc);
  for (int step = 0; step < 3; ++step) {
    const Tokens t = make_tokens(N, c.vocab_size, 10 + step);
    on_cpu.zero_grad();
    on_gpu.zero_grad();
    const float lc = on_cpu.forward(t.tokens.data(), t.targets.data(), B, seq, true);
    const float lg = on_gpu.forward(t.tokens.data(), t.targets.data(), B, seq, true);
    EXPECT_NEAR(lg, lc, 1e-4 * std::abs(lc)) << "step " << step;
    const auto losses = on_gpu.losses();
    ASSERT_EQ(losses.size(), static_cast<std::size_t>(N));
    on_cpu.backward();
    on_gpu.backward();
    const std::vector<float> g = download(*gpu, on_gpu.grads(), P);
    for (const ParamView& v : on_cpu.layout().views()) {
      EXPECT_LE(relative_norm(g.data() + v.offset, on_cpu.grads() + v.offset, v.size), 1e-4)
          << v.name << ", step " << step;
    }
    const double nc = clip_grad_norm(*cpu, on_cpu.grads(), P, 1.0);
    const double ng = clip_grad_norm(*gpu, on_gpu.grads(), P, 1.0);
    EXPECT_NEAR(ng, nc, 1e-4 * nc);
    opt_cpu.step(on_cpu.params(), on_cpu.grads(), 1e-3f);
    opt_gpu.step(on_gpu.params(), on_gpu.grads(), 1e-3f);
  }
  EXPECT_LE(relative_norm(download(*gpu, on_gpu.params(), P).data(), on_cpu.params(), P), 1e-5);
}

TEST_P(CudaModel, RepeatsBitForBit) {
  ModelConfig c = preset();
  const int B = 2, seq = 32;
  c.max_seq = std::max(c.max_seq, seq);
  const Tokens t = make_tokens(B * seq, c.vocab_size, 3);
  std::vector<std::vector<float>> runs;
  for (int run = 0; run < 2; ++run) {
    Model<float> m(c, *gpu);
    m.init(5);
    AdamW opt(*gpu, m.layout(), AdamWConfig{});
    for (int step = 0; step < 2; ++step) {
      m.zero_grad();
      m.forward(t.tokens.data(), t.targets.data(), B, seq, true);
      m.backward();
      opt.step(m.params(), m.grads(), 1e-3f);
    }
    runs.push_back(download(*gpu, m.params(), m.num_params()));
  }
  EXPECT_EQ(runs[0], runs[1]);
}

// Mixed precision (bf16 matmul operands, the activations backend.h's
// Bf16Inputs keeps in bf16, attention on tensor cores; fp32 master weights,
// optimizer state and loss) against the CPU's fp32: the loss within 1e-3
// relative (measured on the emulator: up to 1.7e-5; the issue asks 1e-2),
// each tensor's gradient within 5e-2 relative in norm (measured: up to
// 1.6e-2), and the parameters after three AdamW steps within 5e-3
// (measured: 1.4e-3); a second bf16 run gives the same bits. The test
// prints its figures.
TEST_P(CudaModel, Bf16MatmulsTrackFp32) {
  ModelConfig c = preset();
  const int B = 2, seq = 32, N = B * seq;
  c.max_seq = std::max(c.max_seq, seq);
  std::vector<std::vector<float>> runs;
  double worst_loss = 0, worst_grad = 0;
  for (int run = 0; run < 2; ++run) {
    const auto bf16 = make_gpu(Precision::kBf16);
    Model<float> on_cpu(c, *cpu), on_gpu(c, *bf16);
    on_cpu.init(7);
    on_gpu.init(7);
    const std::int64_t P = on_cpu.num_params();
    AdamW opt_cpu(*cpu, on_cpu.layout(), AdamWConfig{}),
        opt_gpu(*bf16, on_gpu.layout(), AdamWConfig{});
    for (int step = 0; step < 3; ++step) {
      const Tokens t = make_tokens(N, c.vocab_size, 20 + step);
      on_cpu.zero_grad();
      on_gpu.zero_grad();
      const float lc = on_cpu.forward(t.tokens.data(), t.targets.data(), B, seq, true);
      const float lg = on_gpu.forward(t.tokens.data(), t.targets.data(), B, seq, true);
      EXPECT_NEAR(lg, lc, 1e-3 * std::abs(lc)) << "step " << step;
      worst_loss = std::max(worst_loss, std::abs(static_cast<double>(lg) - lc) / std::abs(lc));
      on_cpu.backward();
      on_gpu.backward();
      const std::vector<float> g = download(*bf16, on_gpu.grads(), P);
      for (const ParamView& v : on_cpu.layout().views()) {
        const double e = relative_norm(g.data() + v.offset, on_cpu.grads() + v.offset, v.size);
        worst_grad = std::max(worst_grad, e);
        EXPECT_LE(e, 5e-2) << v.name << ", step " << step;
      }
      opt_cpu.step(on_cpu.params(), on_cpu.grads(), 1e-3f);
      opt_gpu.step(on_gpu.params(), on_gpu.grads(), 1e-3f);
    }
    runs.push_back(download(*bf16, on_gpu.params(), P));
    const double params_off = relative_norm(runs.back().data(), on_cpu.params(), P);
    EXPECT_LE(params_off, 5e-3);
    if (run == 0) {
      fmt::print(
          "[ measured ] bf16 against the CPU's fp32 over 3 steps: loss {:.2e}, gradients up to "
          "{:.2e}, parameters {:.2e} relative\n",
          worst_loss, worst_grad, params_off);
    }
  }
  EXPECT_EQ(runs[0], runs[1]);
}

// bf16 matmul inputs (Bf16Inputs): the norms' outputs and the MLP
// activation written in bf16 by the ops that make them, and qkv, the
// attention output and its gradient kept in bf16 for attention's
// tensor-core kernels (which round them as they read them, and compute
// delta from them rounded), against the same backend with
// only qkv in fp32: the same values go into the same GEMMs and kernels, so
// on the emulator two steps give the same losses, gradients and parameters
// bit for bit. GPT-2 is the exception in one tensor: with qkv in bf16,
// attention's backward writes the qkv gradient in bf16 too, and the qkv
// bias gradient sums those rounded values (within 1e-2 relative in norm;
// measured on the emulator: 4.9e-4), so from the second step on its two
// runs compare within the tolerances below. On a GPU cuBLASLt may pick
// another algorithm for an input less aligned than its scratch copy, or for
// a bf16 output, which changes the fp32 sums' order: the loss within 1e-5,
// each gradient within 1e-4 relative in norm. The MLP's pre-activation and
// its gradient, and the logits, are kept in bf16 too, which rounds them
// where fp32 activations (the same backend with bf16 inputs hidden, each
// matmul rounding its operands) do not: the loss within 1e-4 of that, each
// gradient within 3e-2 relative in norm (measured on the emulator: the loss
// up to 1.6e-5; the gradients up to 4.7e-3 in the first step, 1.41e-2 in
// the second, after an AdamW step from those gradients, on the norms'
// weights and biases). The activations take less memory: qkv's bf16 form
// saves 2 bytes a value per layer (Llama keeps one fp32 qkv for all
// layers, RoPE's input), the attention output kept in bf16 only 4 bytes a
// value per layer, and the attention output's and (GPT-2) qkv's bf16
// gradients 2 bytes a value once.
TEST_P(CudaModel, Bf16InputsEqualRoundingInTheMatmuls) {
  struct Hidden final : TimedBackend<float> {
    using TimedBackend<float>::TimedBackend;
    Bf16Inputs<float>* bf16_inputs() override { return nullptr; }
  };
  struct Fp32Qkv final : TimedBackend<float> {
    using TimedBackend<float>::TimedBackend;
    bool attention_reads_bf16_qkv(int, int, int, int) const override { return false; }
  };
  // Each matmul rounding its weights itself.
  struct NoWeightCopy final : TimedBackend<float> {
    using TimedBackend<float>::TimedBackend;
    void use_weight_copy(const float*, std::uint16_t*, std::int64_t, bool) override {}
  };
  ModelConfig c = preset();
  const int B = 2, seq = 32, N = B * seq;
  c.max_seq = std::max(c.max_seq, seq);
  const bool exact = std::get<0>(GetParam()) == "emulated";
  const bool gpt2 = c.family == ModelFamily::kGpt2;
  const auto bf16 = make_gpu(Precision::kBf16);
  ASSERT_NE(bf16->bf16_inputs(), nullptr);
  EXPECT_EQ(gpu->bf16_inputs(), nullptr);  // fp32 matmuls take fp32 inputs
  Hidden hidden(*bf16);
  Fp32Qkv fp32_qkv(*bf16);
  NoWeightCopy no_copy(*bf16);
  hidden.set_timing(false);
  fp32_qkv.set_timing(false);
  no_copy.set_timing(false);
  Model<float> with(c, *bf16), without(c, hidden), qkv32(c, fp32_qkv), rounding(c, no_copy);
  std::vector<Model<float>*> others{&qkv32, &without, &rounding};
  // The rounding passes (on the emulator, which counts launches) of a
  // micro-batch's forward and backward.
  std::uint64_t roundings = 0;
  const auto count_roundings = [&](auto&& run) {
    const std::uint64_t before = cuda_emulator::launches("bf16 copy");
    run();
    roundings = cuda_emulator::launches("bf16 copy") - before;
  };
  const std::int64_t P = with.num_params();
  AdamW opt(*bf16, with.layout(), AdamWConfig{});
  std::vector<std::unique_ptr<AdamW>> other_opts;
  with.init(9);
  for (Model<float>* m : others) {
    m->init(9);
    other_opts.push_back(std::make_unique<AdamW>(*bf16, m->layout(), AdamWConfig{}));
  }
  for (int step = 0; step < 2; ++step) {
    const Tokens t = make_tokens(N, c.vocab_size, 40 + step);
    with.zero_grad();
    float lw = 0;
    count_roundings([&] {
      lw = with.forward(t.tokens.data(), t.targets.data(), B, seq, true);
      with.backward();
    });
    const std::uint64_t with_roundings = roundings;
    // Every GEMM operand comes in bf16 (the activations and gradients as
    // the ops that make them write them, the residual stream's gradient as
    // the norms' backward leave it): the one rounding pass is the weights'.
    if (exact) {
      EXPECT_EQ(with_roundings, 1u) << "step " << step;
    }
    const auto gw = download(*bf16, with.grads(), P);
    for (std::size_t i = 0; i < others.size(); ++i) {
      Model<float>& m = *others[i];
      const bool hidden_inputs = &m == &without;
      const bool no_weight_copy = &m == &rounding;
      SCOPED_TRACE(hidden_inputs    ? "against bf16 inputs hidden"
                   : no_weight_copy ? "against no copy of the weights"
                                    : "against qkv in fp32");
      m.zero_grad();
      float lo = 0;
      count_roundings([&] {
        lo = m.forward(t.tokens.data(), t.targets.data(), B, seq, true);
        m.backward();
      });
      const auto go = download(*bf16, m.grads(), P);
      if (exact && no_weight_copy) {
        // Each weight GEMM's rounding (four a layer and the lm head's, each
        // way) gives way to one of all the weights.
        const auto chunks =
            static_cast<std::uint64_t>((N + with.loss_chunk_rows() - 1) / with.loss_chunk_rows());
        EXPECT_EQ(roundings - with_roundings, 8 * c.n_layer + 2 * chunks - 1);
      }
      if (exact && !hidden_inputs && (!gpt2 || step == 0 || no_weight_copy)) {
        EXPECT_EQ(lw, lo) << "step " << step;
        for (const ParamView& v : with.layout().views()) {
          const auto w0 = gw.begin() + v.offset, o0 = go.begin() + v.offset;
          if (gpt2 && !no_weight_copy && v.name.ends_with("attn.qkv.b")) {
            const double e = relative_norm(&*w0, &*o0, v.size);
            EXPECT_LE(e, 1e-2) << v.name;
            fmt::print("[ measured ] {}: {:.2e} relative in norm (summed in bf16)\n", v.name, e);
          } else {
            EXPECT_TRUE(std::equal(w0, w0 + v.size, o0)) << v.name << ", step " << step;
          }
        }
      } else {
        const bool loose = hidden_inputs || (gpt2 && !no_weight_copy);
        EXPECT_NEAR(lw, lo, (loose ? 1e-4 : 1e-5) * std::abs(lo)) << "step " << step;
        double worst = 0;
        for (const ParamView& v : with.layout().views()) {
          const double e = relative_norm(gw.data() + v.offset, go.data() + v.offset, v.size);
          worst = std::max(worst, e);
          EXPECT_LE(e, loose ? 3e-2 : 1e-4) << v.name << ", step " << step;
        }
        fmt::print("[ {} ] step {}: loss {:.3g} relative, worst gradient {:.3g} relative in norm\n",
                   hidden_inputs    ? "bf16 inputs hidden"
                   : no_weight_copy ? "no weight copy"
                                    : "qkv in fp32",
                   step, std::abs(lw - lo) / std::abs(lo), worst);
      }
      other_opts[i]->step(m.params(), m.grads(), 1e-3f);
    }
    opt.step(with.params(), with.grads(), 1e-3f);
  }
  if (exact && !gpt2) {
    EXPECT_EQ(download(*bf16, with.params(), P), download(*bf16, qkv32.params(), P));
  }
  if (exact) {
    EXPECT_EQ(download(*bf16, with.params(), P), download(*bf16, rounding.params(), P));
  }
  EXPECT_LT(with.activation_bytes(), without.activation_bytes());
  EXPECT_LT(qkv32.activation_bytes(), without.activation_bytes());
  const std::size_t qkv_values = static_cast<std::size_t>(N) * c.qkv_width();
  const std::size_t att_values = static_cast<std::size_t>(N) * c.n_head * c.head_dim();
  // Per layer qkv in 2 bytes instead of 4 and no fp32 attention output;
  // the attention output's gradient in 2 bytes; the qkv gradient in bf16
  // only (GPT-2: 2 bytes instead of 4; Llama: no fp32 one beside it, as
  // large as the fp32 qkv its RoPE reads).
  const std::size_t saved =
      c.n_layer * (qkv_values * 2 + att_values * 4) + att_values * 2 + (gpt2 ? qkv_values * 2 : 0);
  EXPECT_EQ(qkv32.activation_bytes() - with.activation_bytes(), saved);
}

// With the parameters held (a training step's micro-batches), the weights'
// bf16 copy is rounded at the first forward only, and the gradients are the
// bits of a model that rounds it at every forward; after the hold, an
// update and a new hold, the first forward rounds again (it reads the
// updated weights).
TEST_P(CudaModel, HeldParamsRoundTheWeightsOnce) {
  ModelConfig c = preset();
  const int B = 2, seq = 16, N = B * seq, micro = 3;
  c.max_seq = std::max(c.max_seq, seq);
  const bool exact = std::get<0>(GetParam()) == "emulated";
  const auto bf16 = make_gpu(Precision::kBf16);
  Model<float> held_model(c, *bf16), plain(c, *bf16);
  const std::int64_t P = held_model.num_params();
  held_model.init(5);
  plain.init(5);
  AdamW opt_held(*bf16, held_model.layout(), AdamWConfig{});
  AdamW opt_plain(*bf16, plain.layout(), AdamWConfig{});
  for (int step = 0; step < 2; ++step) {
    SCOPED_TRACE("step " + std::to_string(step));
    held_model.zero_grad();
    plain.zero_grad();
    {
      const auto held = held_model.hold_params();
      EXPECT_THROW(static_cast<void>(held_model.hold_params()), std::logic_error);
      for (int m = 0; m < micro; ++m) {
        const Tokens t = make_tokens(N, c.vocab_size, 70 + 10 * step + m);
        const std::uint64_t before = cuda_emulator::launches("bf16 copy");
        const float lh =
            held_model.forward(t.tokens.data(), t.targets.data(), B, seq, true, 1.0f / micro);
        held_model.backward();
        if (exact) {
          EXPECT_EQ(cuda_emulator::launches("bf16 copy") - before, m == 0 ? 1u : 0u)
              << "micro-batch " << m;
        }
        const float lp =
            plain.forward(t.tokens.data(), t.targets.data(), B, seq, true, 1.0f / micro);
        plain.backward();
        EXPECT_EQ(lh, lp) << "micro-batch " << m;
      }
    }
    EXPECT_EQ(download(*bf16, held_model.grads(), P), download(*bf16, plain.grads(), P));
    opt_held.step(held_model.params(), held_model.grads(), 1e-2f);
    opt_plain.step(plain.params(), plain.grads(), 1e-2f);
  }
  EXPECT_EQ(download(*bf16, held_model.params(), P), download(*bf16, plain.params(), P));
}

TEST_P(CudaModel, ParallelGroupsNeedHostMemory) {
  const ModelConfig c = preset();
  EXPECT_THROW(Model<float>(c, *gpu, nullptr, PipelineStage{0, 2}), Error);
}

// The emulated device's memory limited to `bytes` for a scope.
class MemoryLimit {
 public:
  explicit MemoryLimit(std::size_t bytes) { cuda_emulator::set_memory_limit(bytes); }
  ~MemoryLimit() { cuda_emulator::set_memory_limit(0); }
  MemoryLimit(const MemoryLimit&) = delete;
  MemoryLimit& operator=(const MemoryLimit&) = delete;
};

// Bytes allocated on the emulated device now.
std::size_t device_bytes_in_use() {
  std::size_t free = 0, total = 0;
  cudaMemGetInfo(&free, &total);
  return total - free;
}

// What the message of an OutOfDeviceMemory thrown by `run` says, or "".
template <typename Run>
std::string out_of_memory_message(Run&& run) {
  try {
    run();
  } catch (const OutOfDeviceMemory& e) {
    EXPECT_EQ(e.where(), "cuda");
    EXPECT_GT(e.bytes(), 0u);
    return e.message();
  }
  return "";
}

// A device too small for what training asks of it: the error names what
// did not fit (the parameters, a micro-batch's activations, the optimizer's
// moments), how much that is and what the device has free, and says what
// takes less; after the activations did not fit, a smaller micro-batch
// still runs on the same model.
TEST(CudaMemory, OutOfDeviceMemorySaysWhatDidNotFit) {
  const std::unique_ptr<Backend<float>> gpu = emulated::make_cuda_backend(0, Precision::kFp32);
  const ModelConfig c = model_preset("gpt2-tiny");
  const std::size_t base = device_bytes_in_use();
  std::string said;
  {
    const MemoryLimit limit(base + 1000);
    said = out_of_memory_message([&] { Model<float> m(c, *gpu); });
  }
  EXPECT_NE(said.find("the parameters and their gradients ("), std::string::npos) << said;
  EXPECT_NE(said.find(": out of GPU memory: an allocation of "), std::string::npos) << said;
  EXPECT_NE(said.find("does not fit on GPU 0, which has "), std::string::npos) << said;

  Model<float> model(c, *gpu);
  model.init(1);
  const int seq = c.max_seq;
  const Tokens big = make_tokens(64 * seq, c.vocab_size, 3);
  const Tokens small = make_tokens(2 * 8, c.vocab_size, 4);
  // (The backend's scratch, such as cuBLASLt's workspace, comes with the
  // first step.)
  model.forward(small.tokens.data(), small.targets.data(), 2, 8, true);
  model.backward();
  {
    // 1 MiB beyond the parameters: two sequences of 8 tokens fit, 64 of
    // max_seq do not.
    const MemoryLimit limit(device_bytes_in_use() + (1u << 20));
    said = out_of_memory_message(
        [&] { model.forward(big.tokens.data(), big.targets.data(), 64, seq, true); });
    EXPECT_NE(said.find(fmt::format("the activations of 64 sequences of {} tokens need ", seq)),
              std::string::npos)
        << said;
    EXPECT_NE(said.find("MiB free of "), std::string::npos) << said;
    EXPECT_NE(said.find("; fewer sequences per micro-batch take less"), std::string::npos) << said;
    const float loss = model.forward(small.tokens.data(), small.targets.data(), 2, 8, true);
    EXPECT_TRUE(std::isfinite(loss));
    model.backward();
  }
  {
    const MemoryLimit limit(device_bytes_in_use() + 1000);
    said = out_of_memory_message([&] { AdamW opt(*gpu, model.layout(), AdamWConfig{}); });
  }
  EXPECT_NE(said.find("the optimizer's moments (2 x "), std::string::npos) << said;
  EXPECT_NE(said.find("ZeRO-1 (dist.zero = 1)"), std::string::npos) << said;
}

INSTANTIATE_TEST_SUITE_P(Presets, CudaModel,
                         ::testing::Combine(::testing::ValuesIn(test::gpu_backends_under_test()),
                                            ::testing::Values("gpt2-tiny", "llama-tiny")),
                         [](const auto& param_info) {
                           std::string n =
                               std::get<1>(param_info.param) + "_" + std::get<0>(param_info.param);
                           for (char& ch : n) ch = ch == '-' ? '_' : ch;
                           return n;
                         });

}  // namespace
}  // namespace borealis
