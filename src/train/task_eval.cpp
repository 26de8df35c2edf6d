#include "train/task_eval.h"

#include <fmt/format.h>

#include <nlohmann/json.hpp>
#include <string_view>

#include "core/error.h"
#include "eval/custom_task.h"
#include "eval/evaluator.h"
#include "eval/local_model.h"
#include "eval/prompt.h"
#include "model/checkpoint_load.h"

namespace borealis {

TaskSet resolve_training_tasks(const TaskEvalSettings& settings) {
  std::vector<TaskSpec> custom;
  for (const auto& file : settings.task_files) custom.push_back(load_custom_task(file));
  return resolve_tasks(settings.names, custom);
}

struct TrainingTasks::Impl {
  Impl(const TaskEvalSettings& s, const Tokenizer& tok)
      : settings(s),
        tokenizer(tok),
        codec(tok),
        tasks(resolve_training_tasks(s)),
        docs(s.data_dir) {}

  TaskEvalSettings settings;
  const Tokenizer& tokenizer;
  TokenizerCodec codec;
  TaskSet tasks;
  DocLoader docs;  // filled at start-up; every evaluation reads from it
};

TrainingTasks::TrainingTasks(const TaskEvalSettings& settings, const Tokenizer& tokenizer)
    : impl_(std::make_unique<Impl>(settings, tokenizer)) {
  Impl& m = *impl_;
  m.codec.end_of_text();  // every task needs it; a tokenizer without one fails here
  PromptOptions po;
  po.num_fewshot = settings.num_fewshot;
  po.limit = settings.limit;
  for (const TaskSpec& task : m.tasks.tasks) {
    try {
      const std::vector<Doc>& docs = m.docs.load(task, task.eval_split());
      if (docs.empty()) {
        throw Error(
            fmt::format("task {} has no records in its {} split", task.name, task.eval_split()),
            "eval.tasks");
      }
      const std::vector<Doc>* shots =
          settings.num_fewshot > 0 ? &m.docs.load(task, task.fewshot_source()) : nullptr;
      // Formats every record scored and draws the few-shot examples: a
      // record that does not fit fails now, naming its file and line.
      build_prompts(task, docs, shots, po);
    } catch (const Error& e) {
      // The evaluator names `borealis eval`'s flags; here the keys stand for them.
      if (e.where() == "--num-fewshot") throw Error(e.message(), "eval.num_fewshot");
      if (e.where() != "--data-dir") throw;
      // A custom task's own file, or a built-in task's under the data folder.
      throw Error(e.message(), task.split_files.empty()
                                   ? "eval.data_dir " + settings.data_dir.string()
                                   : std::string("eval.task_files"));
    }
  }
}

TrainingTasks::~TrainingTasks() = default;

std::vector<TaskScore> TrainingTasks::evaluate(const ModelConfig& config,
                                               std::span<const float> params, bool progress) {
  Impl& m = *impl_;
  LoadedModel loaded;
  loaded.config = config;
  loaded.params.assign(params.begin(), params.end());
  LocalModel model(std::move(loaded), &m.tokenizer, "the parameters of the training run");
  EvalOptions eo;
  eo.data_dir = m.settings.data_dir;
  eo.num_fewshot = m.settings.num_fewshot;
  eo.limit = m.settings.limit;
  eo.progress = progress;
  eo.docs = &m.docs;
  const EvalResult result = borealis::evaluate(model, m.codec, m.tasks, eo);

  std::vector<TaskScore> out;
  const nlohmann::json& r = result.results;
  const auto add = [&](const std::string& name) {
    if (!r["results"].contains(name)) return;
    TaskScore score;
    score.task = name;
    constexpr std::string_view kFilter = ",none";
    for (const auto& [key, value] : r["results"][name].items()) {
      if (!key.ends_with(kFilter) || !value.is_number()) continue;
      score.metrics.emplace_back(key.substr(0, key.size() - kFilter.size()), value.get<double>());
    }
    if (r.contains("task_seconds") && r["task_seconds"].contains(name)) {
      score.seconds = r["task_seconds"][name].get<double>();
    }
    out.push_back(std::move(score));
  };
  for (const TaskSpec& task : m.tasks.tasks) add(task.name);
  for (const TaskGroup& group : m.tasks.groups) add(group.name);
  return out;
}

}  // namespace borealis
