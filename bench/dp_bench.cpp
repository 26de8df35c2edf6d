// dp_bench: scaling of data-parallel training from 1 to N ranks on one
// machine, at the same global batch.
//
//   mpirun -np 2 --bind-to none build/release/bench/dp_bench [--model llama-20m] [--micro-batch 4]
//       [--seq-len 256] [--global-batch 8] [--steps 4] [--zero 0|1] [--cores C]
//
// Three configurations of the same training step (forward, backward,
// gradient reduction, global norm, AdamW) on random tokens:
//   1 rank x 1 thread, 1 rank x C threads (C = the cores, default: the CPUs
//   online), and N ranks x C/N threads (the cores shared out, none
//   oversubscribed). --bind-to none: rank 0 must be free to use every core
//   while it runs alone (Open MPI binds each of 2 ranks to one core by default).
// While rank 0 runs the single-rank configurations the other ranks wait in
// a barrier. It prints tokens/s of each, and two efficiencies:
//   strong scaling: tok/s(N ranks) / (N x tok/s(1 rank x 1 thread))
//   same cores:     tok/s(N ranks) / tok/s(1 rank x C threads)
// plus where the N-rank step spends its time (compute, waiting for the
// gradient reduction, optimizer). Figures only, no pass/fail.
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "bench_util.h"
#include "core/sysinfo.h"
#include "core/threads.h"
#include "dist/communicator.h"
#include "kernels/backend.h"
#include "model/model.h"
#include "optim/data_parallel.h"

namespace borealis {
namespace {

struct Options {
  std::string model = "llama-20m";
  int micro = 4, seq = 256, global = 8, steps = 4, zero = 0, cores = 0;
};

struct Timing {
  double tok_s = 0, compute_s = 0, reduce_s = 0, optimizer_s = 0;  // per step
};

// Trains `o.steps` timed steps (after one warm-up step) with `threads`
// threads on this rank, the global batch split over comm's ranks.
Timing run(const Options& o, Communicator& comm, int threads) {
  set_cpu_threads(threads);
  const ModelConfig config = model_preset(o.model);
  auto backend = make_cpu_backend<float>();
  Model<float> model(config, *backend);
  model.reserve(o.micro, o.seq);
  model.init(1);
  DataParallelOptions dpo;
  dpo.zero = o.zero;
  DataParallel dp(comm, *backend, model.layout(), AdamWConfig{}, dpo, model.params(),
                  model.grads());
  const int local = o.global / o.micro / comm.size();
  std::mt19937 rng(7 + static_cast<unsigned>(comm.rank()));
  std::uniform_int_distribution<int> token(0, config.vocab_size - 1);
  std::vector<std::int32_t> in(static_cast<std::size_t>(o.micro) * o.seq), out(in.size());
  const auto hook = [&dp](std::int64_t offset) { dp.grads_final(offset); };
  Timing t;
  bench::Clock::time_point start;
  for (int step = 0; step <= o.steps; ++step) {
    if (step == 1) {
      comm.barrier();
      start = bench::Clock::now();
      t = Timing{};
    }
    const auto t0 = bench::Clock::now();
    model.zero_grad();
    for (int m = 0; m < local; ++m) {
      for (auto& x : in) x = token(rng);
      for (auto& x : out) x = token(rng);
      model.forward(in.data(), out.data(), o.micro, o.seq, true, 1.0f / (local * comm.size()));
      if (m == local - 1) {
        model.backward(hook);
      } else {
        model.backward();
      }
    }
    const auto t1 = bench::Clock::now();
    dp.finish_reduction();
    const auto t2 = bench::Clock::now();
    dp.step(1e-4f, clip_scale(dp.grad_norm(), 1.0));
    const auto t3 = bench::Clock::now();
    t.compute_s += std::chrono::duration<double>(t1 - t0).count();
    t.reduce_s += std::chrono::duration<double>(t2 - t1).count();
    t.optimizer_s += std::chrono::duration<double>(t3 - t2).count();
  }
  comm.barrier();
  const double s = bench::seconds_since(start);
  t.tok_s = static_cast<double>(o.global) * o.seq * o.steps / s;
  t.compute_s /= o.steps;
  t.reduce_s /= o.steps;
  t.optimizer_s /= o.steps;
  return t;
}

int main_impl(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; i += 2) {
    const std::string flag = argv[i];
    if (i + 1 >= argc) throw Error("missing value", flag);
    const char* v = argv[i + 1];
    if (flag == "--model") {
      o.model = v;
    } else if (flag == "--micro-batch") {
      o.micro = bench::parse_positive_int(flag, v);
    } else if (flag == "--seq-len" || flag == "--seq") {
      o.seq = bench::parse_positive_int(flag, v);
    } else if (flag == "--global-batch") {
      o.global = bench::parse_positive_int(flag, v);
    } else if (flag == "--steps") {
      o.steps = bench::parse_positive_int(flag, v);
    } else if (flag == "--zero") {
      o.zero = std::string(v) == "1" ? 1 : 0;
    } else if (flag == "--cores") {
      o.cores = bench::parse_positive_int(flag, v);
    } else {
      throw Error(
          "unknown flag (--model, --micro-batch, --seq-len, --global-batch, --steps, --zero, "
          "--cores)",
          flag);
    }
  }
  CommOptions co;
  co.timeout = std::chrono::milliseconds(3'600'000);  // rank 0 runs alone for a while
  auto comm = make_communicator(co);
  const int n = comm->size();
  const bool root = comm->rank() == 0;
  const CpuInfo cpu = cpu_info();
  if (o.cores == 0) o.cores = static_cast<int>(std::max(1U, cpu.online));
  if (root && cpu.usable < static_cast<unsigned>(o.cores)) {
    std::printf(
        "warning: rank 0 may run on %u of the %d cores (bound by the launcher?); run "
        "mpirun with --bind-to none\n",
        cpu.usable, o.cores);
  }
  if (o.global % (o.micro * n) != 0) {
    throw Error(fmt::format("--global-batch {} is not divisible by --micro-batch {} x {} ranks",
                            o.global, o.micro, n),
                "--global-batch");
  }
  const int per_rank_threads = std::max(1, o.cores / n);
  if (root) {
    std::printf(
        "dp_bench: %s, global batch %d x %d tokens (micro-batches of %d), %d timed steps, "
        "ZeRO-%d, %d ranks, %d cores\n",
        o.model.c_str(), o.global, o.seq, o.micro, o.steps, o.zero, n, o.cores);
    std::fflush(stdout);
  }
  Timing one_1, one_c;
  if (root) {
    SelfCommunicator self;
    one_1 = run(o, self, 1);
    one_c = run(o, self, o.cores);
    comm->barrier();
  } else {
    // Wait without taking a core from rank 0 (a guarded wait polls hard
    // for its first second).
    const RequestPtr r = comm->ibarrier();
    while (!r->test()) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  const Timing many = run(o, *comm, per_rank_threads);
  if (root) {
    const auto row = [](const std::string& what, const Timing& t) {
      std::printf(
          "%-28s %10.0f tok/s   step: compute %.3f s, reduction wait %.3f s, optimizer "
          "%.3f s\n",
          what.c_str(), t.tok_s, t.compute_s, t.reduce_s, t.optimizer_s);
    };
    row("1 rank x 1 thread", one_1);
    row(fmt::format("1 rank x {} threads", o.cores), one_c);
    row(fmt::format("{} ranks x {} thread{}", n, per_rank_threads, per_rank_threads > 1 ? "s" : ""),
        many);
    std::printf("strong-scaling efficiency (vs %d x 1 rank x 1 thread): %.1f%%\n", n,
                100.0 * many.tok_s / (n * one_1.tok_s));
    std::printf("same-cores efficiency (vs 1 rank x %d threads): %.1f%%\n", o.cores,
                100.0 * many.tok_s / one_c.tok_s);
    // Other processes on the machine take cores from every configuration.
    std::FILE* f = std::fopen("/proc/loadavg", "r");
    double load = 0;
    if (f != nullptr && std::fscanf(f, "%lf", &load) == 1) {
      std::printf("load average at the end: %.2f on %d cores\n", load, o.cores);
    }
    if (f != nullptr) std::fclose(f);
  }
  return 0;
}

}  // namespace
}  // namespace borealis

int main(int argc, char** argv) {
  return borealis::bench::main_with_errors([&] { return borealis::main_impl(argc, argv); },
                                           "run it under mpirun, e.g. mpirun -np 2 "
                                           "build/release/bench/dp_bench");
}
