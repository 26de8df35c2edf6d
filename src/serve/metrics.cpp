#include "serve/metrics.h"

#include <fmt/format.h>

#include <algorithm>

namespace borealis {

void ServeMetrics::Histogram::observe(double v) {
  const auto it = std::lower_bound(bounds.begin(), bounds.end(), v);
  if (it != bounds.end()) ++counts[static_cast<std::size_t>(it - bounds.begin())];
  ++count;
  sum += v;
}

void ServeMetrics::Histogram::render(std::string& out, const std::string& name,
                                     const std::string& help) const {
  out += fmt::format("# HELP {} {}\n# TYPE {} histogram\n", name, help, name);
  std::int64_t cumulative = 0;
  for (std::size_t i = 0; i < bounds.size(); ++i) {
    cumulative += counts[i];
    out += fmt::format("{}_bucket{{le=\"{}\"}} {}\n", name, bounds[i], cumulative);
  }
  out += fmt::format("{}_bucket{{le=\"+Inf\"}} {}\n{}_sum {}\n{}_count {}\n", name, count, name,
                     sum, name, count);
}

ServeMetrics::ServeMetrics() {
  const auto make = [](std::vector<double> bounds) {
    Histogram h;
    h.counts.assign(bounds.size(), 0);
    h.bounds = std::move(bounds);
    return h;
  };
  ttft_ = make({0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30});
  tpot_ = make({0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5});
  e2e_ = make({0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120});
}

void ServeMetrics::request_finished(const std::string& reason, double e2e_seconds) {
  const std::lock_guard lock(mu_);
  ++finished_[reason];
  e2e_.observe(e2e_seconds);
}
void ServeMetrics::http_response(int status) {
  const std::lock_guard lock(mu_);
  ++http_[status];
}
void ServeMetrics::prompt_tokens(std::int64_t n) {
  const std::lock_guard lock(mu_);
  prompt_tokens_ += n;
}
void ServeMetrics::generation_tokens(std::int64_t n) {
  const std::lock_guard lock(mu_);
  generation_tokens_ += n;
}
void ServeMetrics::time_to_first_token(double seconds) {
  const std::lock_guard lock(mu_);
  ttft_.observe(seconds);
}
void ServeMetrics::time_per_output_token(double seconds) {
  const std::lock_guard lock(mu_);
  tpot_.observe(seconds);
}

std::string ServeMetrics::render(const Gauges& g) const {
  const std::lock_guard lock(mu_);
  std::string out;
  out +=
      "# HELP borealis_request_success_total Finished requests by finish reason.\n"
      "# TYPE borealis_request_success_total counter\n";
  for (const char* reason : {"length", "stop", "cancelled"}) {
    const auto it = finished_.find(reason);
    out += fmt::format("borealis_request_success_total{{finished_reason=\"{}\"}} {}\n", reason,
                       it == finished_.end() ? 0 : it->second);
  }
  out +=
      "# HELP borealis_http_requests_total HTTP responses by status code.\n"
      "# TYPE borealis_http_requests_total counter\n";
  for (const auto& [status, n] : http_) {
    out += fmt::format("borealis_http_requests_total{{status=\"{}\"}} {}\n", status, n);
  }
  out += fmt::format(
      "# HELP borealis_prompt_tokens_total Prompt tokens processed.\n"
      "# TYPE borealis_prompt_tokens_total counter\nborealis_prompt_tokens_total {}\n"
      "# HELP borealis_generation_tokens_total Tokens generated.\n"
      "# TYPE borealis_generation_tokens_total counter\nborealis_generation_tokens_total {}\n",
      prompt_tokens_, generation_tokens_);
  ttft_.render(out, "borealis_time_to_first_token_seconds", "Time to first generated token.");
  tpot_.render(out, "borealis_time_per_output_token_seconds",
               "Time between generated tokens of a request.");
  e2e_.render(out, "borealis_e2e_request_latency_seconds", "Request latency, queue included.");
  const double usage =
      g.total_blocks == 0 ? 0.0 : static_cast<double>(g.used_blocks) / g.total_blocks;
  out += fmt::format(
      "# HELP borealis_num_requests_waiting Requests queued for a place in the batch.\n"
      "# TYPE borealis_num_requests_waiting gauge\nborealis_num_requests_waiting {}\n"
      "# HELP borealis_num_requests_running Sequences in the running batch.\n"
      "# TYPE borealis_num_requests_running gauge\nborealis_num_requests_running {}\n"
      "# HELP borealis_kv_cache_blocks_used Key/value cache blocks in use.\n"
      "# TYPE borealis_kv_cache_blocks_used gauge\nborealis_kv_cache_blocks_used {}\n"
      "# HELP borealis_kv_cache_blocks_total Key/value cache blocks.\n"
      "# TYPE borealis_kv_cache_blocks_total gauge\nborealis_kv_cache_blocks_total {}\n"
      "# HELP borealis_kv_cache_usage_ratio Fraction of the key/value cache in use.\n"
      "# TYPE borealis_kv_cache_usage_ratio gauge\nborealis_kv_cache_usage_ratio {}\n",
      g.waiting, g.running, g.used_blocks, g.total_blocks, usage);
  return out;
}

}  // namespace borealis
