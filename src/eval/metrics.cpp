#include "eval/metrics.h"

#include <cmath>
#include <numbers>

#include "eval/python_random.h"

namespace borealis {

using nlohmann::json;

bool higher_is_better(const std::string& metric) {
  return !(metric == "perplexity" || metric == "word_perplexity" || metric == "byte_perplexity" ||
           metric == "bits_per_byte");
}

std::size_t argmax_first(const std::vector<double>& values) {
  std::size_t best = 0;
  for (std::size_t i = 1; i < values.size(); ++i) {
    if (values[i] > values[best]) best = i;
  }
  return best;
}

namespace {

// One metric over the docs kept by `keep` (all when empty), into entry under `name`.
void aggregate(const std::string& metric, const std::string& name, const TaskScores& scores,
               const std::vector<bool>& drop, int bootstrap_iters, json& entry) {
  const auto kept = [&](std::size_t d) { return drop.empty() || !drop[d]; };
  const std::string key = name + ",none";
  const std::string se_key = name + "_stderr,none";
  if (metric == "word_perplexity" || metric == "byte_perplexity" || metric == "bits_per_byte") {
    double ll = 0, units = 0;
    std::size_t n = 0;
    for (std::size_t d = 0; d < scores.docs.size(); ++d) {
      if (!kept(d)) continue;
      const auto it = scores.docs[d].weighted.find(metric);
      if (it == scores.docs[d].weighted.end()) continue;
      ll += it->second.first;
      units += it->second.second;
      ++n;
    }
    if (n == 0) return;
    const double wm = ll / units;
    entry[key] = metric == "bits_per_byte" ? -wm / std::numbers::ln2 : std::exp(-wm);
    entry[se_key] = "N/A";
    return;
  }
  std::vector<double> xs;
  for (std::size_t d = 0; d < scores.docs.size(); ++d) {
    if (!kept(d)) continue;
    const auto it = scores.docs[d].values.find(metric);
    if (it != scores.docs[d].values.end()) xs.push_back(it->second);
  }
  if (xs.empty()) return;
  if (metric == "perplexity") {
    entry[key] = std::exp(-mean(xs));
    if (bootstrap_iters > 0) {
      entry[se_key] = bootstrap_perplexity_stderr(xs, bootstrap_iters);
    } else {
      entry[se_key] = "N/A";
    }
    return;
  }
  entry[key] = mean(xs);
  entry[se_key] = xs.size() > 1 ? json(mean_stderr(xs)) : json("N/A");
}

}  // namespace

json task_metrics(const TaskScores& scores, int bootstrap_iters) {
  json entry = json::object();
  for (const std::string& m : scores.task->metrics) {
    aggregate(m, m, scores, {}, bootstrap_iters, entry);
  }
  if (!scores.contaminated.empty()) {
    for (const std::string& m : scores.task->metrics) {
      aggregate(m, m + "_decontaminate", scores, scores.contaminated, bootstrap_iters, entry);
    }
  }
  return entry;
}

json group_metrics(const std::vector<std::pair<json, std::size_t>>& members) {
  json entry = json::object();
  if (members.empty()) return entry;
  // The mean-type metrics every member has (lm-eval's aggregate_metric_list).
  for (const char* metric : {"acc", "acc_norm", "exact_match"}) {
    const std::string key = std::string(metric) + ",none";
    const std::string se_key = std::string(metric) + "_stderr,none";
    bool all = true;
    for (const auto& [m, size] : members) all = all && m.contains(key) && m[key].is_number();
    if (!all) continue;
    double weighted = 0, total = 0, pooled = 0;
    bool have_se = true;
    for (const auto& [m, size] : members) {
      const auto n = static_cast<double>(size);
      weighted += m[key].get<double>() * n;
      total += n;
      if (m.contains(se_key) && m[se_key].is_number()) {
        const double se = m[se_key].get<double>();
        pooled += (n - 1) * se * se * n;
      } else {
        have_se = false;
      }
    }
    entry[key] = weighted / total;
    const double dof = total - static_cast<double>(members.size());
    entry[se_key] = have_se && dof > 0 ? json(std::sqrt(pooled / dof / total)) : json("N/A");
  }
  return entry;
}

}  // namespace borealis
