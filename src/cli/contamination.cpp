// borealis data contamination: which docs of evaluation tasks share an
// n-gram of tokens with training corpora.
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <cstdio>
#include <filesystem>
#include <memory>

#include "cli/commands.h"
#include "core/atomic_file.h"
#include "core/error.h"
#include "core/progress.h"
#include "core/text.h"
#include "data/data_list.h"
#include "eval/custom_task.h"
#include "eval/decontaminate.h"
#include "tokenizer/tokenizer.h"

namespace borealis::cli {

namespace {

struct ContaminationArgs {
  std::string data_list;
  std::vector<std::string> data;
  std::vector<std::string> tasks;
  std::vector<std::string> task_files;
  std::string data_dir = ".";
  std::string tokenizer;
  int ngram = 13;
  std::size_t limit = 0;
  std::string output;
  int show = 10;
  bool json = false;
};

void run_contamination(const ContaminationArgs& a) {
  if (a.data_list.empty() == a.data.empty()) {
    throw Error("give the training corpora with exactly one of --data-list and --data",
                "contamination");
  }
  if (a.tasks.empty()) throw Error("no tasks given", "--tasks");
  std::vector<std::filesystem::path> corpora;
  if (!a.data_list.empty()) {
    for (const DataListEntry& e : read_data_list(a.data_list)) corpora.push_back(e.prefix);
  } else {
    corpora.assign(a.data.begin(), a.data.end());
  }
  std::vector<TaskSpec> custom;
  for (const std::string& f : a.task_files) custom.push_back(load_custom_task(f));
  const TaskSet tasks = resolve_tasks(a.tasks, custom);
  const Tokenizer tok = Tokenizer::load(a.tokenizer);
  DocLoader loader(a.data_dir);
  std::vector<BenchmarkDoc> docs = benchmark_docs(tasks, loader, tok, a.limit);
  ContaminationOptions co;
  co.ngram = a.ngram;
  ContaminationIndex index(std::move(docs), co);
  spdlog::info("{} docs of {} tasks: {} distinct {}-grams, {} in memory", index.docs().size(),
               tasks.tasks.size(), index.distinct_ngrams(), a.ngram,
               format_bytes(index.memory_bytes()));
  for (const auto& prefix : corpora) {
    const IndexedDataset corpus(prefix);
    Progress progress(prefix.filename().string(), corpus.tokens(), "tokens");
    index.scan(corpus, [&](std::uint64_t done, std::uint64_t) { progress.update(done); });
    progress.finish();
  }
  const ContaminationReport report = index.report();
  const nlohmann::json j = contamination_report_json(tasks, index.docs(), report, a.ngram);
  if (!a.output.empty()) write_file_atomic(a.output, j.dump(2) + "\n");
  if (a.json) {
    std::printf("%s\n", j.dump(2).c_str());
    return;
  }
  std::printf(
      "%s",
      fmt::format("{} corpus tokens in {} documents scanned in {:.1f} s ({:.0f} M tokens/s)\n",
                  report.corpus_tokens, report.corpus_documents, report.seconds,
                  report.seconds > 0
                      ? static_cast<double>(report.corpus_tokens) / report.seconds / 1e6
                      : 0.0)
          .c_str());
  std::printf(
      "| task | docs | flagged | share | shorter than %d tokens | first flagged doc ids |\n",
      a.ngram);
  std::printf("|---|---|---|---|---|---|\n");
  for (const auto& [name, t] : j["tasks"].items()) {
    std::string ids;
    const auto& list = t["flagged_doc_ids"];
    for (std::size_t i = 0; i < list.size() && static_cast<int>(i) < a.show; ++i) {
      ids += (i ? " " : "") + list[i].dump();
    }
    if (static_cast<int>(list.size()) > a.show) ids += " ...";
    std::printf("| %s | %lld | %lld | %.2f%% | %lld | %s |\n", name.c_str(),
                static_cast<long long>(t["docs"].get<std::int64_t>()),
                static_cast<long long>(t["flagged"].get<std::int64_t>()),
                100 * t["flagged_share"].get<double>(),
                static_cast<long long>(t["too_short"].get<std::int64_t>()), ids.c_str());
  }
}

}  // namespace

Command add_data_contamination(CLI::App& data) {
  auto a = std::make_shared<ContaminationArgs>();
  CLI::App* app = data.add_subcommand(
      "contamination",
      "Share of evaluation tasks' docs that share an n-gram of tokens with training corpora");
  app->footer(
      "Each doc's decontamination text (lm-eval's doc_to_decontamination_query) is tokenized "
      "with -t, the tokenizer the corpora were prepared with; n-grams never cross a corpus "
      "document. Memory is bounded by the tasks, not the corpora. See docs/eval.md.");
  app->add_option("--data-list", a->data_list,
                  "Training data list (lines of: weight prefix [corpus])");
  app->add_option("--data", a->data, "Training datasets (.bin/.idx prefixes) instead; repeatable");
  app->add_option("--tasks", a->tasks, "Tasks or groups, comma-separated")->delimiter(',');
  app->add_option("--task-file", a->task_files, "A custom task (TOML); repeatable");
  app->add_option("--data-dir", a->data_dir, "Folder holding each task's data")
      ->capture_default_str();
  app->add_option("-t,--tokenizer", a->tokenizer, "The corpora's tokenizer")->required();
  app->add_option("--ngram", a->ngram, "Tokens per n-gram")
      ->check(CLI::Range(1, 1000))
      ->capture_default_str();
  app->add_option("--limit", a->limit, "First N docs of each task only (0 = all)")
      ->capture_default_str();
  app->add_option("-o,--out", a->output,
                  "Report JSON with every flagged doc id (for borealis eval --decontaminate)");
  app->add_option("--show", a->show, "Flagged doc ids printed per task")->capture_default_str();
  app->add_flag("--json", a->json, "Print the report JSON instead of the table");
  return {app, [a] { run_contamination(*a); }};
}

}  // namespace borealis::cli
