// tp_bench: tensor parallelism's communication, measured against the
// analytic count, and its speed against the whole model on one rank.
//
//   mpirun -np 2 --bind-to none build/release/bench/tp_bench
//       [--models gpt2-124m,llama-110m] [--micro-batch 1] [--seq-len 256] [--steps 2]
//
// Every rank of the world is one tensor group (P = the ranks), 1 thread
// each. For each model, after one warm-up step, it times --steps training
// steps (forward, backward, no update) of
//   - the whole model on rank 0 alone (the other ranks wait), and
//   - the model cut over the P ranks,
// once without and once with sequence parallelism, and counts every element
// the model reduces or gathers over the tensor group in those steps (a
// counting TensorParallelGroup around the communicator), and the activation
// memory per rank. Megatron-LM's analysis gives, per micro-batch of
// N = B x T rows, d_model C and L layers, without sequence parallelism:
//   sums:   (4L + 2) N C   (2 per layer forward, after the attention and MLP
//                           output projections; 2 per layer backward, the
//                           input gradients of qkv and fc; the embedding;
//                           the final norm's input gradient)
//           + 2N           (cross-entropy: sum of exponentials, target logit)
//   maxima: N              (cross-entropy: row maxima)
// and each rank sends 2 (P - 1) / P of every reduced byte with the ordered
// allreduce (reduce-scatter, then all-gather). With sequence parallelism the
// (4L + 2) N C sums are reduce-scatters, and (6L + 2) N C elements are
// all-gathered (the norms' outputs before each column-parallel projection,
// again in backward rather than kept, and the residual gradient before each
// row-parallel projection's backward); each sends (P - 1) / P; the norms'
// weight gradients, each rank's from its own rows, are summed. The measured
// and analytic counts must agree.
// It also prints the time the reductions took, the per-op figures the
// paper model of docs/parallelism.md is calibrated with: this machine's
// GEMM rate and its allreduce rate at the activations' size.
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
#include "train/parallel_groups.h"

namespace borealis {
namespace {

struct Options {
  std::vector<std::string> models = {"gpt2-124m", "llama-110m"};
  int micro = 1, seq = 256, steps = 2;
};

// Elements each kind of collective handled (reduce-scatter: its input;
// all-gather: its output), over the timed steps.
struct Counted {
  double sum_elems = 0, max_elems = 0, scattered = 0, gathered = 0, calls = 0, seconds = 0;
  // Bytes one rank sends in a group of P: 2 (P-1)/P of an allreduce's
  // buffer, (P-1)/P of a reduce-scatter's input or an all-gather's output.
  double wire_bytes(int P) const {
    return 4.0 * (P - 1) / P * (2 * (sum_elems + max_elems) + scattered + gathered);
  }
};

struct Timing {
  double step_s = 0;
  std::size_t activation_bytes = 0;
  Counted comm;
};

// Steps of forward + backward (the first one untimed and uncounted) of the
// model on `comm` as one tensor group.
Timing run(const Options& o, const ModelConfig& config, Communicator& comm, bool sequence) {
  Counted counted;
  bool counting = false;
  TensorParallelGroup<float> group = tensor_parallel_group<float>(comm);
  group.sequence_parallel = sequence;
  // Each collective, counted and timed.
  const auto count = [&counted, &counting](double Counted::*field, double elems,
                                           bench::Clock::time_point t0) {
    if (!counting) return;
    counted.*field += elems;
    counted.calls += 1;
    counted.seconds += bench::seconds_since(t0);
  };
  const auto reduce = [&comm, count](ReduceOp op, double Counted::*field) {
    return [&comm, count, op, field](float* data, std::int64_t n) {
      const auto t0 = bench::Clock::now();
      comm.allreduce(std::span<float>(data, static_cast<std::size_t>(n)), op);
      count(field, static_cast<double>(n), t0);
    };
  };
  group.sum = reduce(ReduceOp::Sum, &Counted::sum_elems);
  group.max = reduce(ReduceOp::Max, &Counted::max_elems);
  const auto scatter = group.reduce_scatter;
  group.reduce_scatter = [scatter, count, &comm](const float* in, float* out, std::int64_t n) {
    const auto t0 = bench::Clock::now();
    scatter(in, out, n);
    count(&Counted::scattered, static_cast<double>(n) * comm.size(), t0);
  };
  const auto gather = group.all_gather;
  group.all_gather = [gather, count, &comm](const float* in, float* out, std::int64_t n) {
    const auto t0 = bench::Clock::now();
    gather(in, out, n);
    count(&Counted::gathered, static_cast<double>(n) * comm.size(), t0);
  };
  auto backend = make_cpu_backend<float>();
  Model<float> model(config, *backend, &group);
  model.reserve(o.micro, o.seq);
  model.init(1);
  std::mt19937 rng(7);  // the same tokens on every rank of the group
  std::uniform_int_distribution<int> token(0, config.vocab_size - 1);
  std::vector<std::int32_t> in(static_cast<std::size_t>(o.micro) * o.seq), out(in.size());
  Timing t;
  for (int step = 0; step <= o.steps; ++step) {
    for (auto& x : in) x = token(rng);
    for (auto& x : out) x = token(rng);
    comm.barrier();
    counting = step > 0;
    const auto t0 = bench::Clock::now();
    model.zero_grad();
    model.forward(in.data(), out.data(), o.micro, o.seq, true);
    model.backward();
    if (step > 0) t.step_s += bench::seconds_since(t0);
  }
  t.step_s /= o.steps;
  t.comm = counted;
  t.activation_bytes = model.activation_bytes();
  return t;
}

// Seconds of C[M, N] = A[M, K] B[N, K]^T on one thread, best of 3.
double gemm_seconds(int M, int N, int K) {
  auto backend = make_cpu_backend<float>();
  std::vector<float> a(static_cast<std::size_t>(M) * K, 0.5f),
      b(static_cast<std::size_t>(N) * K, 0.25f), c(static_cast<std::size_t>(M) * N);
  double best = 1e30;
  for (int i = 0; i < 3; ++i) {
    const auto t0 = bench::Clock::now();
    backend->matmul_forward(c.data(), a.data(), b.data(), nullptr, M, K, N, false);
    best = std::min(best, bench::seconds_since(t0));
  }
  return best;
}

int main_impl(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; i += 2) {
    const std::string flag = argv[i];
    if (i + 1 >= argc) throw Error("missing value", flag);
    const char* v = argv[i + 1];
    if (flag == "--models") {
      o.models = bench::split_list(v);
    } else if (flag == "--micro-batch") {
      o.micro = bench::parse_positive_int(flag, v);
    } else if (flag == "--seq-len") {
      o.seq = bench::parse_positive_int(flag, v);
    } else if (flag == "--steps") {
      o.steps = bench::parse_positive_int(flag, v);
    } else {
      throw Error("unknown flag (--models, --micro-batch, --seq-len, --steps)", flag);
    }
  }
  CommOptions co;
  co.timeout = std::chrono::milliseconds(3'600'000);  // rank 0 runs alone for a while
  auto comm = make_communicator(co);
  const int P = comm->size();
  const bool root = comm->rank() == 0;
  set_cpu_threads(1);
  const double N = static_cast<double>(o.micro) * o.seq;
  if (root) {
    std::printf(
        "tp_bench: tensor parallel %d (1 thread per rank), micro-batch %d x %d tokens, %d "
        "timed steps of forward + backward\n",
        P, o.micro, o.seq, o.steps);
  }
  for (const std::string& name : o.models) {
    const ModelConfig config = model_preset(name);
    check_tensor_split(config, P, "--ranks");
    Timing whole;
    if (root) {
      SelfCommunicator self;
      whole = run(o, config, self, false);
      comm->barrier();
    } else {
      const RequestPtr r = comm->ibarrier();
      while (!r->test()) std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    const Timing part = run(o, config, *comm, false);
    const Timing seq = run(o, config, *comm, true);
    if (!root) continue;
    const double C = config.d_model, L = config.n_layer;
    std::printf(
        "\n%s (%d layers, d_model %d, vocabulary %d); whole model on 1 rank: %.3f s per "
        "step, activations %.1f MiB\n",
        name.c_str(), config.n_layer, config.d_model, config.padded_vocab, whole.step_s,
        whole.activation_bytes / 1048576.0);
    const auto report = [&](const char* what, const Timing& t, const Counted& analytic) {
      const Counted& m = t.comm;
      const bool equal = m.sum_elems == analytic.sum_elems && m.max_elems == analytic.max_elems &&
                         m.scattered == analytic.scattered && m.gathered == analytic.gathered;
      std::printf(
          "  %s: per step and rank %.0f summed + %.0f maxima + %.0f reduce-scattered + "
          "%.0f all-gathered elements measured, analytic %s; %.2f MiB sent per rank\n",
          what, m.sum_elems / o.steps, m.max_elems / o.steps, m.scattered / o.steps,
          m.gathered / o.steps, equal ? "equal" : "DIFFERENT",
          m.wire_bytes(P) / o.steps / 1048576.0);
      std::printf(
          "      step %.3f s (%.2fx the whole model's), collectives %.3f s in %.0f calls; "
          "activations %.1f MiB per rank\n",
          t.step_s, whole.step_s / t.step_s, m.seconds / o.steps, m.calls / o.steps,
          t.activation_bytes / 1048576.0);
    };
    // Per micro-batch of N rows: tensor parallel, 4L + 2 allreduces of N x C
    // and the cross-entropy's 2N sums and N maxima; sequence parallel, the
    // same reductions as reduce-scatters (4L + 2) and the gathers of norm
    // outputs and gradients (6L + 2: 2 per layer forward, 4 backward, the
    // final norm and the embedding's gradient).
    Counted tp_count, sp_count;
    tp_count.sum_elems = o.steps * ((4 * L + 2) * N * C + 2 * N);
    tp_count.max_elems = sp_count.max_elems = o.steps * N;
    // ... and the norms' weight gradients (2L + 1 norms of C weights, and
    // C biases for LayerNorm), summed over the group.
    const double norm_params = config.family == ModelFamily::kGpt2 ? 2 * C : C;
    sp_count.sum_elems = o.steps * (2 * N + (2 * L + 1) * norm_params);
    sp_count.scattered = o.steps * (4 * L + 2) * N * C;
    sp_count.gathered = o.steps * (6 * L + 2) * N * C;
    report("tensor parallel", part, tp_count);
    report("+ sequence parallel", seq, sp_count);
    // The per-op calibration: a layer's column-parallel GEMM at this size.
    const int M = o.micro * o.seq;
    const double g = gemm_seconds(M, config.fc_width() / P, config.d_model);
    std::printf("  calibration: GEMM %d x %d x %d on 1 thread %.2f GFLOP/s\n", M,
                config.fc_width() / P, config.d_model,
                2.0 * M * (config.fc_width() / P) * config.d_model / g / 1e9);
  }
  return 0;
}

}  // namespace
}  // namespace borealis

int main(int argc, char** argv) {
  return borealis::bench::main_with_errors([&] { return borealis::main_impl(argc, argv); },
                                           "run under mpirun -np 2 (or more ranks)");
}
