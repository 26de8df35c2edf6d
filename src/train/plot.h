// Charts of a training run, drawn by gnuplot from RUN_DIR/metrics.jsonl
// (`borealis plot`).
//
// PNG charts, each against optimizer steps and/or tokens seen:
//   loss        train loss (raw, and an exponential moving average over it),
//               validation loss and skipped updates on the same axes
//   lr          learning rate
//   grad_norm   gradient norm, log scale
//   throughput  tokens/s (left axis) and MFU in percent (right axis)
//   eval        benchmark task scores ([eval] tasks), one line per task and
//               metric: scores on the left axis, perplexities on the right
//               (log scale); drawn only when the log has eval records
//   ranks       straggler reports of a data-parallel run: the median and the
//               slowest rank's busy time per step, the median network wait,
//               reports that flagged stragglers marked; drawn only when the
//               log has straggler records
// named <chart>_<steps|tokens>.png. Each PNG is written under a temporary name
// and renamed into place, so a reader never sees half a file. A chart with no
// values (a run that logs no MFU, say) is not drawn and is listed as such.
// Optionally also a text plot of the loss from gnuplot's dumb terminal.
#pragma once

#include <filesystem>
#include <string>
#include <vector>

#include "train/metrics_reader.h"

namespace borealis {

enum class PlotX { Steps, Tokens, Both };

struct PlotOptions {
  std::filesystem::path run_dir;
  std::filesystem::path out_dir;  // empty: run_dir / "plots"
  PlotX x = PlotX::Both;
  bool png = true;
  bool terminal = true;
  int width = 1200, height = 720;  // PNG size in pixels
  int term_width = 100, term_height = 25;
  double smooth = -1;  // EMA weight in [0, 1) for the train loss; < 0: chosen from the run length
  std::string gnuplot = "gnuplot";
};

struct PlotReport {
  std::filesystem::path metrics_path;
  MetricsLog metrics;
  double smooth = 0;                        // EMA weight used (0: none)
  std::string png_terminal;                 // gnuplot terminal that drew the PNGs
  std::vector<std::filesystem::path> pngs;  // written, in order
  std::vector<std::string> not_drawn;       // "lr_steps.png (no learning-rate values)"
  std::string terminal_plot;                // text plot of the loss, when asked for
};

// Reads the run's metrics and draws what the options ask for. Throws Error
// for a missing run directory or metrics log, a log with no train or valid
// records, a missing gnuplot, or a gnuplot failure.
PlotReport make_plots(const PlotOptions& options);

// The EMA weight used when none is given: none up to 100 points, then a
// memory of about n/50 points (1 - 50/n), at most 0.998.
double auto_smoothing(std::size_t points);

// Which of n values to draw in `buckets` pixel columns: all of them when
// there are at most two per column, else the first and last value and the
// lowest and highest of each run of n/buckets consecutive values, ascending.
// The thinned line covers the same pixels as the full one.
std::vector<std::size_t> thin_indices(const std::vector<double>& values, std::size_t buckets);

// A few lines: steps, tokens, last and best train loss, last valid loss,
// mean throughput, each task's last scores, the last straggler report and the
// ranks flagged as stragglers, and how the log's lines were accounted for.
std::string format_summary(const PlotReport& report);

// The same summary as one JSON object (`borealis plot --json`): the counts of
// the log's lines, last step and tokens, train loss (last, best, EMA), mean
// throughput and MFU, last valid loss, each task's last metrics, the straggler
// reports, and the PNG files written. Values a log does not have are null.
std::string summary_json(const PlotReport& report);

}  // namespace borealis
