// Runs evaluation tasks on a LanguageModel and reports lm-evaluation-harness
// numbers: builds the prompts (eval/prompt.h), turns them into token
// requests the way lm-eval's models do, scores them, computes each doc's
// metrics and aggregates them with lm-eval's standard errors.
//
// Token requests follow lm-eval (lm_eval/api/model.py, utils.py):
//   loglikelihood(context, continuation): trailing spaces of the context move
//     to the continuation; context + continuation is encoded whole and the
//     continuation's tokens are those after the context's own encoding; an
//     empty context is the end-of-text token.
//   loglikelihood_rolling(text): disjoint windows of the model's length, the
//     first after the end-of-text token, each later one conditioned on the
//     token before it (get_rolling_token_windows with context_len 1).
//   generate_until: greedy until a stop string, at most max_gen_toks tokens.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "eval/language_model.h"
#include "eval/task.h"

namespace borealis {

// Text to tokens for the requests: the model's tokenizer, here or on the server.
class TextCodec {
 public:
  virtual ~TextCodec() = default;
  virtual std::vector<std::int32_t> encode(const std::string& text) const = 0;
  // The token an empty context and the first rolling window condition on.
  virtual std::int32_t end_of_text() const = 0;
};

struct EvalOptions {
  std::filesystem::path data_dir;
  int num_fewshot = 0;
  std::uint64_t fewshot_seed = 1234;
  std::size_t limit = 0;         // first docs of each task (0 = all)
  int bootstrap_iters = 100000;  // perplexity's standard error (0 = none)
  bool log_samples = false;      // keep every doc's requests and scores
  std::filesystem::path cache;   // scores on disk by request hash ("" = none)
  bool progress = true;
  // The docs, already read (a training run reads them once at start-up);
  // null: read from data_dir.
  DocLoader* docs = nullptr;
  // Doc ids (per task) to leave out of the "clean" scores; see --decontaminate.
  std::function<std::vector<bool>(const TaskSpec&, const std::vector<Doc>&, std::size_t)>
      contaminated;
};

struct TaskRun {
  std::string task;
  nlohmann::json samples = nlohmann::json::array();  // with log_samples
};

struct EvalResult {
  nlohmann::json results;  // lm-eval's layout: results, groups, configs, versions, n-shot, ...
  std::vector<TaskRun> runs;
};

EvalResult evaluate(LanguageModel& model, const TextCodec& codec, const TaskSet& tasks,
                    const EvalOptions& options);

// lm-eval's markdown table of the results (tasks, then groups).
std::string results_table(const nlohmann::json& results);

// lm-eval's token pair for (context, continuation).
std::pair<std::vector<std::int32_t>, std::vector<std::int32_t>> encode_pair(
    const TextCodec& codec, const std::string& context, const std::string& continuation);

// lm-eval's disjoint rolling windows over tokens, as (context, continuation) requests.
std::vector<ScoreRequest> rolling_windows(const std::vector<std::int32_t>& tokens,
                                          std::int32_t prefix_token, int max_length);

}  // namespace borealis
