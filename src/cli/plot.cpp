// borealis plot RUN_DIR: PNG charts of a training run's metrics (loss, learning
// rate, gradient norm, throughput, eval scores, straggler reports) drawn with
// gnuplot, a text plot of the loss and a short summary on stdout (or the
// summary as JSON with --json).
#include <fmt/format.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <iostream>
#include <memory>
#include <string>

#include "cli/commands.h"
#include "train/plot.h"

namespace borealis::cli {

namespace {

struct PlotFlags {
  std::string run_dir;
  std::string out_dir;
  std::string x = "both";
  std::string smooth = "auto";
  bool no_png = false;
  bool no_terminal = false;
  bool json = false;
  int width = 1200;
  int height = 720;
};

// -1 for "auto", the weight for a number in [0, 1), NaN for anything else.
double parse_smooth(const std::string& text) {
  if (text == "auto") return -1;
  try {
    std::size_t used = 0;
    const double w = std::stod(text, &used);
    if (used == text.size() && w >= 0 && w < 1) return w;
  } catch (const std::exception&) {
  }
  return std::nan("");
}

// The text plot fits the terminal when stdout is one narrower than 100 columns.
int terminal_columns() {
  winsize ws{};
  if (::isatty(STDOUT_FILENO) && ::ioctl(STDOUT_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 0) {
    return ws.ws_col;
  }
  return 0;
}

void run_plot(const PlotFlags& f) {
  PlotOptions o;
  o.run_dir = f.run_dir;
  o.out_dir = f.out_dir;
  o.x = f.x == "steps" ? PlotX::Steps : f.x == "tokens" ? PlotX::Tokens : PlotX::Both;
  o.png = !f.no_png;
  o.terminal = !f.no_terminal && !f.json;
  o.width = f.width;
  o.height = f.height;
  o.smooth = parse_smooth(f.smooth);
  if (const int cols = terminal_columns(); cols > 0) o.term_width = std::clamp(cols - 1, 40, 100);

  const PlotReport report = make_plots(o);
  if (f.json) {
    std::cout << summary_json(report) << "\n" << std::flush;
    return;
  }
  std::string out;
  if (!report.terminal_plot.empty()) out += report.terminal_plot + "\n";
  out += format_summary(report);
  if (!report.pngs.empty()) {
    out += fmt::format("wrote {} PNG files ({} terminal, {}x{}):\n", report.pngs.size(),
                       report.png_terminal, o.width, o.height);
    for (const auto& p : report.pngs) out += "  " + p.string() + "\n";
  }
  for (const auto& n : report.not_drawn) out += "not drawn: " + n + "\n";
  std::cout << out << std::flush;
}

}  // namespace

Command add_plot(CLI::App& parent) {
  auto f = std::make_shared<PlotFlags>();
  CLI::App* app = parent.add_subcommand(
      "plot",
      "Chart a training run from RUN_DIR/metrics.jsonl: loss, learning rate, gradient norm, "
      "throughput, eval scores and straggler reports as PNG files (gnuplot), plus a text plot of "
      "the loss and a summary");
  app->add_option("RUN_DIR", f->run_dir, "Run directory holding metrics.jsonl")->required();
  app->add_option("-o,--out", f->out_dir, "Directory for the PNG files (default: RUN_DIR/plots)");
  app->add_option("--x", f->x, "Horizontal axis: steps, tokens or both (one PNG each)")
      ->check(CLI::IsMember({"steps", "tokens", "both"}))
      ->capture_default_str();
  app->add_option("--smooth", f->smooth,
                  "EMA weight for the train loss line: 'auto' (from the run length), 0 (off) or "
                  "a value below 1")
      ->check(CLI::Validator(
          [](std::string& text) {
            return std::isnan(parse_smooth(text))
                       ? "expected 'auto' or a weight from 0 (off) to below 1, not '" + text + "'"
                       : std::string();
          },
          "auto|WEIGHT"))
      ->capture_default_str();
  app->add_flag("--no-png", f->no_png, "Draw no PNG files");
  app->add_flag("--no-terminal", f->no_terminal, "Print no text plot of the loss");
  app->add_flag("--json", f->json,
                "Print the summary as one JSON object (no text plot); with --no-png, only read "
                "the log");
  app->add_option("--width", f->width, "PNG width in pixels")
      ->check(CLI::Range(200, 10000))
      ->capture_default_str();
  app->add_option("--height", f->height, "PNG height in pixels")
      ->check(CLI::Range(150, 10000))
      ->capture_default_str();
  return {app, [f] { run_plot(*f); }};
}

}  // namespace borealis::cli
