// Each plotted series goes to its own whitespace-separated data file in a
// scratch directory (columns: step, tokens, value), so that a missing value
// never needs gnuplot's missing-data rules: a point without a value is simply
// not in the file. One gnuplot script then draws every chart into temporary
// files next to their final names, and the text plot into the scratch
// directory; only when gnuplot has succeeded are the PNGs renamed into place.
#include "train/plot.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <fstream>
#include <iterator>
#include <map>
#include <sstream>
#include <system_error>
#include <utility>

#include "core/atomic_file.h"
#include "core/error.h"
#include "core/text.h"
#include "train/gnuplot.h"
#include "train/plot_units.h"

namespace borealis {

using plot_detail::Unit;
using plot_detail::unit_for;
using plot_detail::usable;

namespace {

struct Point {
  double step, tokens, value;
};

struct Series {
  std::string file;   // data file name in the scratch directory
  std::string style;  // gnuplot "with ..." clause
  std::string title;
  bool y2 = false;    // plotted against the right axis
  double y_unit = 1;  // values are divided by this on the chart
  std::vector<Point> points;
};

struct Chart {
  std::string name;  // file name stem
  std::string title;
  std::string ylabel;
  std::string setup;    // extra gnuplot commands
  std::string no_data;  // why it is not drawn, when no series has points
  std::vector<Series> series;

  bool empty() const {
    return std::all_of(series.begin(), series.end(),
                       [](const Series& s) { return s.points.empty(); });
  }
};

std::string number(double v) {
  return fmt::format("{:.10g}", v);
}

// The EMA of the train loss, one value per plotted loss point.
std::vector<Point> ema(const std::vector<Point>& raw, double weight) {
  std::vector<Point> out;
  out.reserve(raw.size());
  double s = 0;
  for (std::size_t i = 0; i < raw.size(); ++i) {
    s = i == 0 ? raw[i].value : weight * s + (1 - weight) * raw[i].value;
    out.push_back({raw[i].step, raw[i].tokens, s});
  }
  return out;
}

Series series(std::string file, std::string style, std::string title) {
  Series s;
  s.file = std::move(file);
  s.style = std::move(style);
  s.title = std::move(title);
  return s;
}

// Perplexities and bits per byte: lower is better, and a young model's are
// orders of magnitude above a trained one's, so they get a log axis of
// their own; scores (accuracies, exact match) keep the linear one.
bool is_perplexity(const std::string& metric) {
  return metric.find("perplexity") != std::string::npos || metric == "bits_per_byte";
}

// One line per task and metric (standard errors left out): a colour per
// task, a dash pattern per metric.
Chart eval_chart(const std::vector<EvalRecord>& records) {
  static const char* const kColours[] = {"#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd",
                                         "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"};
  std::vector<std::string> tasks, metrics;
  const auto index = [](std::vector<std::string>& names, const std::string& name) {
    const auto it = std::find(names.begin(), names.end(), name);
    if (it != names.end()) return static_cast<std::size_t>(it - names.begin());
    names.push_back(name);
    return names.size() - 1;
  };
  std::map<std::pair<std::size_t, std::size_t>, Series> lines;  // (task, metric) -> line
  for (const EvalRecord& r : records) {
    const std::size_t t = index(tasks, r.task);
    for (const auto& [metric, value] : r.metrics) {
      if (metric.ends_with("_stderr") || !usable(value)) continue;
      if (is_perplexity(metric) && !(*value > 0)) continue;  // not on a log axis
      const std::size_t m = index(metrics, metric);
      auto [it, added] = lines.try_emplace({t, m});
      Series& line = it->second;
      if (added) {
        line = series(fmt::format("eval_{}_{}.dat", t, m),
                      fmt::format("linespoints lw 2 pt 7 ps 1 lc rgb '{}' dt {}",
                                  kColours[t % std::size(kColours)], 1 + m % 5),
                      r.task + " " + metric);
        line.y2 = is_perplexity(metric);
      }
      line.points.push_back({static_cast<double>(r.step), static_cast<double>(r.tokens), *value});
    }
  }
  // The key goes below the chart: one entry per line, and there may be many.
  Chart chart{
      "eval", "benchmark tasks", "score", "set key below nobox noopaque\n", "no task scores", {}};
  bool scores = false, perplexities = false;
  for (auto& [key, line] : lines) {
    (line.y2 ? perplexities : scores) = true;
    chart.series.push_back(std::move(line));
  }
  if (scores && perplexities) {
    chart.setup +=
        // An automatic right margin, wide enough for the right axis's labels.
        "set rmargin\nset ytics nomirror\nset y2tics\nset logscale y2\n"
        "set y2label 'perplexity, bits per byte (log scale)'\n";
  } else if (perplexities) {
    chart.ylabel = "perplexity, bits per byte (log scale)";
    chart.setup += "set logscale y\nset format y '%g'\n";
    for (Series& line : chart.series) line.y2 = false;
  }
  return chart;
}

// The straggler reports of a data-parallel run: per report window, the median
// rank's busy time per step (compute + data wait), the slowest rank's, and
// the median wait for the network; a report that flagged stragglers is marked
// on the slowest rank's line. Straggler records carry no token count: each
// takes the tokens of the last train record at or before its step.
Chart ranks_chart(const MetricsLog& log) {
  Series median = series("ranks_median.dat", "linespoints lw 2 pt 7 ps 0.8 lc rgb '#1f77b4'",
                         "median rank: compute + data wait");
  Series slowest = series("ranks_slowest.dat", "linespoints lw 2 pt 7 ps 0.8 lc rgb '#d62728'",
                          "slowest rank: compute + data wait");
  Series network =
      series("ranks_network.dat", "lines lw 1 dt 2 lc rgb '#2ca02c'", "median rank: network wait");
  Series flagged = series("ranks_stragglers.dat", "points pt 6 ps 2.5 lw 2 lc rgb '#ff7f0e'", "");
  for (const StragglerRecord& r : log.straggler) {
    const auto it =
        std::upper_bound(log.train.begin(), log.train.end(), r.step,
                         [](std::int64_t step, const TrainRecord& t) { return step < t.step; });
    const double step = static_cast<double>(r.step);
    const double tokens = it == log.train.begin() ? 0 : static_cast<double>(std::prev(it)->tokens);
    if (usable(r.median_busy_s)) median.points.push_back({step, tokens, *r.median_busy_s});
    if (usable(r.median_comm_s)) network.points.push_back({step, tokens, *r.median_comm_s});
    if (!r.slowest.empty() && usable(r.slowest.front().busy_s)) {
      slowest.points.push_back({step, tokens, *r.slowest.front().busy_s});
      if (!r.stragglers.empty()) flagged.points.push_back(slowest.points.back());
    }
  }
  flagged.title = fmt::format("report with stragglers ({})", flagged.points.size());
  return {"ranks",
          "data-parallel ranks",
          "seconds per step",
          "set yrange [0:*]\nset key below nobox noopaque\n",
          "no straggler report times",
          {median, slowest, network, flagged}};
}

std::vector<Chart> build_charts(const MetricsLog& log, double smooth) {
  Series raw = series("train_loss.dat", "lines lw 1 lc rgb '#1f77b4'", "train");
  Series valid =
      series("valid_loss.dat", "linespoints lw 2 pt 7 ps 1.2 lc rgb '#d62728'", "validation");
  Series skipped = series("skipped.dat", "points pt 2 ps 1.5 lw 2 lc rgb '#ff7f0e'", "");
  Series lr = series("lr.dat", "lines lw 2 lc rgb '#2ca02c'", "learning rate");
  Series grad = series("grad_norm.dat", "lines lw 1 lc rgb '#9467bd'", "gradient norm");
  Series tps = series("tokens_per_s.dat", "lines lw 1 lc rgb '#1f77b4'", "tokens/s (left axis)");
  Series mfu = series("mfu.dat", "lines lw 1 lc rgb '#d62728'", "MFU (right axis)");
  mfu.y2 = true;

  for (const TrainRecord& r : log.train) {
    const double step = static_cast<double>(r.step), tokens = static_cast<double>(r.tokens);
    if (r.skipped) {
      // Drawn on the smoothed curve (filled in below): a spiking or
      // non-finite loss would otherwise swamp the axis.
      skipped.points.push_back({step, tokens, std::nan("")});
    } else if (usable(r.loss)) {
      raw.points.push_back({step, tokens, *r.loss});
    }
    if (usable(r.lr)) lr.points.push_back({step, tokens, *r.lr});
    if (usable(r.grad_norm) && *r.grad_norm > 0)
      grad.points.push_back({step, tokens, *r.grad_norm});
    if (usable(r.tokens_per_s)) tps.points.push_back({step, tokens, *r.tokens_per_s});
    if (usable(r.mfu)) mfu.points.push_back({step, tokens, 100 * *r.mfu});
  }
  for (const ValidRecord& r : log.valid) {
    if (usable(r.loss)) {
      valid.points.push_back({static_cast<double>(r.step), static_cast<double>(r.tokens), *r.loss});
    }
  }

  Series smoothed = series("train_loss_ema.dat", "lines lw 2 lc rgb '#08306b'",
                           fmt::format("train, EMA {:.3g}", smooth));
  if (smooth > 0) {
    smoothed.points = ema(raw.points, smooth);
    raw.style = "lines lw 1 lc rgb '#9ecae1'";
    raw.title = "train (raw)";
  }
  const std::vector<Point>& curve = smooth > 0 ? smoothed.points : raw.points;
  for (Point& p : skipped.points) {
    // The curve's value at the last plotted step before the skipped one.
    auto it = std::upper_bound(curve.begin(), curve.end(), p.step,
                               [](double s, const Point& c) { return s < c.step; });
    if (it != curve.begin()) {
      p.value = std::prev(it)->value;
    } else if (!curve.empty()) {
      p.value = curve.front().value;
    }
  }
  std::erase_if(skipped.points, [](const Point& p) { return std::isnan(p.value); });
  skipped.title = fmt::format("skipped update ({})", skipped.points.size());

  std::vector<Chart> charts;
  charts.push_back({"loss", "loss", "loss (nats/token)", "", "no loss values", {}});
  charts.back().series = {raw, smoothed, valid, skipped};
  charts.push_back({"lr",
                    "learning rate",
                    "learning rate",
                    "set format y '%.2g'\n",
                    "no learning-rate values",
                    {lr}});
  charts.push_back({"grad_norm",
                    "gradient norm",
                    "gradient norm (L2, log scale)",
                    "set logscale y\nset format y '%g'\n",
                    "no positive gradient norms",
                    {grad}});
  double max_tps = 0;
  for (const Point& p : tps.points) max_tps = std::max(max_tps, p.value);
  const Unit tps_unit = unit_for(max_tps);
  tps.y_unit = tps_unit.divisor;
  const std::string tps_label =
      fmt::format("throughput ({}tokens/s)", tps_unit.prefix.empty() ? "" : tps_unit.prefix + " ");
  // Both start at 0 and run near the top: the key goes to the bottom.
  std::string setup = "set key bottom right\nset yrange [0:*]\n";
  std::string ylabel = tps_label;
  if (!tps.points.empty() && !mfu.points.empty()) {
    // Two axes: each axis label takes its curve's colour.
    setup += "set ytics nomirror\nset ylabel " + gnuplot_quote(tps_label) +
             " textcolor rgb '#1f77b4'\n"
             "set y2label 'MFU (% of peak)' textcolor rgb '#d62728'\nset y2tics\n"
             "set y2range [0:*]\n";
  } else if (tps.points.empty()) {
    ylabel = "MFU (% of peak)";
    mfu.y2 = false;
    mfu.title = "MFU";
  } else {
    tps.title = "tokens/s";
  }
  charts.push_back(
      {"throughput", "throughput", ylabel, setup, "no tokens/s or MFU values", {tps, mfu}});
  // Only for runs that evaluate tasks: the others' output stays as it was.
  if (!log.eval.empty()) charts.push_back(eval_chart(log.eval));
  if (!log.straggler.empty()) charts.push_back(ranks_chart(log));
  return charts;
}

void write_data(const std::filesystem::path& dir, const Series& s, std::size_t buckets) {
  std::vector<double> values;
  values.reserve(s.points.size());
  for (const Point& p : s.points) values.push_back(p.value);
  std::string text;
  for (const std::size_t i : thin_indices(values, buckets)) {
    const Point& p = s.points[i];
    text += number(p.step) + ' ' + number(p.tokens) + ' ' + number(p.value) + '\n';
  }
  write_file_atomic(dir / s.file, text);
}

// Commands that draw one chart against steps or tokens on the current terminal.
// A line through one point draws nothing: a lone point is marked instead.
std::string style_for(const Series& s, bool text) {
  if (s.points.size() != 1 || !(s.style == "lines" || s.style.starts_with("lines "))) {
    return s.style;
  }
  return text ? "points pt 'o'" : "linespoints pt 7 ps 1.2" + s.style.substr(5);
}

// `text`: for the dumb terminal, where a grid and a key box are clutter.
std::string chart_script(const Chart& c, bool tokens, const Unit& token_unit,
                         const std::string& run, const std::filesystem::path& data_dir, bool text) {
  std::string s = "reset\nset autoscale xfix\n";
  s += text ? "set key top right nobox\n" : "set grid\nset key top right box opaque\n";
  // Room for the last x tick label, which autoscale puts on the right edge,
  // and above the highest point, so that a flat line does not hide in the border.
  if (!text) s += "set rmargin 6\n";
  s += "set offsets 0, 0, graph 0.05, 0\n";
  s += "set title " +
       gnuplot_quote(
           fmt::format("{}: {} by {}", run, c.title, tokens ? "tokens seen" : "optimizer step")) +
       (text ? "\n" : " font ',13'\n");
  if (!tokens) {
    s += "set xlabel 'optimizer step'\n";
  } else if (token_unit.name.empty()) {
    s += "set xlabel 'tokens seen'\n";
  } else {
    s += "set xlabel " + gnuplot_quote("tokens seen (" + token_unit.name + ")") + "\n";
  }
  s += "set ylabel " + gnuplot_quote(c.ylabel) + "\n" + c.setup;
  std::string plot;
  for (const Series& series : c.series) {
    if (series.points.empty()) continue;
    plot += plot.empty() ? "plot " : ", \\\n     ";
    const std::string x =
        tokens ? (token_unit.divisor == 1 ? "2" : fmt::format("($2/{})", token_unit.divisor)) : "1";
    const std::string y = series.y_unit == 1 ? "3" : fmt::format("($3/{})", series.y_unit);
    plot += gnuplot_quote((data_dir / series.file).string()) + " using " + x + ":" + y +
            (series.y2 ? " axes x1y2" : "") + " with " + style_for(series, text) + " title " +
            gnuplot_quote(series.title);
  }
  return s + plot + "\n";
}

// Flushes a finished file to disk before it is renamed into place.
void fsync_file(const std::filesystem::path& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw_errno("cannot open", path.string(), errno);
  const int rc = ::fsync(fd);
  const int err = errno;
  ::close(fd);
  if (rc != 0) throw_errno("cannot sync", path.string(), err);
}

// Removes the temporary PNGs that were not renamed into place.
struct TempFiles {
  std::vector<std::filesystem::path> paths;
  ~TempFiles() {
    std::error_code ec;
    for (const auto& p : paths) std::filesystem::remove(p, ec);
  }
};

// gnuplot pads the dumb terminal's page with blank lines and trailing spaces.
std::string tidy_text_plot(const std::string& page) {
  std::vector<std::string> lines;
  for (std::string line : split(page, '\n')) {
    while (!line.empty() && (line.back() == ' ' || line.back() == '\r' || line.back() == '\f')) {
      line.pop_back();
    }
    lines.push_back(line);
  }
  while (!lines.empty() && lines.back().empty()) lines.pop_back();
  std::size_t first = 0;
  while (first < lines.size() && lines[first].empty()) ++first;
  std::string out;
  for (std::size_t i = first; i < lines.size(); ++i) out += lines[i] + "\n";
  return out;
}

std::string read_text(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

}  // namespace

std::vector<std::size_t> thin_indices(const std::vector<double>& values, std::size_t buckets) {
  const std::size_t n = values.size();
  std::vector<std::size_t> keep;
  if (buckets == 0 || n <= 2 * buckets + 2) {
    keep.resize(n);
    for (std::size_t i = 0; i < n; ++i) keep[i] = i;
    return keep;
  }
  keep.reserve(2 * buckets + 2);
  keep.push_back(0);
  for (std::size_t b = 0; b < buckets; ++b) {
    const std::size_t lo = n * b / buckets, hi = n * (b + 1) / buckets;
    std::size_t low = lo, high = lo;
    for (std::size_t i = lo; i < hi; ++i) {
      if (values[i] < values[low]) low = i;
      if (values[i] > values[high]) high = i;
    }
    for (const std::size_t i : {std::min(low, high), std::max(low, high)}) {
      if (i != keep.back()) keep.push_back(i);
    }
  }
  if (keep.back() != n - 1) keep.push_back(n - 1);
  return keep;
}

double auto_smoothing(std::size_t points) {
  if (points <= 100) return 0;
  return std::min(0.998, 1.0 - 50.0 / static_cast<double>(points));
}

PlotReport make_plots(const PlotOptions& o) {
  if (o.width < 200 || o.width > 10000) throw Error("must be 200 to 10000 pixels", "--width");
  if (o.height < 150 || o.height > 10000) throw Error("must be 150 to 10000 pixels", "--height");
  if (o.smooth >= 1) throw Error("must be below 1 (0 turns smoothing off)", "--smooth");

  std::error_code ec;
  if (!std::filesystem::exists(o.run_dir, ec)) {
    throw Error("run directory not found", o.run_dir.string());
  }
  if (!std::filesystem::is_directory(o.run_dir, ec)) {
    throw Error("not a directory (expected a run directory)", o.run_dir.string());
  }
  PlotReport report;
  report.metrics_path = o.run_dir / "metrics.jsonl";
  if (!std::filesystem::exists(report.metrics_path, ec)) {
    throw Error("no metrics.jsonl in the run directory (has the run finished a step yet?)",
                report.metrics_path.string());
  }
  report.metrics = read_metrics(report.metrics_path);
  const MetricsLog& log = report.metrics;
  if (log.train.empty() && log.valid.empty()) {
    throw Error(fmt::format("no train or valid records to plot ({} lines read)", log.lines),
                report.metrics_path.string());
  }

  std::size_t loss_points = 0;
  for (const TrainRecord& r : log.train) loss_points += !r.skipped && usable(r.loss);
  report.smooth = o.smooth < 0 ? auto_smoothing(loss_points) : o.smooth;
  if (!o.png && !o.terminal) return report;

  const Gnuplot gnuplot = find_gnuplot(o.gnuplot);
  ScratchDir scratch("borealis-plot");
  const std::vector<Chart> charts = build_charts(log, report.smooth);
  for (const Chart& c : charts) {
    for (const Series& s : c.series) {
      if (!s.points.empty()) write_data(scratch.path(), s, static_cast<std::size_t>(o.width));
    }
  }
  std::string run = std::filesystem::weakly_canonical(o.run_dir, ec).filename().string();
  if (run.empty()) run = o.run_dir.string();

  double max_tokens = 0;
  for (const TrainRecord& r : log.train) max_tokens = std::max(max_tokens, double(r.tokens));
  for (const ValidRecord& r : log.valid) max_tokens = std::max(max_tokens, double(r.tokens));
  for (const EvalRecord& r : log.eval) max_tokens = std::max(max_tokens, double(r.tokens));
  const Unit token_unit = unit_for(max_tokens);

  std::string script = "set encoding utf8\n";
  TempFiles temps;
  std::vector<std::filesystem::path> finals;
  if (o.png) {
    const std::filesystem::path out_dir = o.out_dir.empty() ? o.run_dir / "plots" : o.out_dir;
    std::filesystem::create_directories(out_dir, ec);
    if (ec) throw Error("cannot create the output directory: " + ec.message(), out_dir.string());
    report.png_terminal = gnuplot.png_terminal();
    script += fmt::format("set terminal {} size {},{} noenhanced{}\n", report.png_terminal, o.width,
                          o.height, report.png_terminal == "pngcairo" ? " font 'Sans,11'" : "");
    for (const Chart& c : charts) {
      for (const bool tokens : {false, true}) {
        if (tokens ? o.x == PlotX::Steps : o.x == PlotX::Tokens) continue;
        const std::string file = c.name + (tokens ? "_tokens.png" : "_steps.png");
        if (c.empty()) {
          report.not_drawn.push_back(file + " (" + c.no_data + ")");
          continue;
        }
        const auto temp = out_dir / fmt::format(".{}.tmp.{}", file, ::getpid());
        temps.paths.push_back(temp);
        finals.push_back(out_dir / file);
        script += "set output " + gnuplot_quote(temp.string()) + "\n" +
                  chart_script(c, tokens, token_unit, run, scratch.path(), false) +
                  "unset output\n";
      }
    }
  }
  const std::filesystem::path text_plot = scratch.path() / "loss.txt";
  if (o.terminal) {
    Chart loss = charts.front();
    // Only the train curve (smoothed when smoothing is on) and validation:
    // raw points and markers are noise at this resolution.
    const bool smoothed = report.smooth > 0;
    std::erase_if(loss.series, [&](const Series& s) {
      return s.file == "skipped.dat" ||
             s.file == (smoothed ? "train_loss.dat" : "train_loss_ema.dat");
    });
    for (Series& s : loss.series) {
      s.style = s.file == "valid_loss.dat" ? "points pt 'o'" : "lines";
    }
    script += fmt::format("set terminal dumb size {},{} noenhanced\n", o.term_width, o.term_height);
    script += "set output " + gnuplot_quote(text_plot.string()) + "\n" +
              chart_script(loss, o.x == PlotX::Tokens, token_unit, run, scratch.path(), true) +
              "unset output\n";
  }
  const std::filesystem::path script_path = scratch.path() / "plot.gp";
  write_file_atomic(script_path, script);
  run_gnuplot(gnuplot, script_path, report.metrics_path.string());

  for (std::size_t i = 0; i < finals.size(); ++i) {
    if (std::filesystem::file_size(temps.paths[i], ec) == 0 || ec) {
      throw Error("gnuplot wrote no image", finals[i].string());
    }
    fsync_file(temps.paths[i]);
    std::filesystem::rename(temps.paths[i], finals[i], ec);
    if (ec) throw Error("cannot rename into place: " + ec.message(), finals[i].string());
    report.pngs.push_back(finals[i]);
  }
  if (!finals.empty()) fsync_directory(finals.front().parent_path());
  if (o.terminal) report.terminal_plot = tidy_text_plot(read_text(text_plot));
  return report;
}

}  // namespace borealis
