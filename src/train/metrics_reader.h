// Reading a run's metrics log (RUN_DIR/metrics.jsonl), as the trainer writes it.
//
// One JSON object per line, told apart by "kind":
//   train: step, tokens, loss, lr, grad_norm, tokens_per_s, mfu, elapsed_s, skipped
//   valid: step, tokens, loss, elapsed_s
//   eval:  step, tokens, task, elapsed_s, eval_s, and the task's metrics under
//          lm-eval's names (acc, acc_stderr, acc_norm, perplexity, ...): every
//          other field, a number or null
//   straggler: step, first_step, median_busy_s, median_compute_s, median_data_s,
//          median_comm_s, and "slowest" and "stragglers": arrays of ranks (rank,
//          host, busy_s, compute_s, data_s, comm_s, ratio, z, slow_phase)
// Other kinds ("run" records and the like) are counted and ignored. Values may
// be null (a non-finite loss is written as null); step and tokens may not.
//
// A resumed run appends to the same file and may log a step again: for each
// (kind, step), and for eval records each (step, task), the last line wins. The last line may be
// cut short (the run was killed while writing it): an unparsable last line is dropped with a
// warning. Any other bad line is an Error naming "file:line".
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace borealis {

struct TrainRecord {
  std::int64_t step = 0;    // completed optimizer steps, from 1
  std::int64_t tokens = 0;  // tokens seen after this step
  std::optional<double> loss, lr, grad_norm, tokens_per_s, mfu, elapsed_s;
  bool skipped = false;  // the update was skipped (non-finite or spiking loss)
};

struct ValidRecord {
  std::int64_t step = 0;
  std::int64_t tokens = 0;
  std::optional<double> loss, elapsed_s;
};

// The scores of one benchmark task at one validation point ([eval] tasks).
struct EvalRecord {
  std::int64_t step = 0;
  std::int64_t tokens = 0;
  std::string task;
  std::optional<double> elapsed_s, eval_s;  // the run's training time; the task's scoring time
  std::map<std::string, std::optional<double>> metrics;  // "acc" -> 0.31, "acc_stderr" -> ...
};

// One rank of a straggler report: its times per step over the report's window.
struct StragglerRank {
  int rank = 0;
  std::string host;
  std::optional<double> busy_s, compute_s, data_s, comm_s, ratio, z;
  std::string slow_phase;  // "compute", "data loader" or "network"
};

// A straggler report of a data-parallel run ([dist] straggler_every) over
// steps first_step..step: the median rank's times and the slowest ranks.
struct StragglerRecord {
  std::int64_t step = 0, first_step = 0;
  std::optional<double> median_busy_s, median_compute_s, median_data_s, median_comm_s;
  std::vector<StragglerRank> slowest;     // busiest first
  std::vector<StragglerRank> stragglers;  // at straggler_factor x the median or more
};

struct MetricsLog {
  std::vector<TrainRecord> train;          // one per step, ascending
  std::vector<ValidRecord> valid;          // one per step, ascending
  std::vector<EvalRecord> eval;            // one per step and task, by step, then task name
  std::vector<StragglerRecord> straggler;  // one per step, ascending

  // What was read, and what became of it: lines = train.size() + valid.size()
  // + eval.size() + straggler.size() + replaced + other + (truncated_tail ? 1 : 0).
  std::size_t lines = 0;     // non-blank lines
  std::size_t replaced = 0;  // records superseded by a later line for the same kind and step
  std::size_t other = 0;     // records of other kinds, ignored
  bool truncated_tail = false;
  std::size_t tail_line = 0;  // its line number, when truncated_tail
  std::string tail_error;     // why it could not be parsed
};

// Parses the text of a metrics log; `name` is the file name used in errors.
MetricsLog parse_metrics(std::string_view text, const std::string& name);

// Reads and parses a metrics log. Throws Error when it cannot be read or a
// line other than the last is malformed. Logs a warning for a dropped last line.
MetricsLog read_metrics(const std::filesystem::path& path);

}  // namespace borealis
