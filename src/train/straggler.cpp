#include "train/straggler.h"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <nlohmann/json.hpp>
#include <span>

namespace borealis {

namespace {

double median_of(std::vector<double> v) {
  if (v.empty()) return 0;
  const std::size_t mid = v.size() / 2;
  std::nth_element(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(mid), v.end());
  const double upper = v[mid];
  if (v.size() % 2 == 1) return upper;
  return (*std::max_element(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(mid)) + upper) / 2;
}

template <typename Get>
double median_by(const std::vector<PhaseTimes>& ranks, Get get) {
  std::vector<double> v;
  v.reserve(ranks.size());
  for (const PhaseTimes& t : ranks) v.push_back(get(t));
  return median_of(std::move(v));
}

nlohmann::json rank_json(const RankReport& r) {
  return {{"rank", r.rank},
          {"host", r.host},
          {"busy_s", r.per_step.busy()},
          {"compute_s", r.per_step.compute},
          {"data_s", r.per_step.data},
          {"comm_s", r.per_step.comm},
          {"role", r.role},
          {"ratio", r.ratio},
          {"z", r.zscore},
          {"slow_phase", r.slow_phase}};
}

}  // namespace

StragglerReport analyze_stragglers(const std::vector<PhaseTimes>& ranks,
                                   const std::vector<std::string>& hosts, double factor,
                                   std::size_t keep, const std::vector<int>& roles) {
  const auto role_of = [&](std::size_t r) { return r < roles.size() ? roles[r] : 0; };
  // Per role: the medians the role's ranks compare with, and the spread.
  struct RoleStats {
    PhaseTimes median;
    double busy = 0, sigma = 0;
  };
  std::vector<RoleStats> stats;
  for (std::size_t r = 0; r < ranks.size(); ++r) {
    const auto role = static_cast<std::size_t>(role_of(r));
    if (role < stats.size()) continue;
    stats.resize(role + 1);
  }
  for (std::size_t role = 0; role < stats.size(); ++role) {
    std::vector<PhaseTimes> peers;
    for (std::size_t r = 0; r < ranks.size(); ++r) {
      if (static_cast<std::size_t>(role_of(r)) == role) peers.push_back(ranks[r]);
    }
    RoleStats& s = stats[role];
    s.median.compute = median_by(peers, [](const PhaseTimes& t) { return t.compute; });
    s.median.data = median_by(peers, [](const PhaseTimes& t) { return t.data; });
    s.median.comm = median_by(peers, [](const PhaseTimes& t) { return t.comm; });
    s.busy = median_by(peers, [](const PhaseTimes& t) { return t.busy(); });
    std::vector<double> deviations;
    for (const PhaseTimes& t : peers) deviations.push_back(std::abs(t.busy() - s.busy));
    s.sigma = 1.4826 * median_of(deviations);
  }
  StragglerReport report;
  report.median.compute = median_by(ranks, [](const PhaseTimes& t) { return t.compute; });
  report.median.data = median_by(ranks, [](const PhaseTimes& t) { return t.data; });
  report.median.comm = median_by(ranks, [](const PhaseTimes& t) { return t.comm; });
  report.median_busy = median_by(ranks, [](const PhaseTimes& t) { return t.busy(); });

  std::vector<RankReport> all;
  for (std::size_t r = 0; r < ranks.size(); ++r) {
    RankReport rr;
    rr.rank = static_cast<int>(r);
    rr.host = r < hosts.size() ? hosts[r] : std::string();
    rr.per_step = ranks[r];
    rr.role = role_of(r);
    const RoleStats& s = stats[static_cast<std::size_t>(rr.role)];
    const double busy = ranks[r].busy();
    rr.ratio = s.busy > 0 ? busy / s.busy : 1;
    rr.zscore = s.sigma > 0 ? (busy - s.busy) / s.sigma : 0;
    const std::array<std::pair<double, const char*>, 3> excess = {
        std::pair{ranks[r].compute - s.median.compute, "compute"},
        std::pair{ranks[r].data - s.median.data, "data loader"},
        std::pair{ranks[r].comm - s.median.comm, "network"}};
    rr.slow_phase =
        std::max_element(excess.begin(), excess.end(), [](const auto& a, const auto& b) {
          return a.first < b.first;
        })->second;
    all.push_back(std::move(rr));
  }
  std::stable_sort(all.begin(), all.end(), [](const RankReport& a, const RankReport& b) {
    return a.per_step.busy() > b.per_step.busy();
  });
  for (const RankReport& r : all) {
    if (report.slowest.size() < keep) report.slowest.push_back(r);
    if (r.ratio >= factor && r.per_step.busy() > 0) report.stragglers.push_back(r);
  }
  return report;
}

std::string straggler_record(const StragglerReport& report) {
  nlohmann::json slowest = nlohmann::json::array();
  for (const RankReport& r : report.slowest) slowest.push_back(rank_json(r));
  nlohmann::json stragglers = nlohmann::json::array();
  for (const RankReport& r : report.stragglers) stragglers.push_back(rank_json(r));
  const nlohmann::json record = {{"kind", "straggler"},
                                 {"step", report.last_step},
                                 {"first_step", report.first_step},
                                 {"median_busy_s", report.median_busy},
                                 {"median_compute_s", report.median.compute},
                                 {"median_data_s", report.median.data},
                                 {"median_comm_s", report.median.comm},
                                 {"slowest", slowest},
                                 {"stragglers", stragglers}};
  return record.dump();
}

StragglerMonitor::StragglerMonitor(Communicator& comm, std::int64_t every, double factor,
                                   MetricsWriter* metrics, int role)
    : comm_(comm),
      every_(comm.size() > 1 ? every : 0),
      factor_(factor),
      metrics_(metrics),
      role_(role) {}

void StragglerMonitor::add(const PhaseTimes& step) {
  sum_.compute += step.compute;
  sum_.data += step.data;
  sum_.comm += step.comm;
  ++steps_;
}

void StragglerMonitor::after_step(std::int64_t step) {
  if (every_ <= 0 || step % every_ != 0 || steps_ == 0) return;
  const auto n = static_cast<double>(steps_);
  const std::array<double, 5> mine = {sum_.compute / n, sum_.data / n, sum_.comm / n, n,
                                      static_cast<double>(role_)};
  std::vector<double> all(5 * static_cast<std::size_t>(comm_.size()));
  comm_.all_gather(std::span<const double>(mine), std::span<double>(all));
  const std::int64_t first = step - steps_ + 1;
  sum_ = PhaseTimes{};
  steps_ = 0;
  if (comm_.rank() != 0) return;

  std::vector<PhaseTimes> ranks(static_cast<std::size_t>(comm_.size()));
  std::vector<std::string> hosts;
  std::vector<int> roles;
  for (std::size_t r = 0; r < ranks.size(); ++r) {
    ranks[r] = {all[5 * r], all[5 * r + 1], all[5 * r + 2]};
    roles.push_back(static_cast<int>(all[5 * r + 4]));
    hosts.push_back(comm_.host(static_cast<int>(r)));
  }
  StragglerReport report = analyze_stragglers(ranks, hosts, factor_, 3, roles);
  const bool staged = std::ranges::any_of(roles, [](int r) { return r != 0; });
  report.first_step = first;
  report.last_step = step;
  if (metrics_ != nullptr) metrics_->write(straggler_record(report));
  const RankReport& top = report.slowest.front();
  spdlog::info(
      "ranks over steps {}-{}: median {:.3f} s busy per step; slowest rank {} ({}) {:.3f} s "
      "({:.2f}x, z {:.1f}, {})",
      first, step, report.median_busy, top.rank, top.host, top.per_step.busy(), top.ratio,
      top.zscore, top.slow_phase);
  for (const RankReport& r : report.stragglers) {
    spdlog::warn(
        "straggler: rank {} ({}) is {:.2f}x the median rank{} over steps {}-{}: compute {:.3f} "
        "s, data loader {:.3f} s, network {:.3f} s per step; its {} is slow",
        r.rank, r.host, r.ratio, staged ? fmt::format(" of pipeline stage {}", r.role) : "", first,
        step, r.per_step.compute, r.per_step.data, r.per_step.comm, r.slow_phase);
  }
}

}  // namespace borealis
