// train_vs_torch: Borealis's training step against PyTorch's, in one run, on
// the same model, batch, sequence length and thread count.
//
//   train_vs_torch [--model PRESET --batch B --seq-len T] [--steps N] [--threads N]
//                  [--python PATH] [--script PATH]
//
// Without --model it runs the comparison configs: gpt2-124m at B=4 with
// T=256 and T=1024, llama-110m at B=4, T=1024 and llama-20m at B=8, T=256.
// For each it runs run_train_bench (the code of `borealis bench train`, which
// also measures the sgemm peak at the model's GEMM shapes) and then
// bench/torch_train_step.py (a plain PyTorch implementation of the same
// model, from Debian's python3-torch) with OMP_NUM_THREADS and
// torch.set_num_threads set to the same count. It prints tokens/s, GFLOP/s
// (FLOPs counted as in train_bench.h for both) and MFU against that one
// sgemm peak for both, and the ratio Borealis / PyTorch for the mean and the
// best of the measured steps. The load average before each side is printed
// beside its figures: the machine may be shared.
#include <fmt/format.h>
#include <sys/wait.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "bench_util.h"
#include "core/error.h"
#include "core/sysinfo.h"
#include "core/threads.h"
#include "kernels/cpu/blas.h"
#include "model/config.h"
#include "train/train_bench.h"

namespace {

using borealis::Error;

struct Config {
  std::string model;
  int batch = 0, seq = 0;
};

struct Options {
  std::vector<Config> configs;
  int steps = 3;
  int threads = 2;
  std::string python = "/usr/bin/python3";
  std::string script = BOREALIS_SOURCE_DIR "/bench/torch_train_step.py";
};

std::string load_average() {
  std::ifstream in("/proc/loadavg");
  double a = 0, b = 0, c = 0;
  if (!(in >> a >> b >> c)) return "unknown";
  return fmt::format("{:.2f} {:.2f} {:.2f}", a, b, c);
}

// Runs the PyTorch step timer and returns the JSON object it prints last.
nlohmann::json run_torch(const Options& o, const Config& c) {
  const std::string config_json = borealis::model_config_to_json(borealis::model_preset(c.model));
  const std::string command = fmt::format(
      "OMP_NUM_THREADS={0} {1} {2} --config-json {3} --batch {4} --seq {5} --steps {6} "
      "--threads {0}",
      o.threads, borealis::bench::shell_quote(o.python), borealis::bench::shell_quote(o.script),
      borealis::bench::shell_quote(config_json), c.batch, c.seq, o.steps);
  return borealis::bench::run_torch_script(command, o.script, o.python);
}

struct Row {
  double mean_tps = 0, best_tps = 0;
};

void compare(const Options& o, const Config& c, std::vector<std::string>& summary) {
  borealis::TrainBenchOptions bo;
  bo.model = c.model;
  bo.batch = c.batch;
  bo.seq = c.seq;
  bo.steps = o.steps;
  fmt::print("== {} B={} T={} ({} threads, {} measured steps after one warm-up)\n", c.model,
             c.batch, c.seq, o.threads, o.steps);
  std::fflush(stdout);
  const std::string load_ours = load_average();
  const borealis::TrainBenchResult r = borealis::run_train_bench(bo);
  const std::string load_torch = load_average();
  const nlohmann::json t = run_torch(o, c);
  const std::string load_after = load_average();

  const Row ours{r.tokens_per_s(r.mean_step_s()), r.tokens_per_s(r.best_step_s())};
  const Row torch{t.at("tokens_per_s_mean").get<double>(), t.at("tokens_per_s_best").get<double>()};
  const double gflop_per_token = r.flops_per_token * 1e-9;
  fmt::print(
      "sgemm peak {:.1f} GFLOP/s (measured in this run at the model's GEMM shapes); "
      "{:.4f} GFLOP per token\n",
      r.peak_gflops, gflop_per_token);
  fmt::print("{:<24} {:>12} {:>10} {:>7} {:>18}  {}\n", "", "tokens/s", "GFLOP/s", "MFU",
             "step mean / best", "load average before");
  auto line = [&](const std::string& who, const char* which, double tps, double step_mean,
                  double step_best, const std::string& load) {
    const double gflops = tps * gflop_per_token;
    fmt::print("{:<24} {:>12.1f} {:>10.1f} {:>6.1f}% {:>8.3f}s / {:.3f}s  {}\n", who + " " + which,
               tps, gflops, 100.0 * gflops / r.peak_gflops, step_mean, step_best, load);
  };
  const std::string torch_name = "pytorch " + t.at("torch").get<std::string>();
  line("borealis", "(mean)", ours.mean_tps, r.mean_step_s(), r.best_step_s(), load_ours);
  line("borealis", "(best)", ours.best_tps, r.mean_step_s(), r.best_step_s(), load_ours);
  line(torch_name, "(mean)", torch.mean_tps, t.at("mean_step_s").get<double>(),
       t.at("best_step_s").get<double>(), load_torch);
  line(torch_name, "(best)", torch.best_tps, t.at("mean_step_s").get<double>(),
       t.at("best_step_s").get<double>(), load_torch);
  const double ratio_mean = ours.mean_tps / torch.mean_tps;
  const double ratio_best = ours.best_tps / torch.best_tps;
  fmt::print(
      "borealis / pytorch      {:.2f}x (mean steps), {:.2f}x (best steps); "
      "losses {:.4f} / {:.4f}; load average after {}\n\n",
      ratio_mean, ratio_best, r.steps.back().loss, t.at("steps").back().at("loss").get<double>(),
      load_after);
  std::fflush(stdout);  // figures as they come: the runs take minutes
  summary.push_back(fmt::format(
      "{:<11} B={:<2} T={:<5} borealis {:8.1f} tok/s (MFU {:4.1f}%)  pytorch {:8.1f} tok/s "
      "(MFU {:4.1f}%)  ratio {:.2f}x mean, {:.2f}x best",
      c.model, c.batch, c.seq, ours.mean_tps, 100.0 * r.mfu(r.mean_step_s()), torch.mean_tps,
      100.0 * torch.mean_tps * gflop_per_token / r.peak_gflops, ratio_mean, ratio_best));
}

int run(int argc, char** argv) {
  Options o;
  Config one{"", 4, 256};
  for (int i = 1; i < argc; ++i) {
    const std::string flag = argv[i];
    if (i + 1 >= argc) throw Error("missing value", flag);
    const char* value = argv[++i];
    if (flag == "--model") {
      one.model = value;
    } else if (flag == "--batch") {
      one.batch = borealis::bench::parse_positive_int(flag, value);
    } else if (flag == "--seq-len" || flag == "--seq") {
      one.seq = borealis::bench::parse_positive_int(flag, value);
    } else if (flag == "--steps") {
      o.steps = borealis::bench::parse_positive_int(flag, value);
    } else if (flag == "--threads") {
      o.threads = borealis::bench::parse_positive_int(flag, value);
    } else if (flag == "--python") {
      o.python = value;
    } else if (flag == "--script") {
      o.script = value;
    } else {
      throw Error(
          "unknown flag (use --model, --batch, --seq-len, --steps, --threads, --python, --script)",
          flag);
    }
  }
  if (one.model.empty()) {
    o.configs = {{"gpt2-124m", 4, 256},
                 {"gpt2-124m", 4, 1024},
                 {"llama-110m", 4, 1024},
                 {"llama-20m", 8, 256}};
  } else {
    borealis::model_preset(one.model);  // an unknown name fails here, before any timing
    o.configs = {one};
  }
  borealis::set_cpu_threads(o.threads);
  const auto blas = borealis::blas_info();
  fmt::print("train_vs_torch: {} threads, {} ({}), CPU {}\n\n", o.threads, blas.library, blas.core,
             borealis::cpu_info().model);
  std::vector<std::string> summary;
  for (const Config& c : o.configs) compare(o, c, summary);
  fmt::print("summary (mean steps; MFU against the sgemm peak measured with each model)\n");
  for (const auto& s : summary) fmt::print("  {}\n", s);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  return borealis::bench::main_with_errors(
      [&] { return run(argc, argv); },
      "usage: train_vs_torch [--model PRESET --batch B --seq-len T] [--steps N] [--threads N] "
      "[--python PATH] [--script PATH]; the PyTorch side needs Debian's python3-torch and "
      "python3-numpy: scripts/setup.sh --with-torch");
}
