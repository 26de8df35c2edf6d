// KV-cache inference against the training forward pass: for random tiny
// GPT-2 and Llama models, -log_softmax(logits)[target] from prefill, from
// token-by-token decode and from mixes of the two equals Model::losses() at
// every position; plus checkpoint loading and the errors of both.
#include "model/inference.h"

#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>

#include "core/error.h"
#include "kernels/gradcheck.h"
#include "model/checkpoint_load.h"
#include "model/model.h"
#include "model/safetensors.h"
#include "test_util.h"

namespace borealis {
namespace {

std::vector<std::int32_t> random_ids(int n, int vocab, std::uint64_t seed) {
  std::vector<std::int32_t> ids;
  for (double x : test::random_vector(static_cast<std::size_t>(n), seed)) {
    ids.push_back(static_cast<std::int32_t>((x + 1.0) / 2.0 * (vocab - 1)));
  }
  return ids;
}

// -log softmax(logits)[target], in double.
template <typename T>
double nll(std::span<const T> logits, std::int32_t target) {
  double mx = -INFINITY;
  for (T v : logits) mx = std::max(mx, static_cast<double>(v));
  double sum = 0;
  for (T v : logits) sum += std::exp(static_cast<double>(v) - mx);
  return mx + std::log(sum) - static_cast<double>(logits[static_cast<std::size_t>(target)]);
}

// The per-position losses of Model::forward for tokens -> targets.
template <typename T>
struct Reference {
  ModelConfig config;
  std::unique_ptr<Backend<T>> backend = make_cpu_backend<T>();
  std::unique_ptr<Model<T>> model;
  std::vector<std::int32_t> tokens, targets;
  std::vector<double> losses;

  Reference(const ModelConfig& c, int seq, std::uint64_t seed) : config(c) {
    model = std::make_unique<Model<T>>(config, *backend);
    model->init(seed);
    // Weights 4x the init scale: logits far from uniform, so that any
    // difference in the math shows in the losses.
    for (std::int64_t i = 0; i < model->num_params(); ++i) model->params()[i] *= T(4);
    const auto ids = random_ids(seq + 1, config.vocab_size, seed + 100);
    tokens.assign(ids.begin(), ids.end() - 1);
    targets.assign(ids.begin() + 1, ids.end());
    model->forward(tokens.data(), targets.data(), 1, seq, false);
    for (T l : model->losses()) losses.push_back(static_cast<double>(l));
  }
};

// Runs the sequence through an Inference in pieces: each entry of `pieces`
// is a prefill of that many tokens (with all_positions), 1 meaning a decode
// step; checks every position's loss.
template <typename T>
void check_pieces(Reference<T>& ref, Inference<T>& run, const std::vector<int>& pieces,
                  double tol) {
  const auto V = static_cast<std::size_t>(ref.config.vocab_size);
  int pos = run.position();
  for (int n : pieces) {
    ASSERT_LE(pos + n, static_cast<int>(ref.tokens.size()));
    std::span<const std::int32_t> ids(ref.tokens.data() + pos, static_cast<std::size_t>(n));
    std::span<const T> logits = n == 1 ? run.decode(ids[0]) : run.prefill(ids, true);
    ASSERT_EQ(logits.size(), static_cast<std::size_t>(n) * V);
    for (int i = 0; i < n; ++i) {
      const double got = nll(logits.subspan(static_cast<std::size_t>(i) * V, V),
                             ref.targets[static_cast<std::size_t>(pos + i)]);
      EXPECT_NEAR(got, ref.losses[static_cast<std::size_t>(pos + i)], tol)
          << ref.config.name << " position " << pos + i;
    }
    pos += n;
    EXPECT_EQ(run.position(), pos);
  }
}

std::vector<int> operator+(std::vector<int> a, const std::vector<int>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

template <typename T>
void check_family(const std::string& preset, double tol) {
  const ModelConfig config = model_preset(preset);
  const int seq = 40;
  Reference<T> ref(config, seq, 7);
  Inference<T> run(config, ref.model->params(), *ref.backend);
  EXPECT_EQ(run.capacity(), config.max_seq);
  check_pieces(ref, run, {seq}, tol);  // whole-sequence prefill
  run.reset();
  check_pieces(ref, run, std::vector<int>(seq, 1), tol);  // token by token
  run.reset();
  check_pieces(ref, run, std::vector<int>{5} + std::vector<int>(seq - 5, 1), tol);
  run.reset();
  check_pieces(ref, run, {5, 7, 1, 1, 13, 1, 12}, tol);  // prefills after decodes too
  // Rewinding to a prefix gives the same logits again.
  run.truncate(12);
  check_pieces(ref, run, {1, 27}, tol);

  // Default prefill: the last token's logits only.
  run.reset();
  const auto last = run.prefill(ref.tokens);
  ASSERT_EQ(last.size(), static_cast<std::size_t>(config.vocab_size));
  EXPECT_NEAR(nll(last, ref.targets.back()), ref.losses.back(), tol);
}

TEST(Inference, Gpt2MatchesTrainingForwardInDouble) {
  check_family<double>("gpt2-tiny", 1e-10);
}
TEST(Inference, LlamaMatchesTrainingForwardInDouble) {
  check_family<double>("llama-tiny", 1e-10);
}
TEST(Inference, Gpt2MatchesTrainingForwardInFloat) {
  check_family<float>("gpt2-tiny", 3e-5);
}
TEST(Inference, LlamaMatchesTrainingForwardInFloat) {
  check_family<float>("llama-tiny", 3e-5);
}

TEST(Inference, LongPromptsRunInChunks) {
  // Longer than one pass of prefill rows (256): chunk boundaries must not show.
  for (const std::string preset : {"gpt2-tiny", "llama-tiny"}) {
    ModelConfig config = model_preset(preset);
    config.max_seq = 320;
    const int seq = 300;
    Reference<double> ref(config, seq, 3);
    Inference<double> run(config, ref.model->params(), *ref.backend);
    check_pieces(ref, run, {seq}, 1e-10);
    run.reset();
    check_pieces(ref, run, {250, 1, 49}, 1e-10);
  }
}

TEST(Inference, UntiedLlamaWithoutGroupingAndTiedLlama) {
  ModelConfig mha = model_preset("llama-tiny");
  mha.n_kv_head = mha.n_head;
  ModelConfig tied = model_preset("llama-tiny");
  tied.tied_embeddings = true;
  for (const ModelConfig& config : {mha, tied}) {
    Reference<double> ref(config, 20, 11);
    Inference<double> run(config, ref.model->params(), *ref.backend);
    check_pieces(ref, run, {3, 1, 1, 15}, 1e-10);
  }
}

TEST(Inference, ContextAndTokenErrors) {
  const ModelConfig config = model_preset("gpt2-tiny");  // max_seq 64, vocab 97
  Reference<float> ref(config, 8, 1);
  EXPECT_THROW(Inference<float>(config, ref.model->params(), *ref.backend, 65), Error);
  Inference<float> run(config, ref.model->params(), *ref.backend, 10);
  EXPECT_EQ(run.capacity(), 10);
  const std::vector<std::int32_t> eight(8, 1);
  run.prefill(eight);
  const std::string line = test::error_line([&] { run.prefill(std::vector<std::int32_t>(3, 1)); });
  EXPECT_NE(line.find("context of 11 tokens (8 cached + 3 new) exceeds the model's context of "
                      "10 tokens"),
            std::string::npos)
      << line;
  EXPECT_EQ(run.position(), 8);  // unchanged by the failed call
  EXPECT_NE(test::error_line([&] { run.decode(97); }).find("outside the vocabulary [0, 97)"),
            std::string::npos);
  EXPECT_THROW(run.decode(-1), Error);
  EXPECT_THROW(run.prefill({}), Error);
  run.decode(5);
  run.decode(6);
  EXPECT_THROW(run.decode(7), Error);  // full
  EXPECT_EQ(run.position(), 10);
}

// Three sequences of one model, each run in the same pieces, once each on
// its own and once with the pieces of all three in one batched pass (and on
// other cache blocks): the logits must be the same bits, and match the
// training forward.
TEST(BatchInference, BatchedSegmentsGiveTheSameBitsAsEachSequenceAlone) {
  for (const std::string preset : {"gpt2-tiny", "llama-tiny"}) {
    const ModelConfig config = model_preset(preset);
    const int seq = 30;
    std::vector<std::unique_ptr<Reference<float>>> refs;
    for (std::uint64_t seed : {5, 6, 7})
      refs.push_back(std::make_unique<Reference<float>>(config, seq, seed));
    // One set of weights (the first model's); the other references give
    // token sequences and are re-scored with those weights.
    const float* params = refs[0]->model->params();
    for (std::size_t i = 1; i < refs.size(); ++i) {
      std::copy(params, params + refs[0]->model->num_params(), refs[i]->model->params());
      refs[i]->model->forward(refs[i]->tokens.data(), refs[i]->targets.data(), 1, seq, false);
      refs[i]->losses.clear();
      for (float l : refs[i]->model->losses()) refs[i]->losses.push_back(l);
    }
    const std::vector<std::vector<int>> pieces{
        {10, 1, 1, 17, 1}, {3, 1, 20, 1, 5}, {1, 29, 0, 0, 0}};
    const auto V = static_cast<std::size_t>(config.vocab_size);
    BatchInference<float> run(config, params, *refs[0]->backend);
    using Segment = BatchInference<float>::Segment;

    // Alone: sequence s on blocks of its own.
    std::vector<std::vector<float>> alone(3);
    {
      KvCache<float> cache(config, 16, 8);
      for (int s = 0; s < 3; ++s) {
        std::vector<std::int32_t> blocks;
        for (int b = 0; b < cache.blocks_for(seq); ++b) blocks.push_back(cache.allocate());
        int pos = 0;
        for (int n : pieces[static_cast<std::size_t>(s)]) {
          if (n == 0) continue;
          const Segment seg{std::span(refs[static_cast<std::size_t>(s)]->tokens).subspan(pos, n),
                            pos, blocks, true};
          const auto logits = run.forward(cache, std::span(&seg, 1));
          alone[static_cast<std::size_t>(s)].insert(alone[static_cast<std::size_t>(s)].end(),
                                                    logits.begin(), logits.end());
          pos += n;
        }
        for (std::int32_t b : blocks) cache.release(b);
      }
    }
    // Batched: step k runs piece k of every sequence; blocks interleaved.
    std::vector<std::vector<float>> batched(3);
    KvCache<float> cache(config, 20, 8);
    std::vector<std::vector<std::int32_t>> blocks(3);
    for (int b = 0; b < cache.blocks_for(seq); ++b) {
      for (auto& t : blocks) t.push_back(cache.allocate());
    }
    std::vector<int> pos(3, 0);
    for (std::size_t k = 0; k < pieces[0].size(); ++k) {
      std::vector<Segment> segs;
      std::vector<int> who;
      for (int s = 2; s >= 0; --s) {  // another order than alone
        const int n = pieces[static_cast<std::size_t>(s)][k];
        if (n == 0) continue;
        segs.push_back({std::span(refs[static_cast<std::size_t>(s)]->tokens).subspan(pos[s], n),
                        pos[s], blocks[s], true});
        who.push_back(s);
        pos[s] += n;
      }
      const auto logits = run.forward(cache, segs);
      std::size_t at = 0;
      for (std::size_t i = 0; i < segs.size(); ++i) {
        const std::size_t len = segs[i].tokens.size() * V;
        auto& dst = batched[static_cast<std::size_t>(who[i])];
        dst.insert(dst.end(), logits.begin() + at, logits.begin() + at + len);
        at += len;
      }
    }
    for (int s = 0; s < 3; ++s) {
      const auto& a = alone[static_cast<std::size_t>(s)];
      const auto& b = batched[static_cast<std::size_t>(s)];
      ASSERT_EQ(a.size(), static_cast<std::size_t>(seq) * V);
      ASSERT_EQ(b.size(), a.size());
      for (std::size_t i = 0; i < a.size(); ++i) {
        ASSERT_EQ(a[i], b[i]) << preset << " sequence " << s << " logit " << i;
      }
      for (int t = 0; t < seq; ++t) {
        const double got =
            nll(std::span<const float>(a).subspan(static_cast<std::size_t>(t) * V, V),
                refs[static_cast<std::size_t>(s)]->targets[static_cast<std::size_t>(t)]);
        EXPECT_NEAR(got, refs[static_cast<std::size_t>(s)]->losses[static_cast<std::size_t>(t)],
                    3e-5)
            << preset << " sequence " << s << " position " << t;
      }
    }
  }
}

TEST(KvCache, BlocksComeLowestFirstAndReturn) {
  const ModelConfig config = model_preset("llama-tiny");
  KvCache<float> cache(config, 4, 16);
  EXPECT_EQ(cache.blocks_for(33), 3);
  EXPECT_EQ(cache.allocate(), 0);
  EXPECT_EQ(cache.allocate(), 1);
  EXPECT_EQ(cache.allocate(), 2);
  cache.release(1);
  EXPECT_EQ(cache.free_blocks(), 2);
  EXPECT_EQ(cache.allocate(), 1);
  EXPECT_EQ(cache.allocate(), 3);
  EXPECT_EQ(cache.allocate(), -1);
  EXPECT_THROW(cache.release(7), std::logic_error);
  cache.release(3);
  EXPECT_THROW(cache.release(3), std::logic_error);
  EXPECT_THROW(KvCache<float>(config, 0, 16), Error);
}

TEST(CheckpointLoad, LoadsConfigAndParamsAndResolvesRunDirectories) {
  test::TempDir dir;
  const ModelConfig config = model_preset("llama-tiny");
  auto backend = make_cpu_backend<float>();
  Model<float> model(config, *backend);
  model.init(5);
  for (const char* step : {"step-9", "step-10", "step-00012", "step-x"}) {
    std::filesystem::create_directories(dir / "run" / "checkpoints" / step);
  }
  const auto ckpt = dir / "run" / "checkpoints" / "step-10";
  save_safetensors(ckpt / "model.safetensors", model.layout(), model.params(),
                   {{kModelConfigKey, model_config_to_json(config)}});
  test::write_file(ckpt / "state.json", "{}");
  test::write_file(dir / "run" / "checkpoints" / "step-9" / "state.json", "{}");
  test::write_file(dir / "run" / "checkpoints" / "step-x" / "state.json", "{}");
  // step-00012 has no state.json: incomplete, skipped.
  EXPECT_EQ(resolve_checkpoint_dir(dir / "run"), ckpt);
  EXPECT_EQ(resolve_checkpoint_dir(ckpt), ckpt);
  const LoadedModel loaded = load_model_dir(ckpt);
  EXPECT_EQ(loaded.config.name, "llama-tiny");
  EXPECT_EQ(loaded.config.n_kv_head, config.n_kv_head);
  ASSERT_EQ(loaded.params.size(), static_cast<std::size_t>(model.num_params()));
  EXPECT_TRUE(std::equal(loaded.params.begin(), loaded.params.end(), model.params()));

  auto resolve_error = [](const std::filesystem::path& p) {
    return test::error_line([&] { resolve_checkpoint_dir(p); });
  };
  EXPECT_NE(resolve_error(dir / "nope").find("no such checkpoint or run directory"),
            std::string::npos);
  EXPECT_NE(resolve_error(dir / "run" / "checkpoints")
                .find("neither a checkpoint directory (no model.safetensors, no model parts in "
                      "state.json) nor a run directory"),
            std::string::npos);
  std::filesystem::create_directories(dir / "fresh" / "checkpoints" / "step-1");
  EXPECT_NE(resolve_error(dir / "fresh")
                .find("no complete checkpoint (a step-<N> directory with state.json)"),
            std::string::npos);
  std::filesystem::create_directories(dir / "bare");
  save_safetensors(dir / "bare" / "model.safetensors", model.layout(), model.params());
  const std::string line = test::error_line([&] { load_model_dir(dir / "bare"); });
  EXPECT_NE(line.find("no model config in the safetensors metadata (key \"borealis.model\")"),
            std::string::npos)
      << line;
  EXPECT_NE(line.find((dir / "bare" / "model.safetensors").string()), std::string::npos);
  EXPECT_NE(test::error_line([&] { load_model_dir(dir / "run"); }).find("no model.safetensors"),
            std::string::npos);
}

}  // namespace
}  // namespace borealis
