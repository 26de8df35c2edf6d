// The summary of `borealis plot`: what a run's metrics log says, as text
// (format_summary) or as one JSON object (summary_json). Both render one
// Summary, so the two cannot disagree.
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <nlohmann/json.hpp>

#include "train/plot.h"
#include "train/plot_units.h"

namespace borealis {

using plot_detail::Unit;
using plot_detail::unit_for;
using plot_detail::usable;

namespace {

struct FlaggedRank {
  int rank = 0;
  std::string host;
  std::size_t reports = 0;  // reports that flagged it
  double max_ratio = 0;     // its highest busy time over the median's
};

struct Summary {
  // train records
  const TrainRecord* last = nullptr;
  std::size_t skipped = 0;
  const TrainRecord* last_loss = nullptr;
  const TrainRecord* best_loss = nullptr;
  std::optional<double> ema;  // of the plotted train loss, when smoothing is on
  std::size_t tps_n = 0, mfu_n = 0;
  double tps_mean = 0, mfu_mean = 0;
  // valid records
  const ValidRecord* last_valid = nullptr;
  // eval records: each task's last, in order of first appearance
  std::vector<const EvalRecord*> eval_last;
  // straggler records
  std::vector<FlaggedRank> flagged;  // by rank
};

Summary summarize(const PlotReport& report) {
  const MetricsLog& log = report.metrics;
  Summary s;
  if (!log.train.empty()) s.last = &log.train.back();
  double tps_sum = 0, mfu_sum = 0, e = 0;
  for (const TrainRecord& r : log.train) {
    s.skipped += r.skipped;
    if (!r.skipped && usable(r.loss)) {
      e = s.last_loss == nullptr ? *r.loss : report.smooth * e + (1 - report.smooth) * *r.loss;
      s.last_loss = &r;
      if (s.best_loss == nullptr || *r.loss < *s.best_loss->loss) s.best_loss = &r;
    }
    if (usable(r.tokens_per_s)) tps_sum += *r.tokens_per_s, ++s.tps_n;
    if (usable(r.mfu)) mfu_sum += *r.mfu, ++s.mfu_n;
  }
  if (report.smooth > 0 && s.last_loss != nullptr) s.ema = e;
  if (s.tps_n > 0) s.tps_mean = tps_sum / static_cast<double>(s.tps_n);
  if (s.mfu_n > 0) s.mfu_mean = mfu_sum / static_cast<double>(s.mfu_n);
  for (const ValidRecord& r : log.valid) {
    if (usable(r.loss)) s.last_valid = &r;
  }
  for (const EvalRecord& r : log.eval) {
    const auto it = std::find_if(s.eval_last.begin(), s.eval_last.end(),
                                 [&](const EvalRecord* l) { return l->task == r.task; });
    if (it == s.eval_last.end()) {
      s.eval_last.push_back(&r);
    } else if (r.step >= (*it)->step) {
      *it = &r;
    }
  }
  std::map<int, FlaggedRank> flagged;
  for (const StragglerRecord& r : log.straggler) {
    for (const StragglerRank& rank : r.stragglers) {
      FlaggedRank& f = flagged[rank.rank];
      f.rank = rank.rank;
      ++f.reports;
      if (!rank.host.empty()) f.host = rank.host;
      if (usable(rank.ratio)) f.max_ratio = std::max(f.max_ratio, *rank.ratio);
    }
  }
  for (auto& [rank, f] : flagged) s.flagged.push_back(std::move(f));
  return s;
}

std::string short_count(double v) {
  const Unit u = unit_for(v, 1);
  if (u.divisor == 1) return fmt::format("{:.0f}", v);
  return fmt::format("{:.2f}{}", v / u.divisor, u.prefix);
}

std::string duration(double s) {
  const auto total = static_cast<long long>(std::llround(s));
  if (total < 60) return fmt::format("{:.1f} s", s);
  if (total < 3600) return fmt::format("{}m {:02}s", total / 60, total % 60);
  return fmt::format("{}h {:02}m {:02}s", total / 3600, (total / 60) % 60, total % 60);
}

std::string host_suffix(const std::string& host) {
  return host.empty() ? "" : " (" + host + ")";
}

// A line per task: the metrics of its last record, each with its standard error.
std::string eval_text(const Summary& summary) {
  std::string s;
  for (const EvalRecord* r : summary.eval_last) {
    std::string values;
    for (const auto& [metric, value] : r->metrics) {
      if (metric.ends_with("_stderr") || !usable(value)) continue;
      values += fmt::format("{}{} {:.4f}", values.empty() ? "" : ", ", metric, *value);
      const auto se = r->metrics.find(metric + "_stderr");
      if (se != r->metrics.end() && usable(se->second)) {
        values += fmt::format(" ± {:.4f}", *se->second);
      }
    }
    if (values.empty()) values = "no values";
    s += fmt::format("eval {}: {} (step {})\n", r->task, values, r->step);
  }
  return s;
}

// The last straggler report, and how often each rank was flagged.
std::string straggler_text(const std::vector<StragglerRecord>& records, const Summary& summary) {
  if (records.empty()) return {};
  const StragglerRecord& last = records.back();
  std::string s = fmt::format("ranks: {} straggler report{}, last over steps {}-{}", records.size(),
                              records.size() == 1 ? "" : "s", last.first_step, last.step);
  if (usable(last.median_busy_s)) {
    s += fmt::format(": median {:.3f} s busy per step", *last.median_busy_s);
  }
  if (!last.slowest.empty()) {
    const StragglerRank& top = last.slowest.front();
    s += fmt::format("; slowest rank {}{}", top.rank, host_suffix(top.host));
    if (usable(top.busy_s)) s += fmt::format(" {:.3f} s", *top.busy_s);
    if (usable(top.ratio)) s += fmt::format(", {:.2f}x", *top.ratio);
    if (usable(top.z)) s += fmt::format(", z {:.1f}", *top.z);
    if (!top.slow_phase.empty()) s += ", " + top.slow_phase;
  }
  s += "\n";
  if (summary.flagged.empty()) return s + "stragglers: none flagged\n";
  std::string list;
  for (const FlaggedRank& f : summary.flagged) {
    list += fmt::format("{}rank {}{} in {} report{}", list.empty() ? "" : ", ", f.rank,
                        host_suffix(f.host), f.reports, f.reports == 1 ? "" : "s");
    if (f.max_ratio > 0) list += fmt::format(" (up to {:.2f}x)", f.max_ratio);
  }
  return s + "stragglers: " + list + "\n";
}

nlohmann::json optional_json(const std::optional<double>& v) {
  return usable(v) ? nlohmann::json(*v) : nlohmann::json(nullptr);
}

nlohmann::json rank_json(const StragglerRank& r) {
  return {{"rank", r.rank},
          {"host", r.host},
          {"busy_s", optional_json(r.busy_s)},
          {"compute_s", optional_json(r.compute_s)},
          {"data_s", optional_json(r.data_s)},
          {"comm_s", optional_json(r.comm_s)},
          {"ratio", optional_json(r.ratio)},
          {"z", optional_json(r.z)},
          {"slow_phase", r.slow_phase}};
}

}  // namespace

std::string format_summary(const PlotReport& report) {
  const MetricsLog& log = report.metrics;
  const Summary sum = summarize(report);
  std::string s;
  s += fmt::format(
      "metrics: {} ({} lines: {} train, {} valid, {}{}{} replaced by a later line for the "
      "same step, {} of other kinds{})\n",
      report.metrics_path.string(), log.lines, log.train.size(), log.valid.size(),
      log.eval.empty() ? "" : fmt::format("{} eval, ", log.eval.size()),
      log.straggler.empty() ? "" : fmt::format("{} straggler, ", log.straggler.size()),
      log.replaced, log.other, log.truncated_tail ? ", 1 unfinished last line ignored" : "");
  if (sum.last != nullptr) {
    s += fmt::format("steps: {} logged, last step {}", log.train.size(), sum.last->step);
    if (sum.skipped > 0) {
      s += fmt::format(", {} skipped update{}", sum.skipped, sum.skipped == 1 ? "" : "s");
    }
    s += fmt::format("\ntokens: {} ({})", short_count(static_cast<double>(sum.last->tokens)),
                     sum.last->tokens);
    if (usable(sum.last->elapsed_s)) s += ", elapsed " + duration(*sum.last->elapsed_s);
    s += "\n";
    if (sum.last_loss != nullptr) {
      s += fmt::format("train loss: last {:.4f} (step {}), best {:.4f} (step {})",
                       *sum.last_loss->loss, sum.last_loss->step, *sum.best_loss->loss,
                       sum.best_loss->step);
      if (sum.ema) s += fmt::format(", last EMA {:.4f} (weight {:.3g})", *sum.ema, report.smooth);
      s += "\n";
    }
    if (sum.tps_n > 0 || sum.mfu_n > 0) {
      s += "throughput:";
      if (sum.tps_n > 0) {
        s += fmt::format(" mean {} tokens/s over {} steps", short_count(sum.tps_mean), sum.tps_n);
      }
      if (sum.mfu_n > 0) {
        s += fmt::format("{} mean MFU {:.1f}%", sum.tps_n > 0 ? "," : "", 100 * sum.mfu_mean);
      }
      s += "\n";
    }
  }
  if (sum.last_valid != nullptr) {
    s += fmt::format("valid loss: last {:.4f} (step {})\n", *sum.last_valid->loss,
                     sum.last_valid->step);
  } else {
    s += "valid loss: none logged\n";
  }
  s += eval_text(sum);
  s += straggler_text(log.straggler, sum);
  return s;
}

std::string summary_json(const PlotReport& report) {
  const MetricsLog& log = report.metrics;
  const Summary sum = summarize(report);
  nlohmann::json j;
  j["metrics"] = report.metrics_path.string();
  j["lines"] = {{"total", log.lines},
                {"train", log.train.size()},
                {"valid", log.valid.size()},
                {"eval", log.eval.size()},
                {"straggler", log.straggler.size()},
                {"replaced", log.replaced},
                {"other", log.other},
                {"unfinished_last_line", log.truncated_tail}};
  j["steps_logged"] = log.train.size();
  j["last_step"] = sum.last != nullptr ? nlohmann::json(sum.last->step) : nlohmann::json(nullptr);
  j["tokens"] = sum.last != nullptr ? nlohmann::json(sum.last->tokens) : nlohmann::json(nullptr);
  j["elapsed_s"] = sum.last != nullptr ? optional_json(sum.last->elapsed_s) : nullptr;
  j["skipped_updates"] = sum.skipped;
  j["train_loss"] = nullptr;
  if (sum.last_loss != nullptr) {
    j["train_loss"] = {{"last", *sum.last_loss->loss},
                       {"last_step", sum.last_loss->step},
                       {"best", *sum.best_loss->loss},
                       {"best_step", sum.best_loss->step},
                       {"ema", sum.ema ? nlohmann::json(*sum.ema) : nlohmann::json(nullptr)},
                       {"ema_weight", report.smooth}};
  }
  j["throughput"] = {{"mean_tokens_per_s", sum.tps_n > 0 ? nlohmann::json(sum.tps_mean) : nullptr},
                     {"tokens_per_s_steps", sum.tps_n},
                     {"mean_mfu", sum.mfu_n > 0 ? nlohmann::json(sum.mfu_mean) : nullptr},
                     {"mfu_steps", sum.mfu_n}};
  j["valid_loss"] = nullptr;
  if (sum.last_valid != nullptr) {
    j["valid_loss"] = {{"last", *sum.last_valid->loss}, {"step", sum.last_valid->step}};
  }
  j["eval"] = nlohmann::json::array();
  for (const EvalRecord* r : sum.eval_last) {
    nlohmann::json metrics = nlohmann::json::object();
    for (const auto& [metric, value] : r->metrics) metrics[metric] = optional_json(value);
    j["eval"].push_back({{"task", r->task}, {"step", r->step}, {"metrics", metrics}});
  }
  j["stragglers"] = nullptr;
  if (!log.straggler.empty()) {
    const StragglerRecord& last = log.straggler.back();
    nlohmann::json slowest = nlohmann::json::array();
    for (const StragglerRank& r : last.slowest) slowest.push_back(rank_json(r));
    nlohmann::json flagged = nlohmann::json::array();
    for (const FlaggedRank& f : sum.flagged) {
      flagged.push_back(
          {{"rank", f.rank}, {"host", f.host}, {"reports", f.reports}, {"max_ratio", f.max_ratio}});
    }
    j["stragglers"] = {{"reports", log.straggler.size()},
                       {"last",
                        {{"first_step", last.first_step},
                         {"step", last.step},
                         {"median_busy_s", optional_json(last.median_busy_s)},
                         {"median_compute_s", optional_json(last.median_compute_s)},
                         {"median_data_s", optional_json(last.median_data_s)},
                         {"median_comm_s", optional_json(last.median_comm_s)},
                         {"slowest", slowest}}},
                       {"flagged", flagged}};
  }
  nlohmann::json pngs = nlohmann::json::array();
  for (const auto& p : report.pngs) pngs.push_back(p.string());
  j["pngs"] = pngs;
  j["png_terminal"] = report.png_terminal;
  j["not_drawn"] = report.not_drawn;
  return j.dump(2);
}

}  // namespace borealis
