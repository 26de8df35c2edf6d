// The metrics log reader (last line wins, an unfinished last line, bad lines
// named by file:line, null values) and `borealis plot` end to end on a
// synthetic run: valid PNGs of the requested size, the text plot, the
// summary, and one error line for each kind of bad input.
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/text.h"
#include "test_util.h"
#include "train/metrics_reader.h"
#include "train/plot.h"
#include "train/straggler.h"

namespace borealis::test {
namespace {

bool contains(const std::string& text, const std::string& what) {
  return text.find(what) != std::string::npos;
}

std::string train_line(int step, double loss, bool skipped = false) {
  return fmt::format(
      R"({{"kind":"train","step":{},"tokens":{},"loss":{},"lr":0.001,"grad_norm":1.5,)"
      R"("tokens_per_s":12000,"mfu":0.4,"elapsed_s":{},"skipped":{}}})",
      step, step * 4096, skipped ? "null" : fmt::format("{}", loss), step * 0.5,
      skipped ? "true" : "false");
}

// --- reader ---

TEST(MetricsReader, LastLineWinsForRepeatedSteps) {
  const std::string text = train_line(1, 9.0) + "\n" + train_line(2, 8.0) + "\n" +
                           train_line(3, 7.0) + "\n" +
                           R"({"kind":"valid","step":3,"tokens":12288,"loss":7.5,"elapsed_s":2})" +
                           "\n" + R"({"kind":"run","event":"resume","from_step":1})" + "\n" +
                           train_line(2, 8.5) + "\n" + train_line(3, 7.25) + "\n" +
                           R"({"kind":"valid","step":3,"tokens":12288,"loss":7.4,"elapsed_s":3})" +
                           "\n" + train_line(4, 6.0) + "\n";
  const MetricsLog log = parse_metrics(text, "m.jsonl");
  ASSERT_EQ(log.train.size(), 4u);
  EXPECT_EQ(log.train[0].step, 1);
  EXPECT_DOUBLE_EQ(*log.train[0].loss, 9.0);
  EXPECT_DOUBLE_EQ(*log.train[1].loss, 8.5);
  EXPECT_DOUBLE_EQ(*log.train[2].loss, 7.25);
  EXPECT_EQ(log.train[3].step, 4);
  EXPECT_EQ(log.train[3].tokens, 4 * 4096);
  ASSERT_EQ(log.valid.size(), 1u);
  EXPECT_DOUBLE_EQ(*log.valid[0].loss, 7.4);
  EXPECT_EQ(log.lines, 9u);
  EXPECT_EQ(log.replaced, 3u);
  EXPECT_EQ(log.other, 1u);
  EXPECT_FALSE(log.truncated_tail);
  EXPECT_EQ(log.lines, log.train.size() + log.valid.size() + log.replaced + log.other);
}

TEST(MetricsReader, UnfinishedLastLineIsIgnored) {
  TempDir dir;
  const std::string text =
      train_line(1, 9.0) + "\n\n" + train_line(2, 8.0) + "\n" + R"({"kind":"train","step":3,"to)";
  write_file(dir / "metrics.jsonl", text);
  const MetricsLog log = read_metrics(dir / "metrics.jsonl");
  ASSERT_EQ(log.train.size(), 2u);
  EXPECT_TRUE(log.truncated_tail);
  EXPECT_EQ(log.tail_line, 4u);  // blank lines count in line numbers
  EXPECT_EQ(log.lines, 3u);
  EXPECT_EQ(log.lines, log.train.size() + log.valid.size() + log.replaced + log.other + 1);
}

TEST(MetricsReader, BadLineElsewhereNamesFileAndLine) {
  const std::string good = train_line(1, 9.0) + "\n";
  EXPECT_EQ(error_line([&] {
              parse_metrics(good + "{not json\n" + good, "run/metrics.jsonl");
            }).find("(run/metrics.jsonl:2)") != std::string::npos,
            true);
  EXPECT_TRUE(contains(error_line([&] {
                         parse_metrics(good + "\n" + R"({"kind":"train","tokens":5})" + "\n" + good,
                                       "m.jsonl");
                       }),
                       "record has no \"step\" (m.jsonl:3)"));
  EXPECT_TRUE(contains(error_line([&] {
                         parse_metrics(R"({"kind":"valid","step":1,"tokens":2,"loss":"low"})"
                                       "\n" +
                                           good,
                                       "m");
                       }),
                       "\"loss\" must be a number or null, not \"low\" (m:1)"));
  EXPECT_TRUE(contains(error_line([&] { parse_metrics("[1,2]\n" + good, "m"); }),
                       "not a JSON object (m:1)"));
  EXPECT_TRUE(contains(error_line([&] {
                         parse_metrics(R"({"step":1})"
                                       "\n",
                                       "m");
                       }),
                       "no \"kind\" string (m:1)"));
  EXPECT_TRUE(contains(error_line([&] {
                         parse_metrics(R"({"kind":"train","step":-1,"tokens":0})"
                                       "\n",
                                       "m");
                       }),
                       "\"step\" must be a non-negative integer"));
  // A last line that parses but is wrong is an error, not an unfinished write.
  EXPECT_TRUE(contains(
      error_line([&] { parse_metrics(good + R"({"kind":"train","step":2,"tokens":1.5})", "m"); }),
      "(m:2)"));
}

TEST(MetricsReader, NullAndMissingValues) {
  const std::string text =
      R"({"kind":"train","step":7,"tokens":700,"loss":null,"lr":0.002,"grad_norm":null,)"
      R"("tokens_per_s":100.5,"elapsed_s":1.0,"skipped":true})"
      "\n"
      R"({"kind":"train","step":8,"tokens":800.0,"loss":3.5})"
      "\n";
  const MetricsLog log = parse_metrics(text, "m");
  ASSERT_EQ(log.train.size(), 2u);
  const TrainRecord& a = log.train[0];
  EXPECT_FALSE(a.loss.has_value());
  EXPECT_FALSE(a.grad_norm.has_value());
  EXPECT_FALSE(a.mfu.has_value());
  EXPECT_TRUE(a.skipped);
  EXPECT_DOUBLE_EQ(*a.lr, 0.002);
  const TrainRecord& b = log.train[1];
  EXPECT_EQ(b.tokens, 800);
  EXPECT_DOUBLE_EQ(*b.loss, 3.5);
  EXPECT_FALSE(b.skipped);
  EXPECT_FALSE(b.lr.has_value());
}

TEST(PlotLibrary, AutoSmoothing) {
  EXPECT_EQ(auto_smoothing(10), 0.0);
  EXPECT_EQ(auto_smoothing(100), 0.0);
  EXPECT_DOUBLE_EQ(auto_smoothing(200), 0.75);
  EXPECT_DOUBLE_EQ(auto_smoothing(1000), 0.95);
  EXPECT_DOUBLE_EQ(auto_smoothing(10000), 0.995);
  EXPECT_DOUBLE_EQ(auto_smoothing(10000000), 0.998);
}

std::string eval_line(int step, const std::string& task, const std::string& metrics) {
  return fmt::format(
      R"({{"kind":"eval","step":{},"tokens":{},"task":"{}",{},"elapsed_s":{},"eval_s":0.5}})", step,
      step * 4096, task, metrics, step * 0.5);
}

TEST(MetricsReader, EvalRecords) {
  const std::string text = train_line(4, 3.0) + "\n" +
                           eval_line(4, "mc", R"("acc":0.2,"acc_stderr":0.1,"acc_norm":null)") +
                           "\n" + eval_line(4, "ll", R"("perplexity":50)") + "\n" +
                           eval_line(8, "mc", R"("acc":0.3)") + "\n" +
                           eval_line(8, "mc", R"("acc":0.4)") + "\n";
  const MetricsLog log = parse_metrics(text, "m.jsonl");
  ASSERT_EQ(log.eval.size(), 3u);
  EXPECT_EQ(log.lines, 5u);
  EXPECT_EQ(log.replaced, 1u);
  EXPECT_EQ(log.other, 0u);
  // By step, then task.
  EXPECT_EQ(log.eval[0].task, "ll");
  EXPECT_EQ(log.eval[0].metrics.at("perplexity"), 50.0);
  EXPECT_EQ(log.eval[1].task, "mc");
  EXPECT_EQ(log.eval[1].step, 4);
  EXPECT_EQ(log.eval[1].tokens, 4 * 4096);
  EXPECT_EQ(log.eval[1].metrics.size(), 3u);  // the record's own fields are not metrics
  EXPECT_EQ(log.eval[1].metrics.at("acc"), 0.2);
  EXPECT_EQ(log.eval[1].metrics.at("acc_stderr"), 0.1);
  EXPECT_FALSE(log.eval[1].metrics.at("acc_norm").has_value());
  EXPECT_EQ(log.eval[1].elapsed_s, 2.0);
  EXPECT_EQ(log.eval[1].eval_s, 0.5);
  EXPECT_EQ(log.eval[2].metrics.at("acc"), 0.4);  // the last line wins

  EXPECT_EQ(error_line([] {
              parse_metrics(R"({"kind":"eval","step":1,"tokens":2,"acc":0.5})"
                            "\n" +
                                train_line(1, 2),
                            "m.jsonl");
            }),
            "error: eval record has no \"task\" string (m.jsonl:1)");
  EXPECT_EQ(error_line([] {
              parse_metrics(eval_line(1, "mc", R"("acc":"high")") + "\n" + train_line(1, 2),
                            "m.jsonl");
            }),
            "error: \"acc\" must be a number or null, not \"high\" (m.jsonl:1)");
}

// Straggler records as the trainer writes them (analyze_stragglers and
// straggler_record): 5 ranks over steps step-9..step, with data waits of 20,
// 30, 10, 20 and 25 ms and 500 ms of compute, rank 3's at `slow` x that: the
// median busy time is 0.525 s per step (0.52 s when rank 3 is not slow).
std::string straggler_line(int step, double slow) {
  std::vector<PhaseTimes> ranks(5, PhaseTimes{0.5, 0.02, 0.1});
  ranks[1].data = 0.03;
  ranks[2].data = 0.01;
  ranks[4].data = 0.025;
  ranks[3].compute *= slow;
  StragglerReport report = analyze_stragglers(ranks, {"nid1", "nid1", "nid2", "nid2", "nid3"}, 1.5);
  report.first_step = step - 9;
  report.last_step = step;
  return straggler_record(report);
}

TEST(MetricsReader, StragglerRecords) {
  const std::string text = train_line(10, 3.0) + "\n" + straggler_line(10, 1.2) + "\n" +
                           straggler_line(20, 1.0) + "\n" + straggler_line(20, 2.0) + "\n";
  const MetricsLog log = parse_metrics(text, "m.jsonl");
  EXPECT_EQ(log.lines, 4u);
  EXPECT_EQ(log.replaced, 1u);
  EXPECT_EQ(log.other, 0u);
  ASSERT_EQ(log.straggler.size(), 2u);
  const StragglerRecord& a = log.straggler[0];
  EXPECT_EQ(a.step, 10);
  EXPECT_EQ(a.first_step, 1);
  EXPECT_DOUBLE_EQ(*a.median_busy_s, 0.525);  // of busy times, not 0.5 + 0.02
  EXPECT_DOUBLE_EQ(*a.median_compute_s, 0.5);
  EXPECT_DOUBLE_EQ(*a.median_data_s, 0.02);
  EXPECT_DOUBLE_EQ(*a.median_comm_s, 0.1);
  ASSERT_EQ(a.slowest.size(), 3u);
  EXPECT_EQ(a.slowest[0].rank, 3);
  EXPECT_EQ(a.slowest[0].host, "nid2");
  EXPECT_DOUBLE_EQ(*a.slowest[0].busy_s, 0.62);
  EXPECT_DOUBLE_EQ(*a.slowest[0].compute_s, 0.6);
  EXPECT_NEAR(*a.slowest[0].ratio, 0.62 / 0.525, 1e-12);
  EXPECT_GT(*a.slowest[0].z, 0);
  EXPECT_EQ(a.slowest[0].slow_phase, "compute");
  EXPECT_EQ(a.slowest[1].rank, 1);
  EXPECT_EQ(a.slowest[1].host, "nid1");
  EXPECT_EQ(a.slowest[1].slow_phase, "data loader");
  EXPECT_EQ(a.slowest[2].rank, 4);
  EXPECT_EQ(a.slowest[2].host, "nid3");
  EXPECT_TRUE(a.stragglers.empty());            // 1.17x < 1.5x
  const StragglerRecord& b = log.straggler[1];  // the last line wins
  ASSERT_EQ(b.stragglers.size(), 1u);
  EXPECT_EQ(b.stragglers[0].rank, 3);
  EXPECT_NEAR(*b.stragglers[0].ratio, 1.02 / 0.525, 1e-12);

  EXPECT_EQ(error_line([] {
              parse_metrics(R"({"kind":"straggler","step":10,"first_step":1,"slowest":3})"
                            "\n" +
                                train_line(1, 2),
                            "m.jsonl");
            }),
            "error: \"slowest\" must be an array of ranks, not 3 (m.jsonl:1)");
  EXPECT_EQ(error_line([] {
              parse_metrics(
                  R"({"kind":"straggler","step":10,"first_step":1,"slowest":[{"host":"a"}]})"
                  "\n" +
                      train_line(1, 2),
                  "m.jsonl");
            }),
            "error: record has no \"rank\" (m.jsonl:1)");
  EXPECT_EQ(error_line([] {
              parse_metrics(R"({"kind":"straggler","step":10})"
                            "\n" +
                                train_line(1, 2),
                            "m.jsonl");
            }),
            "error: record has no \"first_step\" (m.jsonl:1)");
}

// --- plot ---

struct PngSize {
  std::uint32_t width = 0, height = 0;
};

// Checks the PNG signature and the IHDR chunk; returns the image size.
PngSize png_size(const std::filesystem::path& path) {
  const std::string bytes = read_file(path);
  EXPECT_GE(bytes.size(), 33u) << path;
  if (bytes.size() < 33) return {};
  EXPECT_EQ(bytes.substr(0, 8), std::string("\x89PNG\r\n\x1a\n", 8)) << path;
  EXPECT_EQ(bytes.substr(12, 4), "IHDR") << path;
  auto be32 = [&](std::size_t at) {
    std::uint32_t v = 0;
    for (std::size_t i = 0; i < 4; ++i) v = (v << 8) | static_cast<unsigned char>(bytes[at + i]);
    return v;
  };
  EXPECT_EQ(be32(8), 13u) << path;  // IHDR length
  return {be32(16), be32(20)};
}

// A 200-step run with warm-up and cosine decay, validation every 50 steps, one
// skipped update, a resume from step 150 that logs 150..160 again, and an
// unfinished last line.
std::string synthetic_run(bool with_valid) {
  std::string text = R"({"kind":"run","event":"start","world_size":1})"
                     "\n";
  auto train = [](int step, double offset) {
    const double loss = 3.0 + 8.0 * std::exp(-step / 40.0) + 0.15 * std::sin(step * 1.7) + offset;
    const double lr =
        step <= 20 ? 6e-4 * step / 20 : 6e-5 + 2.7e-4 * (1 + std::cos(M_PI * (step - 20) / 180.0));
    return fmt::format(
        R"({{"kind":"train","step":{},"tokens":{},"loss":{:.5f},"lr":{:.6g},"grad_norm":{:.4f},)"
        R"("tokens_per_s":{:.1f},"mfu":{:.4f},"elapsed_s":{:.2f},"skipped":false}})"
        "\n",
        step, step * 8192, loss, lr, 0.3 + 5.0 / step, 52000 + 900 * std::sin(step * 0.3),
        0.41 + 0.01 * std::sin(step * 0.3), step * 0.16);
  };
  for (int step = 1; step <= 160; ++step) {
    if (step == 90) {
      text += R"({"kind":"train","step":90,"tokens":737280,"loss":null,"lr":0.0004,)"
              R"("grad_norm":null,"tokens_per_s":51000,"mfu":0.4,"elapsed_s":14.4,"skipped":true})"
              "\n";
    } else {
      text += train(step, 0.5);  // superseded from 150 on by the resumed run
    }
    if (with_valid && step % 50 == 0) {
      text +=
          fmt::format(R"({{"kind":"valid","step":{},"tokens":{},"loss":{:.4f},"elapsed_s":{:.1f}}})"
                      "\n",
                      step, step * 8192, 3.1 + 8.0 * std::exp(-step / 40.0), step * 0.16);
    }
  }
  text += R"({"kind":"run","event":"resume","step":149})"
          "\n";
  for (int step = 150; step <= 200; ++step) {
    text += train(step, 0);
    if (with_valid && step % 50 == 0) {
      text +=
          fmt::format(R"({{"kind":"valid","step":{},"tokens":{},"loss":{:.4f},"elapsed_s":{:.1f}}})"
                      "\n",
                      step, step * 8192, 3.1 + 8.0 * std::exp(-step / 40.0), step * 0.16);
    }
  }
  return text + R"({"kind":"train","step":201,"tokens":164)";
}

const std::vector<std::string> kCharts = {"grad_norm", "loss", "lr", "throughput"};

TEST(PlotCli, DrawsEveryChartAndTheTextPlot) {
  TempDir dir;
  const auto run = dir / "run1";
  std::filesystem::create_directories(run);
  write_file(run / "metrics.jsonl", synthetic_run(true));
  const RunResult r = run_borealis({"plot", run.string(), "--width", "640", "--height", "400"});
  ASSERT_EQ(r.exit_code, 0) << r.err;

  std::vector<std::string> want;
  for (const auto& c : kCharts) {
    want.push_back(c + "_steps.png");
    want.push_back(c + "_tokens.png");
  }
  std::sort(want.begin(), want.end());
  EXPECT_EQ(list_dir(run / "plots"), want);  // no temporary files left behind
  for (const auto& name : want) {
    const PngSize size = png_size(run / "plots" / name);
    EXPECT_EQ(size.width, 640u) << name;
    EXPECT_EQ(size.height, 400u) << name;
    EXPECT_TRUE(contains(r.out, (run / "plots" / name).string())) << name << "\n" << r.out;
  }
  // The text plot: titled, framed, with its legend, before the summary.
  EXPECT_TRUE(contains(r.out, "run1: loss by optimizer step")) << r.out;
  EXPECT_TRUE(contains(r.out, "validation")) << r.out;
  EXPECT_TRUE(contains(r.out, "+------")) << r.out;
  EXPECT_LT(r.out.find("run1: loss by optimizer step"), r.out.find("steps: "));
  // The summary accounts for every line.
  EXPECT_TRUE(contains(r.out,
                       "(219 lines: 200 train, 4 valid, 12 replaced by a later line for the "
                       "same step, 2 of other kinds, 1 unfinished last line ignored)"))
      << r.out;
  EXPECT_TRUE(contains(r.out, "steps: 200 logged, last step 200, 1 skipped update")) << r.out;
  EXPECT_TRUE(contains(r.out, "tokens: 1.64M (1638400)")) << r.out;
  EXPECT_TRUE(contains(r.out, "valid loss: last 3.1539 (step 200)")) << r.out;
  EXPECT_TRUE(contains(r.out, "train loss: last ")) << r.out;
  EXPECT_TRUE(contains(r.out, "mean MFU 41.")) << r.out;
  EXPECT_TRUE(contains(r.out, "wrote 8 PNG files")) << r.out;
  EXPECT_TRUE(contains(r.err, "metrics.jsonl:219: ignoring the unfinished last line")) << r.err;
}

TEST(PlotCli, TokensOnlyIntoAnotherDirectory) {
  TempDir dir;
  write_file(dir / "metrics.jsonl", synthetic_run(true));
  const RunResult r = run_borealis({"plot", dir.path().string(), "--x", "tokens", "--out",
                                    (dir / "charts").string(), "--no-terminal", "--smooth", "0"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  std::vector<std::string> want;
  for (const auto& c : kCharts) want.push_back(c + "_tokens.png");
  EXPECT_EQ(list_dir(dir / "charts"), want);
  for (const auto& name : want) {
    const PngSize size = png_size(dir / "charts" / name);
    EXPECT_EQ(size.width, 1200u);
    EXPECT_EQ(size.height, 720u);
  }
  EXPECT_FALSE(std::filesystem::exists(dir / "plots"));
  EXPECT_FALSE(contains(r.out, "+------")) << r.out;
  EXPECT_FALSE(contains(r.out, "EMA")) << r.out;
}

TEST(PlotCli, TrainRecordsOnly) {
  TempDir tmp;
  // A quote and a space in the path must survive gnuplot's quoting.
  const auto dir = tmp / "it's a run";
  std::filesystem::create_directories(dir);
  write_file(dir / "metrics.jsonl", synthetic_run(false));
  const RunResult r = run_borealis({"plot", dir.string(), "--x", "steps"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(list_dir(dir / "plots").size(), 4u);
  EXPECT_EQ(png_size(dir / "plots" / "loss_steps.png").width, 1200u);
  EXPECT_TRUE(contains(r.out, "valid loss: none logged")) << r.out;
  EXPECT_TRUE(contains(r.out, "it's a run: loss by optimizer step")) << r.out;
}

TEST(PlotLibrary, ThinIndices) {
  std::vector<double> values(10000);
  for (std::size_t i = 0; i < values.size(); ++i) values[i] = std::sin(0.01 * i);
  values[5003] = 40;  // a spike survives thinning
  values[7777] = -40;
  const std::vector<std::size_t> keep = thin_indices(values, 100);
  EXPECT_LE(keep.size(), 202u);
  EXPECT_GE(keep.size(), 100u);
  EXPECT_EQ(keep.front(), 0u);
  EXPECT_EQ(keep.back(), 9999u);
  EXPECT_TRUE(std::is_sorted(keep.begin(), keep.end()));
  EXPECT_EQ(std::adjacent_find(keep.begin(), keep.end()), keep.end());
  EXPECT_NE(std::find(keep.begin(), keep.end(), 5003u), keep.end());
  EXPECT_NE(std::find(keep.begin(), keep.end(), 7777u), keep.end());
  // Every bucket keeps its extremes.
  for (std::size_t b = 0; b < 100; ++b) {
    double lo = 1e9, hi = -1e9, kept_lo = 1e9, kept_hi = -1e9;
    for (std::size_t i = b * 100; i < (b + 1) * 100; ++i)
      lo = std::min(lo, values[i]), hi = std::max(hi, values[i]);
    for (const std::size_t i : keep) {
      if (i >= b * 100 && i < (b + 1) * 100)
        kept_lo = std::min(kept_lo, values[i]), kept_hi = std::max(kept_hi, values[i]);
    }
    EXPECT_EQ(kept_lo, lo) << b;
    EXPECT_EQ(kept_hi, hi) << b;
  }
  // Short series are kept whole.
  EXPECT_EQ(thin_indices(std::vector<double>(202, 1.0), 100).size(), 202u);
  EXPECT_EQ(thin_indices({}, 100).size(), 0u);
}

TEST(PlotLibrary, ReportAndRedraw) {
  TempDir dir;
  write_file(dir / "metrics.jsonl", synthetic_run(true));
  PlotOptions o;
  o.run_dir = dir.path();
  o.png = false;
  o.terminal = false;
  o.gnuplot = (dir / "no-such-gnuplot").string();  // not needed when nothing is drawn
  PlotReport report = make_plots(o);
  EXPECT_EQ(report.metrics.train.size(), 200u);
  EXPECT_DOUBLE_EQ(report.smooth, 1.0 - 50.0 / 199);  // 199 losses: step 90 was skipped
  EXPECT_TRUE(report.pngs.empty());
  EXPECT_TRUE(contains(format_summary(report), "1 skipped update\n"));

  o.gnuplot = "gnuplot";
  o.png = true;
  o.x = PlotX::Steps;
  o.width = 300;
  o.height = 200;
  o.smooth = 0;
  report = make_plots(o);
  EXPECT_EQ(report.smooth, 0.0);
  ASSERT_EQ(report.pngs.size(), 4u);
  EXPECT_EQ(report.pngs[0], dir / "plots" / "loss_steps.png");
  // Drawn again at another size: the charts are replaced in place.
  o.width = 400;
  report = make_plots(o);
  EXPECT_EQ(list_dir(dir / "plots").size(), 4u);
  EXPECT_EQ(png_size(dir / "plots" / "throughput_steps.png").width, 400u);
  EXPECT_EQ(png_size(dir / "plots" / "throughput_steps.png").height, 200u);

  o.width = 100;
  EXPECT_EQ(error_line([&] { make_plots(o); }), "error: must be 200 to 10000 pixels (--width)");
}

TEST(PlotCli, TextPlotOnlyAndChartsWithoutValues) {
  TempDir dir;
  // No MFU, no tokens/s, no learning rate: those charts are not drawn.
  std::string text;
  for (int step = 1; step <= 5; ++step) {
    text += fmt::format(R"({{"kind":"train","step":{},"tokens":{},"loss":{},"grad_norm":2}})"
                        "\n",
                        step, step * 100, 10 - step);
  }
  write_file(dir / "metrics.jsonl", text);
  RunResult r = run_borealis({"plot", dir.path().string(), "--no-png"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_FALSE(std::filesystem::exists(dir / "plots"));
  EXPECT_TRUE(contains(r.out, "loss by optimizer step")) << r.out;
  EXPECT_TRUE(contains(r.out, "train loss: last 5.0000 (step 5), best 5.0000 (step 5)")) << r.out;

  r = run_borealis({"plot", dir.path().string(), "--x", "steps", "--no-terminal"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(list_dir(dir / "plots"),
            (std::vector<std::string>{"grad_norm_steps.png", "loss_steps.png"}));
  EXPECT_TRUE(contains(r.out, "not drawn: lr_steps.png (no learning-rate values)")) << r.out;
  EXPECT_TRUE(contains(r.out, "not drawn: throughput_steps.png")) << r.out;
  EXPECT_FALSE(contains(r.out, "throughput:")) << r.out;

  // MFU alone is drawn on the left axis.
  text.clear();
  for (int step = 1; step <= 5; ++step) {
    text += fmt::format(R"({{"kind":"train","step":{},"tokens":{},"loss":{},"mfu":0.25}})"
                        "\n",
                        step, step * 100, 10 - step);
  }
  write_file(dir / "metrics.jsonl", text);
  r = run_borealis({"plot", dir.path().string(), "--x", "tokens", "--no-terminal"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(png_size(dir / "plots" / "throughput_tokens.png").width, 1200u);
  EXPECT_TRUE(contains(r.out, "throughput: mean MFU 25.0%\n")) << r.out;
}

TEST(PlotCli, Errors) {
  TempDir dir;
  RunResult r = run_borealis({"plot", (dir / "nope").string()});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_TRUE(contains(r.err, "error: run directory not found (" + (dir / "nope").string() + ")"))
      << r.err;

  r = run_borealis({"plot", dir.path().string()});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_TRUE(contains(r.err, "error: no metrics.jsonl in the run directory")) << r.err;

  write_file(dir / "metrics.jsonl", "");
  r = run_borealis({"plot", dir.path().string()});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_TRUE(contains(r.err, "error: no train or valid records to plot (0 lines read)")) << r.err;

  write_file(dir / "metrics.jsonl", R"({"kind":"run","event":"start"})"
                                    "\n");
  r = run_borealis({"plot", dir.path().string()});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_TRUE(contains(r.err, "no train or valid records to plot (1 lines read)")) << r.err;

  write_file(dir / "metrics.jsonl", train_line(1, 2) + "\n{oops\n" + train_line(2, 1) + "\n");
  r = run_borealis({"plot", dir.path().string()});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_TRUE(contains(r.err, "malformed JSON line")) << r.err;
  EXPECT_TRUE(contains(r.err, (dir / "metrics.jsonl").string() + ":2)")) << r.err;
  EXPECT_FALSE(std::filesystem::exists(dir / "plots"));

  write_file(dir / "metrics.jsonl", train_line(1, 2) + "\n");
  r = run_borealis({"plot", dir.path().string(), "--width", "10"});
  EXPECT_EQ(r.exit_code, 2);
  r = run_borealis({"plot", dir.path().string(), "--x", "time"});
  EXPECT_EQ(r.exit_code, 2);
  r = run_borealis({"plot", dir.path().string(), "--smooth", "1.5"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_TRUE(contains(r.err, "--smooth")) << r.err;
}

TEST(PlotCli, MissingOrFailingGnuplot) {
  TempDir dir;
  write_file(dir / "metrics.jsonl", train_line(1, 2) + "\n" + train_line(2, 1.5) + "\n");
  const auto bin = dir / "bin";
  std::filesystem::create_directories(bin);
  RunResult r = run_borealis({"plot", dir.path().string()}, {"PATH=" + bin.string()});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_TRUE(contains(r.err, "error: gnuplot not found; install the Debian package gnuplot-nox"))
      << r.err;
  // Without gnuplot, --no-png --no-terminal still prints the summary.
  r = run_borealis({"plot", dir.path().string(), "--no-png", "--no-terminal"},
                   {"PATH=" + bin.string()});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(contains(r.out, "steps: 2 logged")) << r.out;

  // A gnuplot that answers the probe but fails to draw: its stderr is shown.
  write_file(bin / "gnuplot",
             "#!/bin/sh\n"
             "if [ \"$1\" = -e ]; then echo '5.4 patchlevel 4'; echo ' dumb png svg'; exit 0; fi\n"
             "echo 'line 7: something broke' >&2\nexit 3\n");
  std::filesystem::permissions(bin / "gnuplot", std::filesystem::perms::owner_all);
  r = run_borealis({"plot", dir.path().string()}, {"PATH=" + bin.string()});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_TRUE(contains(r.err, "gnuplot: line 7: something broke")) << r.err;
  EXPECT_TRUE(contains(r.err, "error: gnuplot failed (exit status 3): line 7: something broke"))
      << r.err;
  EXPECT_EQ(list_dir(dir / "plots"), std::vector<std::string>{});  // no temporary files left

  // One without any PNG terminal.
  write_file(bin / "gnuplot", "#!/bin/sh\necho '5.4 patchlevel 4'; echo ' dumb svg'\n");
  r = run_borealis({"plot", dir.path().string()}, {"PATH=" + bin.string()});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_TRUE(contains(r.err, "no PNG terminal")) << r.err;
}

// The real gnuplot, found on PATH.
std::filesystem::path real_gnuplot() {
  for (const auto& dir : split(std::getenv("PATH") != nullptr ? std::getenv("PATH") : "", ':')) {
    const auto candidate = std::filesystem::path(dir) / "gnuplot";
    if (::access(candidate.c_str(), X_OK) == 0) return candidate;
  }
  return {};
}

// A run with benchmark task scores: the eval chart (scores on the left
// axis, perplexities on the right) and each task's last scores. A gnuplot
// wrapper keeps the scratch directory, to check the series drawn.
// A gnuplot wrapper in DIR/bin that copies each run's script and data files
// into `kept` before running the real gnuplot; returns the PATH setting that
// puts it first.
std::string keeping_gnuplot(const std::filesystem::path& dir, const std::filesystem::path& gnuplot,
                            const std::filesystem::path& kept) {
  const auto bin = dir / "bin";
  std::filesystem::create_directories(bin);
  std::filesystem::create_directories(kept);
  write_file(bin / "gnuplot", "#!/bin/sh\nif [ -f \"$1\" ]; then cp \"$(dirname \"$1\")\"/* '" +
                                  kept.string() + "/'; fi\nexec '" + gnuplot.string() +
                                  "' \"$@\"\n");
  std::filesystem::permissions(bin / "gnuplot", std::filesystem::perms::owner_all);
  return "PATH=" + bin.string() + ":/usr/bin:/bin";
}

TEST(PlotCli, EvalChart) {
  const auto gnuplot = real_gnuplot();
  ASSERT_FALSE(gnuplot.empty()) << "gnuplot is not installed (scripts/setup.sh)";
  TempDir dir;
  std::string text;
  for (int step = 1; step <= 20; ++step) {
    text += train_line(step, 10.0 - 0.2 * step) + "\n";
    if (step % 5 != 0) continue;
    text += eval_line(step, "arc_easy",
                      fmt::format(R"("acc":{},"acc_stderr":0.02,"acc_norm":{},)"
                                  R"("acc_norm_stderr":0.021)",
                                  0.25 + 0.01 * step, 0.3 + 0.01 * step)) +
            "\n";
    text += eval_line(step, "wikitext",
                      fmt::format(R"("word_perplexity":{},"byte_perplexity":{},)"
                                  R"("bits_per_byte":{},"word_perplexity_stderr":null)",
                                  4000.0 / step, 8.0 / step, 3.0 / step)) +
            "\n";
  }
  write_file(dir / "metrics.jsonl", text);
  const auto kept = dir / "kept";
  const RunResult r = run_borealis({"plot", dir.path().string(), "--no-terminal"},
                                   {keeping_gnuplot(dir.path(), gnuplot, kept)});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(contains(r.out, "wrote 10 PNG files")) << r.out;
  EXPECT_EQ(png_size(dir / "plots" / "eval_steps.png").width, 1200u);
  EXPECT_EQ(png_size(dir / "plots" / "eval_tokens.png").width, 1200u);
  EXPECT_TRUE(contains(r.out, "(28 lines: 20 train, 0 valid, 8 eval, 0 replaced")) << r.out;
  EXPECT_TRUE(contains(r.out,
                       "eval arc_easy: acc 0.4500 ± 0.0200, acc_norm 0.5000 ± 0.0210 (step 20)\n"
                       "eval wikitext: bits_per_byte 0.1500, byte_perplexity 0.4000, "
                       "word_perplexity 200.0000 (step 20)\n"))
      << r.out;

  // A line per task and metric (tasks, then metrics, numbered as first seen),
  // standard errors left out: step, tokens, value.
  std::vector<std::string> data;
  for (const auto& name : list_dir(kept)) {
    if (name.starts_with("eval_")) data.push_back(name);
  }
  EXPECT_EQ(data, (std::vector<std::string>{"eval_0_0.dat", "eval_0_1.dat", "eval_1_2.dat",
                                            "eval_1_3.dat", "eval_1_4.dat"}));
  EXPECT_EQ(read_file(kept / "eval_0_0.dat"),
            "5 20480 0.3\n10 40960 0.35\n15 61440 0.4\n20 81920 0.45\n");
  EXPECT_EQ(read_file(kept / "eval_1_4.dat"),
            "5 20480 800\n10 40960 400\n15 61440 "
            "266.6666667\n20 81920 200\n");
  const std::string script = read_file(kept / "plot.gp");
  EXPECT_TRUE(contains(script, "set logscale y2\n")) << script;
  EXPECT_TRUE(contains(script, "eval_0_1.dat' using 1:3 with linespoints")) << script;
  EXPECT_TRUE(contains(script, "eval_1_4.dat' using 1:3 axes x1y2 with")) << script;
  EXPECT_TRUE(contains(script, "title 'arc_easy acc_norm'")) << script;
  EXPECT_TRUE(contains(script, "title 'wikitext word_perplexity'")) << script;
}

TEST(PlotCli, RanksChart) {
  const auto gnuplot = real_gnuplot();
  ASSERT_FALSE(gnuplot.empty()) << "gnuplot is not installed (scripts/setup.sh)";
  TempDir dir;
  std::string text;
  for (int step = 1; step <= 40; ++step) {
    text += train_line(step, 10.0 - 0.2 * step) + "\n";
    // Rank 3 slows down in the third window.
    if (step % 10 == 0) text += straggler_line(step, step == 30 ? 2.0 : 1.1) + "\n";
  }
  write_file(dir / "metrics.jsonl", text);
  const auto kept = dir / "kept";
  const RunResult r = run_borealis({"plot", dir.path().string(), "--no-terminal"},
                                   {keeping_gnuplot(dir.path(), gnuplot, kept)});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(contains(r.out, "wrote 10 PNG files")) << r.out;
  EXPECT_EQ(png_size(dir / "plots" / "ranks_steps.png").width, 1200u);
  EXPECT_EQ(png_size(dir / "plots" / "ranks_tokens.png").width, 1200u);
  EXPECT_TRUE(contains(r.out, "(44 lines: 40 train, 0 valid, 4 straggler, 0 replaced")) << r.out;
  EXPECT_TRUE(contains(r.out,
                       "ranks: 4 straggler reports, last over steps 31-40: median 0.525 s busy "
                       "per step; slowest rank 3 (nid2) 0.570 s, 1.09x, z 6.1, compute\n"))
      << r.out;
  EXPECT_TRUE(contains(r.out, "stragglers: rank 3 (nid2) in 1 report (up to 1.94x)\n")) << r.out;

  // step, tokens (the train record's at that step), seconds per step.
  EXPECT_EQ(read_file(kept / "ranks_median.dat"),
            "10 40960 0.525\n20 81920 0.525\n30 122880 0.525\n40 163840 0.525\n");
  EXPECT_EQ(read_file(kept / "ranks_slowest.dat"),
            "10 40960 0.57\n20 81920 0.57\n30 122880 1.02\n40 163840 0.57\n");
  EXPECT_EQ(read_file(kept / "ranks_network.dat"),
            "10 40960 0.1\n20 81920 0.1\n30 122880 0.1\n40 163840 0.1\n");
  EXPECT_EQ(read_file(kept / "ranks_stragglers.dat"), "30 122880 1.02\n");
  const std::string script = read_file(kept / "plot.gp");
  EXPECT_TRUE(contains(script, "title 'report with stragglers (1)'")) << script;
  EXPECT_TRUE(contains(script, "ranks_slowest.dat' using ($2/1000):3 with")) << script;

  // The same summary as JSON, reading the log only.
  const RunResult js = run_borealis({"plot", dir.path().string(), "--no-png", "--json"});
  ASSERT_EQ(js.exit_code, 0) << js.err;
  const nlohmann::json j = nlohmann::json::parse(js.out);
  EXPECT_EQ(j["lines"]["total"], 44);
  EXPECT_EQ(j["lines"]["straggler"], 4);
  EXPECT_EQ(j["last_step"], 40);
  EXPECT_EQ(j["tokens"], 163840);
  EXPECT_NEAR(j["train_loss"]["last"].get<double>(), 2.0, 1e-9);
  EXPECT_EQ(j["train_loss"]["best_step"], 40);
  EXPECT_TRUE(j["valid_loss"].is_null());
  EXPECT_EQ(j["stragglers"]["reports"], 4);
  EXPECT_EQ(j["stragglers"]["last"]["first_step"], 31);
  EXPECT_NEAR(j["stragglers"]["last"]["median_busy_s"].get<double>(), 0.525, 1e-9);
  EXPECT_EQ(j["stragglers"]["last"]["slowest"][0]["rank"], 3);
  ASSERT_EQ(j["stragglers"]["flagged"].size(), 1u);
  EXPECT_EQ(j["stragglers"]["flagged"][0]["host"], "nid2");
  EXPECT_NEAR(j["stragglers"]["flagged"][0]["max_ratio"].get<double>(), 1.02 / 0.525, 1e-9);
  EXPECT_TRUE(j["pngs"].empty());
  EXPECT_EQ(js.out.find("loss vs step"), std::string::npos) << "no text plot with --json";

  // A run with no stragglers says so.
  write_file(dir / "metrics.jsonl", train_line(10, 3.0) + "\n" + straggler_line(10, 1.0) + "\n");
  const RunResult quiet = run_borealis({"plot", dir.path().string(), "--no-terminal"});
  ASSERT_EQ(quiet.exit_code, 0) << quiet.err;
  EXPECT_TRUE(contains(quiet.out, "stragglers: none flagged\n")) << quiet.out;
}

TEST(PlotCli, FallsBackToThePngTerminal) {
  const auto gnuplot = real_gnuplot();
  ASSERT_FALSE(gnuplot.empty()) << "gnuplot is not installed (scripts/setup.sh)";
  TempDir dir;
  write_file(dir / "metrics.jsonl", synthetic_run(true));
  const auto bin = dir / "bin";
  std::filesystem::create_directories(bin);
  // A gnuplot that says it has no pngcairo terminal.
  write_file(bin / "gnuplot",
             "#!/bin/sh\n"
             "if [ \"$1\" = -e ]; then echo '5.4 patchlevel 4'; echo ' dumb png'; exit 0; fi\n"
             "exec '" +
                 gnuplot.string() + "' \"$@\"\n");
  std::filesystem::permissions(bin / "gnuplot", std::filesystem::perms::owner_all);
  const RunResult r = run_borealis(
      {"plot", dir.path().string(), "--x", "steps", "--width", "500", "--height", "300"},
      {"PATH=" + bin.string()});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(contains(r.out, "wrote 4 PNG files (png terminal, 500x300)")) << r.out;
  for (const auto& c : kCharts) {
    const PngSize size = png_size(dir / "plots" / (c + "_steps.png"));
    EXPECT_EQ(size.width, 500u) << c;
    EXPECT_EQ(size.height, 300u) << c;
  }
}

}  // namespace
}  // namespace borealis::test
