// borealis eval: lm-evaluation-harness tasks on a checkpoint (in process) or
// on an OpenAI-compatible server.
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <memory>

#include "cli/commands.h"
#include "core/atomic_file.h"
#include "core/build_info.h"
#include "core/config.h"
#include "core/error.h"
#include "core/progress.h"
#include "core/stopwatch.h"
#include "data/data_list.h"
#include "data/mixture.h"
#include "eval/custom_task.h"
#include "eval/decontaminate.h"
#include "eval/evaluator.h"
#include "eval/local_model.h"
#include "eval/perplexity.h"
#include "eval/server_model.h"
#include "interop/hf_checkpoint.h"
#include "model/checkpoint_load.h"
#include "model/model_parts.h"
#include "tokenizer/tokenizer.h"
#include "train/train_config.h"

namespace borealis::cli {

namespace {

struct EvalArgs {
  std::string checkpoint;
  std::string server;
  std::string api_key;
  std::string model_name;
  int max_length = 0;
  int concurrency = 4;
  int retries = 5;
  double retry_wait = 1;
  std::string tokenizer;
  std::vector<std::string> tasks;
  std::vector<std::string> task_files;
  std::string data_dir = ".";
  int num_fewshot = 0;
  std::uint64_t fewshot_seed = 1234;
  std::size_t limit = 0;
  int batch_size = 32;
  std::string output;
  bool log_samples = false;
  std::string cache;
  int bootstrap_iters = 100000;
  bool json = false;
  std::vector<std::string> data;
  std::string data_list;
  std::string decontaminate;
  std::string valid_of;
  std::uint64_t samples = 0;
  int stride = 0;
  std::uint64_t max_tokens = 0;
};

void write_json(const std::filesystem::path& path, const nlohmann::json& j) {
  write_file_atomic(path, j.dump(2) + "\n");
}

// Perplexity of each dataset (a data list's corpora: also their mean
// negative log-likelihood per token weighted by the list's weights).
void run_perplexity(const EvalArgs& a, LanguageModel& model, const nlohmann::json& model_info) {
  std::vector<DataListEntry> entries;
  if (!a.data_list.empty()) {
    entries = read_data_list(a.data_list);
  } else {
    for (const std::string& prefix : a.data) {
      DataListEntry e;
      e.weight = 1.0 / static_cast<double>(a.data.size());
      e.prefix = prefix;
      e.corpus = std::filesystem::path(prefix).filename().string();
      entries.push_back(e);
    }
  }
  PerplexityOptions po;
  po.stride = a.stride;
  po.max_tokens = a.max_tokens;
  nlohmann::json out = {{"config", model_info}, {"perplexity", nlohmann::json::object()}};
  out["config"]["stride"] = a.stride;
  out["config"]["max_tokens"] = a.max_tokens;
  std::string table = "| Dataset | Documents | Tokens | Perplexity | Bits/token | Tokens/s |\n";
  table += "|---|---|---|---|---|---|\n";
  double weighted_nll = 0, weight = 0;
  for (const DataListEntry& e : entries) {
    const IndexedDataset data(e.prefix);
    Progress progress(e.prefix.filename().string(), a.max_tokens > 0 ? a.max_tokens : data.tokens(),
                      "tokens");
    const PerplexityResult r = dataset_perplexity(model, data, po, [&](const PerplexityResult& p) {
      progress.update(p.tokens, fmt::format("ppl {:.3f}", p.perplexity()));
    });
    progress.finish();
    const double tps = r.seconds > 0 ? static_cast<double>(r.tokens) / r.seconds : 0;
    out["perplexity"][e.prefix.string()] = {{"corpus", e.corpus},
                                            {"weight", e.weight},
                                            {"documents", r.documents},
                                            {"tokens", r.tokens},
                                            {"nll", r.nll},
                                            {"perplexity", r.perplexity()},
                                            {"bits_per_token", r.bits_per_token()},
                                            {"tokens_per_second", tps}};
    table += fmt::format("| {} | {} | {} | {:.4f} | {:.4f} | {:.0f} |\n", e.prefix.string(),
                         r.documents, r.tokens, r.perplexity(), r.bits_per_token(), tps);
    if (r.tokens > 0) {
      weighted_nll += e.weight * r.nll / static_cast<double>(r.tokens);
      weight += e.weight;
    }
  }
  if (!a.valid_of.empty()) {
    // A training run's validation part, as the run itself reads it.
    std::filesystem::path file = a.valid_of;
    if (std::filesystem::is_directory(file)) file /= "config.toml";
    const TrainSettings s = read_train_settings(load_config(train_config_schema(), file, {}));
    MixOptions vmix = mixture_options(s);
    vmix.part = 1;
    vmix.samples = a.samples > 0 ? a.samples
                                 : static_cast<std::uint64_t>(s.eval_batches) *
                                       static_cast<std::uint64_t>(s.micro_batch);
    if (vmix.samples == 0) throw Error("the run validates nothing; give --samples", "--samples");
    const Mixture valid(vmix);
    Progress progress("validation", valid.size(), "samples");
    const PerplexityResult r =
        mixture_perplexity(model, valid, valid.size(), [&](const PerplexityResult& p) {
          progress.update(p.documents, fmt::format("ppl {:.3f}", p.perplexity()));
        });
    progress.finish();
    const double tps = r.seconds > 0 ? static_cast<double>(r.tokens) / r.seconds : 0;
    const double loss = r.tokens > 0 ? r.nll / static_cast<double>(r.tokens) : 0;
    out["perplexity"]["validation"] = {{"config", file.string()},
                                       {"samples", r.documents},
                                       {"tokens", r.tokens},
                                       {"nll", r.nll},
                                       {"loss", loss},
                                       {"perplexity", r.perplexity()},
                                       {"bits_per_token", r.bits_per_token()},
                                       {"tokens_per_second", tps}};
    table += fmt::format(
        "| validation of {} ({} samples, loss {:.4f}) | | {} | {:.4f} | {:.4f} | {:.0f} |\n",
        file.string(), r.documents, loss, r.tokens, r.perplexity(), r.bits_per_token(), tps);
  }
  if (entries.size() > 1 && weight > 0) {
    out["weighted"] = {{"nll_per_token", weighted_nll / weight},
                       {"perplexity", std::exp(weighted_nll / weight)}};
    table += fmt::format("| weighted mean | | | {:.4f} | | |\n", std::exp(weighted_nll / weight));
  }
  if (!a.output.empty()) write_json(a.output, out);
  if (a.json) {
    std::printf("%s\n", out.dump(2).c_str());
  } else {
    std::printf("%s", table.c_str());
  }
}

void run_eval(EvalArgs& a) {
  if (a.checkpoint.empty() == a.server.empty()) {
    throw Error("give exactly one of --checkpoint and --server", "eval");
  }
  const bool perplexity_mode = !a.data.empty() || !a.data_list.empty() || !a.valid_of.empty();
  if (perplexity_mode && !a.tasks.empty()) {
    throw Error("give either tasks or datasets (--data, --data-list), not both", "--tasks");
  }
  if (!perplexity_mode && a.tasks.empty()) throw Error("no tasks given", "--tasks");
  if (a.api_key.empty()) {
    if (const char* key = std::getenv("BOREALIS_API_KEY")) a.api_key = key;
  }
  std::vector<TaskSpec> custom;
  for (const std::string& f : a.task_files) custom.push_back(load_custom_task(f));
  const TaskSet tasks = perplexity_mode ? TaskSet{} : resolve_tasks(a.tasks, custom);

  std::unique_ptr<Tokenizer> tok;
  std::unique_ptr<TextCodec> codec;
  std::unique_ptr<LanguageModel> model;
  nlohmann::json model_info;
  if (!a.checkpoint.empty()) {
    LoadedModel loaded = load_any_model(a.checkpoint);
    const std::filesystem::path tok_path =
        a.tokenizer.empty() ? loaded.dir / "tokenizer.json" : std::filesystem::path(a.tokenizer);
    tok = std::make_unique<Tokenizer>(load_model_tokenizer(tok_path, loaded.config));
    model_info = {{"model", "borealis"},
                  {"model_args", fmt::format("checkpoint={}", loaded.dir.string())}};
    // The weights' identity, so results name exactly what was scored: the
    // model file's checksum, or for a checkpoint in parts the checksum of
    // its parts' checksums in the manifest's order.
    if (std::filesystem::exists(loaded.dir / "model.safetensors")) {
      model_info["checkpoint_hash"] =
          "xxh3-128:" + hash_file(loaded.dir / "model.safetensors").hex();
    } else if (const auto parts = read_model_parts(loaded.dir)) {
      std::string sums;
      for (const ModelPartFile& f : parts->files) sums += hash_file(loaded.dir / f.file).hex();
      model_info["checkpoint_hash"] = "xxh3-128:" + hash128(sums).hex();
    }
    LocalModelOptions lo;
    lo.batch_size = a.batch_size;
    model = std::make_unique<LocalModel>(
        std::move(loaded), tok.get(), "checkpoint " + model_info["model_args"].get<std::string>(),
        lo);
    codec = std::make_unique<TokenizerCodec>(*tok);
  } else {
    ServerModelOptions so;
    so.url = a.server;
    so.api_key = a.api_key;
    so.model = a.model_name;
    so.max_length = a.max_length;
    so.concurrency = a.concurrency;
    so.retries = a.retries;
    so.backoff_s = a.retry_wait;
    so.batch = std::max(1, std::min(a.batch_size, 64));
    auto server = std::make_unique<ServerModel>(so);
    if (!a.tokenizer.empty()) {
      tok = std::make_unique<Tokenizer>(Tokenizer::load(a.tokenizer));
      codec = std::make_unique<TokenizerCodec>(*tok);
    } else {
      codec = server->remote_codec();
    }
    model_info = {{"model", "local-completions"}, {"model_args", server->description()}};
    model = std::move(server);
  }

  if (perplexity_mode) {
    run_perplexity(a, *model, model_info);
    return;
  }
  EvalOptions eo;
  eo.data_dir = a.data_dir;
  eo.num_fewshot = a.num_fewshot;
  eo.fewshot_seed = a.fewshot_seed;
  eo.limit = a.limit;
  eo.bootstrap_iters = a.bootstrap_iters;
  eo.log_samples = a.log_samples;
  eo.cache = a.cache;
  if (eo.cache.empty() && !a.output.empty()) eo.cache = a.output + ".cache.jsonl";
  if (!a.decontaminate.empty()) {
    const auto flagged = read_flagged_docs(a.decontaminate);
    for (const TaskSpec& t : tasks.tasks) {
      if (!flagged.count(t.name)) {
        throw Error(fmt::format("the report has no task {}", t.name), a.decontaminate);
      }
    }
    eo.contaminated = [flagged](const TaskSpec& t, const std::vector<Doc>&, std::size_t n) {
      std::vector<bool> out(n, false);
      for (std::int64_t id : flagged.at(t.name)) {
        if (id >= 0 && static_cast<std::size_t>(id) < n) out[static_cast<std::size_t>(id)] = true;
      }
      return out;
    };
  }
  const auto started = std::chrono::steady_clock::now();
  EvalResult res = evaluate(*model, *codec, tasks, eo);
  nlohmann::json& r = res.results;
  nlohmann::json config = model_info;
  config["batch_size"] = a.batch_size;
  config["limit"] = a.limit == 0 ? nlohmann::json(nullptr) : nlohmann::json(a.limit);
  config["bootstrap_iters"] = a.bootstrap_iters;
  config["fewshot_seed"] = a.fewshot_seed;
  config["data_dir"] = a.data_dir;
  r["config"] = config;
  r["git_hash"] = build_info().git_commit;
  r["borealis_version"] = build_info().version;
  r["total_evaluation_time_seconds"] = fmt::format("{}", seconds_since(started));

  if (!a.output.empty()) {
    write_json(a.output, r);
    spdlog::info("results written to {}", a.output);
    if (a.log_samples) {
      const std::filesystem::path out(a.output);
      for (const TaskRun& run : res.runs) {
        const std::filesystem::path path =
            out.parent_path() / fmt::format("{}_samples_{}.jsonl", out.stem().string(), run.task);
        std::string text;
        for (const nlohmann::json& s : run.samples) text += s.dump() + "\n";
        write_file_atomic(path, text);
        spdlog::info("samples of {} written to {}", run.task, path.string());
      }
    }
  } else if (a.log_samples) {
    throw Error("--log-samples needs --output (the samples go next to it)", "--log-samples");
  }
  if (a.json) {
    std::printf("%s\n", r.dump(2).c_str());
  } else {
    std::printf("%s", results_table(r).c_str());
  }
}

}  // namespace

Command add_eval(CLI::App& parent) {
  auto a = std::make_shared<EvalArgs>();
  CLI::App* app = parent.add_subcommand(
      "eval",
      "Evaluate a checkpoint or a server on lm-evaluation-harness tasks (scores as lm-eval "
      "computes them)");
  app->footer(
      "Built-in tasks: hellaswag arc_easy arc_challenge piqa winogrande lambada_openai sciq "
      "pubmedqa wikitext mmlu (and mmlu_<category>, mmlu_<subject>). Data: "
      "DIR/<task>/<split>.jsonl "
      "in the data set's own schema (Hugging Face datasets' to_json); see docs/eval.md.");
  app->add_option("--checkpoint", a->checkpoint,
                  "Checkpoint or run directory, or a Hugging Face GPT-2/Llama directory");
  app->add_option("--server", a->server,
                  "Base URL of an OpenAI-compatible server instead, e.g. http://127.0.0.1:8000/v1");
  app->add_option("--api-key", a->api_key,
                  "Bearer token for --server (default: $BOREALIS_API_KEY)");
  app->add_option("--model", a->model_name, "Model name sent to --server (default: its first)");
  app->add_option("--max-length", a->max_length,
                  "Context length of --server's model (default: its max_model_len, else 2048)")
      ->check(CLI::NonNegativeNumber);
  app->add_option("--concurrency", a->concurrency, "Requests in flight to --server")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app->add_option("--retries", a->retries,
                  "Attempts after a failed request to --server (dropped connection, 429, 5xx)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  app->add_option("--retry-wait", a->retry_wait,
                  "Seconds before the first retry; doubled for each next one")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  app->add_option(
      "-t,--tokenizer", a->tokenizer,
      "tokenizer.json (default: the checkpoint's; with --server: the server's /tokenize)");
  app->add_option("--tasks", a->tasks, "Tasks or groups, comma-separated")->delimiter(',');
  app->add_option("--task-file", a->task_files,
                  "A custom task (TOML; see docs/eval.md); repeatable");
  app->add_option("--data-dir", a->data_dir, "Folder holding each task's data")
      ->capture_default_str();
  app->add_option("--num-fewshot", a->num_fewshot, "Few-shot examples per prompt")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  app->add_option("--fewshot-seed", a->fewshot_seed,
                  "Seed of the few-shot draw (lm-eval's default)")
      ->capture_default_str();
  app->add_option("--limit", a->limit, "First N docs of each task only (0 = all)")
      ->capture_default_str();
  app->add_option("--batch-size", a->batch_size, "Requests scored together")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app->add_option("-o,--output", a->output, "Results JSON (lm-eval's layout)");
  app->add_flag("--log-samples", a->log_samples,
                "Also write every doc's prompts and scores (OUTPUT_samples_<task>.jsonl)");
  app->add_option("--cache", a->cache,
                  "Scores by request hash, so a rerun resumes (default: OUTPUT.cache.jsonl)");
  app->add_option("--bootstrap-iters", a->bootstrap_iters,
                  "Resamples for perplexity's standard error (0 = none)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  app->add_option("--decontaminate", a->decontaminate,
                  "Also score the docs a contamination report (borealis data contamination -o) "
                  "does not flag: metrics named <metric>_decontaminate");
  app->add_option("--valid-of", a->valid_of,
                  "Perplexity of a training run's validation part (its run directory or config)");
  app->add_option(
      "--samples", a->samples,
      "With --valid-of: samples scored (default: the run's eval_batches x micro_batch)");
  app->add_option(
      "--data", a->data,
      "Perplexity of a token dataset (PREFIX of .bin/.idx) instead of tasks; repeatable");
  app->add_option("--data-list", a->data_list,
                  "Perplexity of each corpus of a data list (lines of: weight prefix [corpus])");
  app->add_option("--stride", a->stride,
                  "Perplexity: tokens scored per window (0 = half the context; the context length "
                  "= disjoint windows)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  app->add_option("--max-tokens", a->max_tokens,
                  "Perplexity: stop after this many tokens per dataset (whole documents; 0 = all)")
      ->capture_default_str();
  app->add_flag("--json", a->json, "Print the results JSON instead of the table");
  return {app, [a] { run_eval(*a); }};
}

}  // namespace borealis::cli
