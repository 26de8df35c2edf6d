// The model and the optimizer on a backend whose memory the host may not
// touch (GuardedBackend: the CPU's ops behind memory that is closed outside
// them), against the plain CPU backend: the same losses and parameters bit
// for bit. This runs, without a GPU, every path by which a GPU run moves
// data between the host and the backend (initialisation, tokens, targets,
// losses, the optimizer's moments and its norm).
#include <gtest/gtest.h>

#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "kernels/backend.h"
#include "kernels/guarded_backend.h"
#include "model/model.h"
#include "optim/adamw.h"

namespace borealis {
namespace {

std::vector<float> params_of(Backend<float>& be, const Model<float>& m) {
  std::vector<float> host(static_cast<std::size_t>(m.num_params()));
  be.download(host.data(), m.params(), host.size() * sizeof(float));
  return host;
}

class DeviceMemory : public ::testing::TestWithParam<std::string> {};

TEST_P(DeviceMemory, ModelAndOptimizerNeverTouchBackendMemoryFromTheHost) {
  ModelConfig c = model_preset(GetParam());
  const int B = 2, seq = 16, N = B * seq;
  auto cpu = make_cpu_backend<float>();
  test::GuardedBackend guarded;
  Model<float> plain(c, *cpu), closed(c, guarded);
  plain.init(11);
  closed.init(11);
  plain.set_loss_chunk_rows(12);  // several chunks of the loss head
  closed.set_loss_chunk_rows(12);
  AdamW opt_plain(*cpu, plain.layout(), AdamWConfig{});
  AdamW opt_closed(guarded, closed.layout(), AdamWConfig{});
  std::vector<std::int32_t> tokens(static_cast<std::size_t>(N) + 1);
  for (int step = 0; step < 3; ++step) {
    for (int i = 0; i <= N; ++i) tokens[i] = (i * 31 + step * 7) % c.vocab_size;
    plain.zero_grad();
    closed.zero_grad();
    const float a = plain.forward(tokens.data(), tokens.data() + 1, B, seq, true);
    const float b = closed.forward(tokens.data(), tokens.data() + 1, B, seq, true);
    EXPECT_EQ(a, b) << "step " << step;
    const auto la = plain.losses(), lb = closed.losses();
    EXPECT_EQ(std::vector<float>(la.begin(), la.end()), std::vector<float>(lb.begin(), lb.end()));
    plain.backward();
    closed.backward();
    const double na = clip_grad_norm(*cpu, plain.grads(), plain.num_params(), 0.5);
    const double nb = clip_grad_norm(guarded, closed.grads(), closed.num_params(), 0.5);
    EXPECT_EQ(na, nb);
    opt_plain.step(plain.params(), plain.grads(), 1e-2f);
    opt_closed.step(closed.params(), closed.grads(), 1e-2f);
  }
  EXPECT_EQ(params_of(guarded, closed),
            std::vector<float>(plain.params(), plain.params() + plain.num_params()));
}

INSTANTIATE_TEST_SUITE_P(Presets, DeviceMemory, ::testing::Values("gpt2-tiny", "llama-tiny"),
                         [](const auto& param_info) {
                           std::string n = param_info.param;
                           for (char& ch : n) ch = ch == '-' ? '_' : ch;
                           return n;
                         });

// The guard itself: a host read of the memory outside an op is a crash.
TEST(DeviceMemoryGuard, HostReadCrashes) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  test::GuardedBackend guarded;
  BackendArray<float> a(guarded, 16);
  const std::vector<float> one = {1.0f};
  guarded.upload(a.data(), one.data(), sizeof(float));
  std::vector<float> back(1);
  guarded.download(back.data(), a.data(), sizeof(float));
  EXPECT_EQ(back[0], 1.0f);
  EXPECT_DEATH(
      {
        const volatile float* p = a.data();
        std::printf("%f\n", static_cast<double>(*p));
      },
      "");
}

}  // namespace
}  // namespace borealis
