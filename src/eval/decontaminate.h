// Contamination between training data and evaluation tasks, end to end:
// the tasks' docs as the index wants them (each doc's decontamination query,
// as lm-eval's doc_to_decontamination_query gives it, tokenized as the
// corpus was), the report `borealis data contamination` writes, and that
// report read back by `borealis eval --decontaminate` to score the clean
// docs apart.
#pragma once

#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "eval/contamination.h"
#include "eval/task.h"
#include "tokenizer/tokenizer.h"

namespace borealis {

// The first `limit` docs (0 = all) of each task's evaluation split.
std::vector<BenchmarkDoc> benchmark_docs(const TaskSet& tasks, DocLoader& loader,
                                         const Tokenizer& tokenizer, std::size_t limit);

// Per task: docs, flagged docs and their share, docs too short to have an
// n-gram, and the flagged doc ids (all of them: the list eval reads back).
nlohmann::json contamination_report_json(const TaskSet& tasks,
                                         const std::vector<BenchmarkDoc>& docs,
                                         const ContaminationReport& report, int ngram);

// task -> flagged doc ids, from a report file. Throws Error naming the file
// when it is not such a report.
std::map<std::string, std::vector<std::int64_t>> read_flagged_docs(
    const std::filesystem::path& report);

}  // namespace borealis
