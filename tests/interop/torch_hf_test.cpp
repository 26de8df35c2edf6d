// The exported Hugging Face directories against PyTorch: a GPT-2 and a Llama
// written from transformers' module layout (tests/interop/
// torch_hf_reference.py, run with Debian's /usr/bin/python3 and
// python3-torch) load each export with load_state_dict(strict=True) and
// compute the logits of a token sequence in float64; Borealis's forward pass
// (KV-cache inference, all positions) on the same directory must agree.
//
// The relative error is max |borealis - torch| / max |torch| over all logits;
// float32 rounding in Borealis keeps it near 1e-6, and any layout mistake (a
// missing transpose, a q/k row permutation, swapped gate and up) makes it
// order one. Half-precision exports are compared the same way: both sides
// read the same rounded weights.
//
// Without PyTorch the tests are skipped, or fail when BOREALIS_REQUIRE_TORCH=1.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <fstream>

#include "interop/hf_checkpoint.h"
#include "interop/interop_fixture.h"
#include "model/inference.h"

namespace borealis {
namespace {

namespace fs = std::filesystem;

constexpr const char* kPython = "/usr/bin/python3";
constexpr double kTolerance = 1e-5;

struct Job {
  std::string name, family;
  TensorDtype dtype;
  std::uint64_t shard_bytes;
};

const std::vector<Job>& jobs() {
  static const std::vector<Job> j = {
      {"gpt2-f32", "gpt2", TensorDtype::kF32, 5'000'000'000},
      {"llama-f32", "llama", TensorDtype::kF32, 5'000'000'000},
      {"llama-tied-f32", "llama-tied", TensorDtype::kF32, 5'000'000'000},
      {"llama-bf16-sharded", "llama", TensorDtype::kBF16, 10'000},
      {"gpt2-f16", "gpt2", TensorDtype::kF16, 5'000'000'000},
  };
  return j;
}

std::vector<std::int32_t> tokens_for(int vocab) {
  std::vector<std::int32_t> ids;
  for (double x : test::random_vector(40, 17)) {
    ids.push_back(std::min(vocab - 1, static_cast<std::int32_t>((x + 1.0) / 2.0 * vocab)));
  }
  return ids;
}

class TorchHf : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = std::make_unique<test::TempDir>();
    const Tokenizer tok = test::interop_tokenizer();
    std::vector<std::string> args{std::string(BOREALIS_SOURCE_DIR) +
                                  "/tests/interop/torch_hf_reference.py"};
    for (const Job& job : jobs()) {
      const ModelConfig c = test::interop_config(job.family, static_cast<int>(tok.vocab_size()));
      const fs::path ckpt = *dir_ / (job.name + "-ckpt");
      test::write_interop_checkpoint(ckpt, c, test::interop_params(c, 9), tok);
      HfExportOptions o;
      o.dtype = job.dtype;
      o.shard_bytes = job.shard_bytes;
      export_hf(load_model_dir(ckpt), ckpt / "tokenizer.json", *dir_ / job.name, o);
      const nlohmann::json spec = {{"dir", (*dir_ / job.name).string()},
                                   {"tokens", tokens_for(c.vocab_size)},
                                   {"out", (*dir_ / (job.name + ".logits")).string()}};
      test::write_file(*dir_ / (job.name + ".json"), spec.dump());
      args.push_back((*dir_ / (job.name + ".json")).string());
    }
    if (!fs::exists(kPython)) {
      missing_ = std::string(kPython) + " does not exist";
      return;
    }
    const auto r = test::run_program(kPython, args);
    if (r.exit_code == 3) {
      missing_ = std::string(kPython) + " lacks torch or numpy: " + r.err;
    } else if (r.exit_code != 0) {
      failure_ =
          "torch_hf_reference.py exited with status " + std::to_string(r.exit_code) + ":\n" + r.err;
    }
  }
  static void TearDownTestSuite() { dir_.reset(); }

  void compare(const Job& job) {
    if (!missing_.empty()) {
      const char* require = std::getenv("BOREALIS_REQUIRE_TORCH");
      if (require != nullptr && std::string(require) == "1") {
        FAIL() << "BOREALIS_REQUIRE_TORCH=1 but " << missing_;
      }
      GTEST_SKIP() << missing_ << "; set BOREALIS_REQUIRE_TORCH=1 to make this a failure";
    }
    ASSERT_TRUE(failure_.empty()) << failure_;
    const LoadedModel m = load_hf_model(*dir_ / job.name);
    const auto ids = tokens_for(m.config.vocab_size);
    auto backend = make_cpu_backend<float>();
    Inference<float> run(m.config, m.params.data(), *backend);
    const auto logits = run.prefill(ids, /*all_positions=*/true);

    std::ifstream in(*dir_ / (job.name + ".logits"), std::ios::binary);
    std::vector<double> ref(logits.size());
    in.read(reinterpret_cast<char*>(ref.data()), static_cast<std::streamsize>(ref.size() * 8));
    ASSERT_EQ(in.gcount(), static_cast<std::streamsize>(ref.size() * 8)) << "logits file size";
    double diff = 0, scale = 0;
    for (std::size_t i = 0; i < ref.size(); ++i) {
      diff = std::max(diff, std::abs(logits[i] - ref[i]));
      scale = std::max(scale, std::abs(ref[i]));
    }
    EXPECT_GT(scale, 0.1) << "logits too small to tell layouts apart";
    EXPECT_LT(diff / scale, kTolerance) << job.name;
    std::printf("%s: %zu logits, max |borealis - torch| / max |torch| = %.2e\n", job.name.c_str(),
                ref.size(), diff / scale);
  }

  static inline std::unique_ptr<test::TempDir> dir_;
  static inline std::string missing_, failure_;
};

TEST_F(TorchHf, Gpt2F32) {
  compare(jobs()[0]);
}
TEST_F(TorchHf, LlamaGqaUntiedF32) {
  compare(jobs()[1]);
}
TEST_F(TorchHf, LlamaTiedF32) {
  compare(jobs()[2]);
}
TEST_F(TorchHf, LlamaBf16Sharded) {
  compare(jobs()[3]);
}
TEST_F(TorchHf, Gpt2F16) {
  compare(jobs()[4]);
}

}  // namespace
}  // namespace borealis
