// Straggler reports of a data-parallel run ([dist] straggler_every,
// straggler_factor).
//
// Every rank times each step in three phases: data (waiting for the batch
// loader), communication (waiting for the gradient reduction and the
// step's small collectives) and compute (the rest: forward, backward,
// update). In a synchronous run every rank's step takes as long as the
// slowest rank's, so the step time itself does not single a rank out: a slow
// rank shows a longer compute or data time, and the others a longer wait in
// communication. A rank's "busy" time is compute + data.
//
// Every straggler_every steps each rank sends its sums over those steps to
// every other (one all_gather of 4 numbers), and rank 0 reports:
//   - the median busy time per step over the ranks, and for the slowest ranks
//     their busy time, its ratio to the median, its robust z-score
//     ((busy - median) / (1.4826 MAD), 0 when the ranks do not spread) and
//     the phase that is slow: the one of compute, data loader and network
//     whose time exceeds the median rank's by the most;
//   - a warning naming rank and host for each rank whose busy time is
//     straggler_factor x the median or more.
// The report is a log line and a "straggler" record in metrics.jsonl.
//
// Ranks with different work (the stages of a pipeline-parallel run) are
// compared only with ranks of the same role: ratios, z-scores and the slow
// phase are against the median of the rank's role. A pipeline stage's wait
// for its neighbours counts as communication.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "dist/communicator.h"
#include "train/metrics_writer.h"

namespace borealis {

// Seconds of one rank, per step (or summed over steps).
struct PhaseTimes {
  double compute = 0, data = 0, comm = 0;
  double busy() const { return compute + data; }
};

struct RankReport {
  int rank = 0;
  std::string host;
  PhaseTimes per_step;  // averages over the window
  int role = 0;         // ranks of one role do the same work (pipeline stage)
  double ratio = 1;     // busy time / the median rank's of its role
  double zscore = 0;
  std::string slow_phase;  // "compute", "data loader" or "network"
};

struct StragglerReport {
  std::int64_t first_step = 0, last_step = 0;  // the window
  PhaseTimes median;                           // per phase, over the ranks
  // The median of the ranks' busy times: what ratios and z-scores compare
  // with (not median.compute + median.data, which can differ from it).
  double median_busy = 0;
  std::vector<RankReport> slowest;     // busiest first, at most `keep`
  std::vector<RankReport> stragglers;  // ratio >= factor, busiest first
};

// Rank 0's analysis of every rank's per-step averages (index = rank).
// roles (index = rank; empty: all one role) say which ranks compare.
StragglerReport analyze_stragglers(const std::vector<PhaseTimes>& ranks,
                                   const std::vector<std::string>& hosts, double factor,
                                   std::size_t keep = 3, const std::vector<int>& roles = {});

// The metrics.jsonl record of a report.
std::string straggler_record(const StragglerReport& report);

class StragglerMonitor {
 public:
  // every = 0 or a single rank: off. metrics: rank 0's writer, null elsewhere.
  // role: this rank's (its pipeline stage; 0 without a pipeline).
  StragglerMonitor(Communicator& comm, std::int64_t every, double factor, MetricsWriter* metrics,
                   int role = 0);

  bool enabled() const { return every_ > 0; }
  // One finished step's times.
  void add(const PhaseTimes& step);
  // After step `step` (from 1): on every straggler_every-th step, the
  // collective and, on rank 0, the report. Every rank must call it at the
  // same steps.
  void after_step(std::int64_t step);

 private:
  Communicator& comm_;
  std::int64_t every_;
  double factor_;
  MetricsWriter* metrics_;
  int role_;
  PhaseTimes sum_;
  std::int64_t steps_ = 0;
};

}  // namespace borealis
