// lm-evaluation-harness's metrics: per doc (process_results) and over a
// task (aggregation, with its standard errors), and over a group of tasks.
//
//   acc, acc_norm, exact_match: mean; stderr = sample stddev / sqrt(n)
//   perplexity (loglikelihood tasks): exp(-mean ll); stderr by lm-eval's
//     bootstrap (chunks of 1000 resamples, each chunk i drawing with
//     Python's random.Random(i).choices), reproduced exactly
//   word_perplexity, byte_perplexity: exp(-sum ll / sum words|bytes);
//   bits_per_byte: -sum ll / sum bytes / ln 2; stderr "N/A" as in lm-eval
//   groups: mean weighted by task size; stderr pooled (pooled_sample_stderr)
#pragma once

#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "eval/task.h"

namespace borealis {

struct DocScores {
  std::map<std::string, double> values;                       // acc, acc_norm, perplexity (ll), ...
  std::map<std::string, std::pair<double, double>> weighted;  // (ll, words or bytes)
};

struct TaskScores {
  const TaskSpec* task = nullptr;
  std::vector<DocScores> docs;
  std::vector<bool> contaminated;  // per doc, when a contamination check ran
};

bool higher_is_better(const std::string& metric);

// The first index of the largest value (numpy.argmax).
std::size_t argmax_first(const std::vector<double>& values);

// {"acc,none": v, "acc_stderr,none": se, ...} for the task's metrics; with
// contamination flags, also "<metric>_decontaminate" over the clean docs.
nlohmann::json task_metrics(const TaskScores& scores, int bootstrap_iters);

// A group's entry from its members' entries and sizes (docs scored).
nlohmann::json group_metrics(const std::vector<std::pair<nlohmann::json, std::size_t>>& members);

}  // namespace borealis
