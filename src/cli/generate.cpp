// borealis generate: text from a trained checkpoint, streamed to stdout token
// by token (KV-cache inference + temperature / top-k / top-p sampling), with
// prefill and decode speed on stderr.
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <chrono>
#include <cstdio>
#include <iostream>
#include <iterator>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "cli/commands.h"
#include "core/error.h"
#include "core/mapped_file.h"
#include "core/text.h"
#include "interop/hf_checkpoint.h"
#include "kernels/backend.h"
#include "model/inference.h"
#include "serve/sampling.h"
#include "tokenizer/tokenizer.h"

namespace borealis::cli {

namespace {

using Clock = std::chrono::steady_clock;

struct GenerateArgs {
  std::string checkpoint;
  std::optional<std::string> prompt;
  std::optional<std::string> prompt_file;
  std::optional<std::string> tokenizer;
  int max_tokens = 128;
  SamplingParams sampling;
  std::optional<std::uint64_t> seed;
  int num_samples = 1;
  bool stop_at_eod = true;
  bool echo = true;
};

double seconds(Clock::time_point from, Clock::time_point to) {
  return std::chrono::duration<double>(to - from).count();
}

// Writes generated text as it grows. Each update decodes the whole sequence
// (prompt included, so decoders that strip or join at the start stay right)
// and prints the bytes not printed yet; decoding a few hundred tokens costs
// microseconds against a model step.
class TextStream {
 public:
  TextStream(const Tokenizer& tok, std::vector<std::uint32_t> prompt, bool echo)
      : tok_(tok), ids_(std::move(prompt)) {
    const std::string text = tok_.decode(ids_);
    printed_ = echo ? 0 : text.size();
    emit(text, false);
  }
  void push(std::uint32_t id) {
    ids_.push_back(id);
    emit(tok_.decode(ids_), false);
  }
  void finish() {
    emit(tok_.decode(ids_), true);
    std::fputc('\n', stdout);
    std::fflush(stdout);
  }

 private:
  void emit(const std::string& text, bool all) {
    const std::size_t end = all ? text.size() : complete_utf8_prefix(text);
    if (end > printed_) {
      std::fwrite(text.data() + printed_, 1, end - printed_, stdout);
      std::fflush(stdout);
      printed_ = end;
    }
  }
  const Tokenizer& tok_;
  std::vector<std::uint32_t> ids_;
  std::size_t printed_ = 0;
};

std::string read_prompt(const GenerateArgs& a) {
  if (a.prompt) return *a.prompt;
  if (!a.prompt_file) return {};
  if (*a.prompt_file == "-") {
    return std::string(std::istreambuf_iterator<char>(std::cin), std::istreambuf_iterator<char>());
  }
  const MappedFile file(*a.prompt_file);
  return std::string(file.text());
}

void run_generate(const GenerateArgs& a) {
  SamplingParams sampling = a.sampling;
  try {
    sampling.validate();
  } catch (const Error& e) {
    throw Error(e.message(), "--" + std::string(e.where() == "top_k"   ? "top-k"
                                                : e.where() == "top_p" ? "top-p"
                                                                       : e.where()));
  }
  const Clock::time_point t_load = Clock::now();
  const LoadedModel model = load_any_model(a.checkpoint);
  const std::filesystem::path& dir = model.dir;
  const std::filesystem::path tok_path =
      a.tokenizer ? std::filesystem::path(*a.tokenizer) : dir / "tokenizer.json";
  const Tokenizer tok = load_model_tokenizer(tok_path, model.config);
  const ModelConfig& cfg = model.config;
  spdlog::info("model {} ({}, {} layers, d_model {}, context {}), loaded in {:.2f} s", cfg.name,
               family_name(cfg.family), cfg.n_layer, cfg.d_model, cfg.max_seq,
               seconds(t_load, Clock::now()));

  const std::string text = read_prompt(a);
  std::vector<std::uint32_t> prompt = tok.encode(text);
  const std::optional<std::uint32_t> eod = tok.eod_id();
  if (prompt.empty()) {
    // No prompt: an unconditional sample starts after a document boundary.
    if (!eod)
      throw Error("empty prompt and the tokenizer has no end-of-document token", "--prompt");
    prompt.push_back(*eod);
  }
  if (prompt.size() > static_cast<std::size_t>(cfg.max_seq)) {
    throw Error(fmt::format("prompt is {} tokens, longer than the model's context of {} tokens",
                            prompt.size(), cfg.max_seq),
                !a.prompt_file          ? "--prompt"
                : *a.prompt_file == "-" ? "stdin"
                                        : *a.prompt_file);
  }
  const std::uint64_t seed = a.seed ? *a.seed : std::random_device{}();
  if (!a.seed) spdlog::info("seed {} (pass --seed {} to repeat this output)", seed, seed);

  auto backend = make_cpu_backend<float>();
  Inference<float> run(cfg, model.params.data(), *backend);
  const std::vector<std::int32_t> ids(prompt.begin(), prompt.end());
  const Clock::time_point t0 = Clock::now();
  const std::vector<float> prompt_logits = [&] {
    const auto l = run.prefill(ids);
    return std::vector<float>(l.begin(), l.end());
  }();
  const double prefill_s = seconds(t0, Clock::now());
  // An unconditional start token is not echoed (it is not part of the user's text).
  const bool echo = a.echo && !text.empty();

  // Ids the tokenizer can print: a model vocabulary larger than the
  // tokenizer's (padding rows that were never trained) is not sampled from.
  const std::size_t printable = tok.vocab_size();
  std::int64_t generated = 0;
  double generate_s = 0;  // sampling, decode steps and printing, after the prefill
  bool hit_context = false;
  for (int s = 0; s < a.num_samples; ++s) {
    if (a.num_samples > 1) {
      std::fputs(
          fmt::format("{}=== sample {} of {} ===\n", s == 0 ? "" : "\n", s + 1, a.num_samples)
              .c_str(),
          stdout);
    }
    run.truncate(static_cast<int>(ids.size()));
    Sampler sampler(sampling, seed + static_cast<std::uint64_t>(s));
    TextStream out(tok, prompt, echo);
    std::span<const float> logits = prompt_logits;
    const Clock::time_point t = Clock::now();
    for (int i = 0; i < a.max_tokens; ++i) {
      const std::int32_t next = sampler.sample(logits.first(printable));
      if (a.stop_at_eod && eod && static_cast<std::uint32_t>(next) == *eod) break;
      ++generated;
      out.push(static_cast<std::uint32_t>(next));
      if (i + 1 == a.max_tokens) break;
      if (run.position() == run.capacity()) {
        hit_context = true;
        break;
      }
      logits = run.decode(next);
    }
    out.finish();
    generate_s += seconds(t, Clock::now());
  }
  if (hit_context) {
    std::fprintf(stderr, "note: stopped at the model's context of %d tokens\n", cfg.max_seq);
  }
  std::fprintf(stderr,
               "prompt %zu tokens, prefill %.1f tokens/s (%.3f s); generated %lld tokens, "
               "decode %.1f tokens/s (%.2f ms/token)\n",
               ids.size(), static_cast<double>(ids.size()) / prefill_s, prefill_s,
               static_cast<long long>(generated),
               generated > 0 ? static_cast<double>(generated) / generate_s : 0.0,
               generated > 0 ? 1e3 * generate_s / static_cast<double>(generated) : 0.0);
}

}  // namespace

Command add_generate(CLI::App& parent) {
  auto a = std::make_shared<GenerateArgs>();
  CLI::App* app = parent.add_subcommand(
      "generate", "Generate text from a trained checkpoint (KV-cache inference, sampling)");
  app->add_option("--checkpoint", a->checkpoint,
                  "Checkpoint directory (model.safetensors + tokenizer.json), a run directory "
                  "(its newest complete checkpoints/step-<N>), or a Hugging Face model "
                  "directory (config.json + safetensors)")
      ->required();
  auto* prompt = app->add_option("--prompt", a->prompt,
                                 "Text to continue (none: an unconditional sample after the "
                                 "end-of-document token)");
  app->add_option("--prompt-file", a->prompt_file, "Read the prompt from a file ('-': stdin)")
      ->excludes(prompt);
  app->add_option("--max-tokens", a->max_tokens, "Most tokens to generate per sample")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app->add_option("--temperature", a->sampling.temperature,
                  "Softmax temperature; 0 = greedy (always the most likely token)")
      ->capture_default_str();
  app->add_option("--top-k", a->sampling.top_k, "Sample among the k most likely tokens; 0 = all")
      ->capture_default_str();
  app->add_option("--top-p", a->sampling.top_p,
                  "Nucleus sampling: the fewest most likely tokens holding this much "
                  "probability; 1 = all")
      ->capture_default_str();
  app->add_option("--seed", a->seed, "Random seed (default: random, printed on stderr)");
  app->add_option("--num-samples", a->num_samples,
                  "Samples from the same prompt (sample i uses seed + i)")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app->add_option("-t,--tokenizer", a->tokenizer,
                  "Tokenizer file or directory (default: the checkpoint's tokenizer.json)");
  app->add_flag("--stop-at-eod,!--no-stop-at-eod", a->stop_at_eod,
                "Stop a sample at the end-of-document token (default on)");
  app->add_flag("!--no-echo", a->echo, "Print only the generated text, not the prompt");
  app->footer(
      "Text goes to stdout as it is generated; speed and counts go to stderr.\n\n"
      "Examples:\n"
      "  borealis generate --checkpoint runs/brown --prompt 'The jury said' --max-tokens 64\n"
      "  borealis generate --checkpoint runs/brown/checkpoints/step-2000 --temperature 0 \\\n"
      "      --prompt-file prompt.txt\n"
      "  echo 'Once upon a time' | borealis generate --checkpoint runs/brown --prompt-file - \\\n"
      "      --num-samples 3 --seed 7 --top-k 0 --top-p 0.9\n"
      "  borealis --threads 2 generate --checkpoint runs/brown   # unconditional sample");
  return {app, [a] { run_generate(*a); }};
}

}  // namespace borealis::cli
