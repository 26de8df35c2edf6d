// pp_bench: pipeline parallelism's communication and bubble, measured
// against the analytic figures, and its speed against the whole model on
// one rank.
//
//   mpirun -np 2 --bind-to none build/release/bench/pp_bench
//       [--models gpt2-124m,llama-110m] [--micro-batch 1] [--seq-len 256]
//       [--micro-batches 1,2,4,8] [--steps 2] [--vocab N]
//
// Every rank of the world is one stage (P = the ranks), 1 thread each. For
// each model, it times --steps training steps (forward and backward of m
// micro-batches, no update; after one untimed step) of
//   - the whole model on rank 0 alone (the other ranks wait), and
//   - the P stages in the 1F1B schedule, for each m of --micro-batches,
// and reports per stage the bytes it sent point to point, the time it
// spent in forward and backward (compute), and its bubble: the rest of the
// pipeline's step (until its last stage is done), waiting for the
// neighbours and in the messages themselves, over its compute time.
//
// Analytic figures (Megatron-LM, arXiv 2104.04473), per step of m
// micro-batches of N = B x T rows and d_model C, in float:
//   sent by stage s: m N C x 4 bytes of activations (s < P - 1) and as many
//                    of gradients (s > 0);
//   bubble:          (P - 1) / m of the compute time, with every stage's
//                    work equal and messages free. The first stage holds
//                    the embedding and the last the output layer and loss,
//                    so the stages' work is not equal: the measured bubble
//                    of the lighter stages is larger. --vocab N (a small
//                    vocabulary) makes the output layer light and the
//                    stages nearly equal, the case the formula describes.
// Tied embeddings add one allreduce of the vocabulary x C output layer
// between the first and last stage per step (reported separately).
#include <fmt/format.h>

#include <chrono>
#include <cstdio>
#include <random>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "bench_util.h"
#include "core/error.h"
#include "core/threads.h"
#include "dist/communicator.h"
#include "kernels/backend.h"
#include "model/model.h"
#include "train/pipeline.h"

namespace borealis {
namespace {

struct Options {
  std::vector<std::string> models = {"gpt2-124m", "llama-110m"};
  std::vector<int> micro_batches = {1, 2, 4, 8};
  int micro = 1, seq = 256, steps = 2;
  int vocab = 0;  // 0: the preset's
};

struct StageTiming {
  double step_s = 0, compute_s = 0, sent_bytes = 0, tied_s = 0;
  double messages = 0;
};

std::vector<std::int32_t> random_tokens(std::mt19937& rng, std::size_t n, int vocab) {
  std::uniform_int_distribution<int> token(0, vocab - 1);
  std::vector<std::int32_t> v(n);
  for (auto& x : v) x = token(rng);
  return v;
}

// The whole model on this rank: steps of m micro-batches, seconds per step.
double whole_step(const Options& o, const ModelConfig& config, int m) {
  auto backend = make_cpu_backend<float>();
  Model<float> model(config, *backend);
  model.reserve(o.micro, o.seq);
  model.init(1);
  std::mt19937 rng(7);
  const std::size_t n = static_cast<std::size_t>(o.micro) * o.seq;
  double total = 0;
  for (int step = 0; step <= o.steps; ++step) {
    const auto in = random_tokens(rng, n * m, config.vocab_size);
    const auto out = random_tokens(rng, n * m, config.vocab_size);
    const auto t0 = bench::Clock::now();
    model.zero_grad();
    for (int i = 0; i < m; ++i) {
      model.forward(in.data() + i * n, out.data() + i * n, o.micro, o.seq, true, 1.0f / m);
      model.backward();
    }
    if (step > 0) total += bench::seconds_since(t0);
  }
  return total / o.steps;
}

// This rank's stage through the pipeline: per-step averages.
StageTiming stage_steps(const Options& o, const ModelConfig& config, Communicator& comm, int m) {
  auto backend = make_cpu_backend<float>();
  Model<float> model(config, *backend, nullptr, {comm.rank(), comm.size()});
  model.init(1);
  Pipeline<float> pipe(comm, model, m);
  std::mt19937 rng(7);  // the same tokens on every stage
  const std::size_t n = static_cast<std::size_t>(o.micro) * o.seq;
  StageTiming t;
  for (int step = 0; step <= o.steps; ++step) {
    const auto in = random_tokens(rng, n * m, config.vocab_size);
    const auto out = random_tokens(rng, n * m, config.vocab_size);
    comm.barrier();
    const auto t0 = bench::Clock::now();
    model.zero_grad();
    pipe.train(in.data(), out.data(), o.micro, o.seq, 1.0f / m);
    const double step_s = bench::seconds_since(t0);
    const auto t1 = bench::Clock::now();
    pipe.sync_tied_grads();
    if (step == 0) continue;
    t.tied_s += bench::seconds_since(t1);
    t.step_s += step_s;
    t.compute_s += pipe.times().compute_s;
    t.sent_bytes += pipe.times().sent_bytes;
    t.messages += pipe.times().messages;
  }
  t.step_s /= o.steps;
  t.compute_s /= o.steps;
  t.sent_bytes /= o.steps;
  t.messages /= o.steps;
  t.tied_s /= o.steps;
  return t;
}

int main_impl(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; i += 2) {
    const std::string flag = argv[i];
    if (i + 1 >= argc) throw Error("missing value", flag);
    const char* v = argv[i + 1];
    if (flag == "--models") {
      o.models = bench::split_list(v);
    } else if (flag == "--micro-batches") {
      o.micro_batches = bench::parse_int_list(flag, v);
    } else if (flag == "--micro-batch") {
      o.micro = bench::parse_positive_int(flag, v);
    } else if (flag == "--seq-len") {
      o.seq = bench::parse_positive_int(flag, v);
    } else if (flag == "--steps") {
      o.steps = bench::parse_positive_int(flag, v);
    } else if (flag == "--vocab") {
      o.vocab = bench::parse_positive_int(flag, v);
    } else {
      throw Error(
          "unknown flag (--models, --micro-batches, --micro-batch, --seq-len, --steps, --vocab)",
          flag);
    }
  }
  CommOptions co;
  co.timeout = std::chrono::milliseconds(3'600'000);  // rank 0 runs alone for a while
  auto comm = make_communicator(co);
  const int P = comm->size();
  const bool root = comm->rank() == 0;
  if (P < 2) throw Error("a pipeline needs 2 or more ranks", "mpirun -np");
  set_cpu_threads(1);
  const double N = static_cast<double>(o.micro) * o.seq;
  if (root) {
    std::printf(
        "pp_bench: %d pipeline stages (1 thread per rank), micro-batch %d x %d tokens, %d timed "
        "steps of forward + backward\n",
        P, o.micro, o.seq, o.steps);
  }
  for (const std::string& name : o.models) {
    ModelConfig config = model_preset(name);
    if (o.vocab > 0) {
      config.vocab_size = o.vocab;
      config.padded_vocab = pad_vocab(o.vocab);
    }
    check_pipeline_split(config, P, "--ranks");
    if (root) {
      std::printf("\n%s (%d layers, d_model %d, vocabulary %d, %s embeddings)\n", name.c_str(),
                  config.n_layer, config.d_model, config.padded_vocab,
                  config.tied_embeddings ? "tied" : "untied");
    }
    for (const int m : o.micro_batches) {
      double whole = 0;
      if (root) {
        whole = whole_step(o, config, m);
        comm->barrier();
      } else {
        const RequestPtr r = comm->ibarrier();
        while (!r->test()) std::this_thread::sleep_for(std::chrono::milliseconds(20));
      }
      const StageTiming t = stage_steps(o, config, *comm, m);
      std::vector<double> mine = {t.step_s, t.compute_s, t.sent_bytes, t.messages, t.tied_s};
      std::vector<double> all(mine.size() * static_cast<std::size_t>(P));
      comm->all_gather(std::span<const double>(mine), std::span<double>(all));
      if (!root) continue;
      // The pipeline's step ends when its last stage to finish does; the
      // tied embeddings' allreduce waits for both ends, so its own time is
      // that of the stage that came to it last (the shortest).
      double step = 0, bubble_sum = 0, tied = 1e30;
      for (int s = 0; s < P; ++s) {
        const double* r = all.data() + mine.size() * static_cast<std::size_t>(s);
        step = std::max(step, r[0]);
        if (s == 0 || s == P - 1) tied = std::min(tied, r[4]);
      }
      std::string stages;
      bool equal = true;
      for (int s = 0; s < P; ++s) {
        const double* r = all.data() + mine.size() * static_cast<std::size_t>(s);
        const double bubble = (step - r[1]) / r[1];
        bubble_sum += bubble;
        const double analytic = ((s < P - 1) + (s > 0)) * m * N * config.d_model * 4.0;
        equal = equal && r[2] == analytic;
        stages += fmt::format(
            "{}stage {}: compute {:.3f} s, bubble {:.1f}%, sent {:.2f} MiB in {:.0f} "
            "messages",
            s ? "\n      " : "      ", s, r[1], 100 * bubble, r[2] / 1048576.0, r[3]);
      }
      std::printf(
          "  m = %d: step %.3f s against %.3f s for the whole model on 1 rank (%.2fx); mean "
          "bubble %.1f%%, ideal (P - 1) / m = %.1f%%; bytes sent equal the analytic m N C x 4 "
          "per direction: %s%s\n%s\n",
          m, step, whole, whole / step, 100 * bubble_sum / P, 100 * ideal_bubble(P, m),
          equal ? "yes" : "NO",
          config.tied_embeddings
              ? fmt::format("; tied embeddings' allreduce {:.3f} s", tied).c_str()
              : "",
          stages.c_str());
    }
  }
  return 0;
}

}  // namespace
}  // namespace borealis

int main(int argc, char** argv) {
  return borealis::bench::main_with_errors([&] { return borealis::main_impl(argc, argv); },
                                           "run under mpirun -np 2 (or more ranks)");
}
