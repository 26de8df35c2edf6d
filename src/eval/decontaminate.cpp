#include "eval/decontaminate.h"

#include <fmt/format.h>

#include <fstream>
#include <sstream>

#include "core/error.h"

namespace borealis {

using nlohmann::json;

std::vector<BenchmarkDoc> benchmark_docs(const TaskSet& tasks, DocLoader& loader,
                                         const Tokenizer& tokenizer, std::size_t limit) {
  std::vector<BenchmarkDoc> out;
  for (const TaskSpec& task : tasks.tasks) {
    const std::vector<Doc>& docs = loader.load(task, task.eval_split());
    const std::size_t n = limit > 0 ? std::min(limit, docs.size()) : docs.size();
    for (std::size_t i = 0; i < n; ++i) {
      const Formatted f = task.format(docs[i].fields, docs[i].where);
      out.push_back(
          {task.name, static_cast<std::int64_t>(i), tokenizer.encode(f.decontamination_query)});
    }
  }
  return out;
}

json contamination_report_json(const TaskSet& tasks, const std::vector<BenchmarkDoc>& docs,
                               const ContaminationReport& report, int ngram) {
  json out = {{"ngram", ngram},
              {"corpus_tokens", report.corpus_tokens},
              {"corpus_documents", report.corpus_documents},
              {"scan_seconds", report.seconds},
              {"tasks", json::object()}};
  for (const TaskSpec& task : tasks.tasks) {
    json t = {{"docs", 0},
              {"flagged", 0},
              {"too_short", 0},
              {"flagged_doc_ids", json::array()},
              {"hits", json::array()}};
    std::int64_t n = 0, flagged = 0, short_docs = 0;
    for (std::size_t i = 0; i < docs.size(); ++i) {
      if (docs[i].task != task.name) continue;
      ++n;
      if (report.ngrams[i] == 0) ++short_docs;
      if (report.flagged[i]) {
        ++flagged;
        t["flagged_doc_ids"].push_back(docs[i].doc_id);
        t["hits"].push_back(
            {{"doc_id", docs[i].doc_id}, {"ngrams", report.ngrams[i]}, {"hits", report.hits[i]}});
      }
    }
    t["docs"] = n;
    t["flagged"] = flagged;
    t["too_short"] = short_docs;
    t["flagged_share"] = n > 0 ? static_cast<double>(flagged) / static_cast<double>(n) : 0.0;
    out["tasks"][task.name] = t;
  }
  return out;
}

std::map<std::string, std::vector<std::int64_t>> read_flagged_docs(
    const std::filesystem::path& report) {
  std::ifstream in(report);
  if (!in) throw Error("cannot read the contamination report", report.string());
  std::stringstream ss;
  ss << in.rdbuf();
  const json j = json::parse(ss.str(), nullptr, false);
  if (j.is_discarded() || !j.contains("tasks") || !j["tasks"].is_object()) {
    throw Error("not a contamination report (written by borealis data contamination -o)",
                report.string());
  }
  std::map<std::string, std::vector<std::int64_t>> out;
  for (const auto& [task, t] : j["tasks"].items()) {
    if (!t.contains("flagged_doc_ids") || !t["flagged_doc_ids"].is_array()) {
      throw Error(fmt::format("task {} has no flagged_doc_ids list", task), report.string());
    }
    out[task] = t["flagged_doc_ids"].get<std::vector<std::int64_t>>();
  }
  return out;
}

}  // namespace borealis
