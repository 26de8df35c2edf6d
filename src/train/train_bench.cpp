#include "train/train_bench.h"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <utility>
#include <vector>

#include "core/error.h"
#include "core/stopwatch.h"
#include "core/sysinfo.h"
#include "core/text.h"
#include "core/threads.h"
#include "kernels/backend.h"
#include "kernels/cpu/blas.h"
#include "kernels/cpu/ops.h"
#include "kernels/cuda/device_info.h"
#ifdef BOREALIS_HAVE_CUDA_KERNELS
#include "kernels/cuda/cuda_backend.h"
#endif
#include "kernels/make_backend.h"
#include "kernels/timed_backend.h"
#include "model/model.h"
#include "optim/adamw.h"
#include "optim/schedule.h"

namespace borealis {

namespace {

using Clock = std::chrono::steady_clock;

}  // namespace

namespace {

// Runs `run` (one GEMM of g's shape, finished when it returns) at least 3
// times and until 0.5 s are spent, at most max_reps times, and raises
// g.gflops to the best rate; with warm_up, the first run is not counted.
template <typename F>
void record_best_rate(GemmTiming& g, int max_reps, bool warm_up, F&& run) {
  double best = 1e30, spent = 0;
  for (int rep = 0; rep < max_reps && (rep < 3 || spent < 0.5); ++rep) {
    const auto t0 = Clock::now();
    run();
    const double s = seconds_since(t0);
    if (rep > 0 || !warm_up) best = std::min(best, s);
    spent += s;
  }
  g.gflops = std::max(g.gflops, 2.0 * g.M * g.N * g.K / best * 1e-9);
}

void time_host_gemm(GemmTiming& g) {
  const std::size_t a = static_cast<std::size_t>(g.M) * g.K;
  const std::size_t b = static_cast<std::size_t>(g.K) * g.N;
  const std::size_t c = static_cast<std::size_t>(g.M) * g.N;
  std::vector<float> A(a), B(b), C(c, 0.0f);
  for (std::size_t i = 0; i < a; ++i) A[i] = static_cast<float>(i % 13) * 0.01f;
  for (std::size_t i = 0; i < b; ++i) B[i] = static_cast<float>(i % 7) * 0.01f;
  const int lda = g.trans_a ? g.M : g.K;
  const int ldb = g.trans_b ? g.K : g.N;
  record_best_rate(g, 10, false, [&] {
    cpu::gemm<float>(g.trans_a, g.trans_b, g.M, g.N, g.K, 1.0f, A.data(), lda, B.data(), ldb, 0.0f,
                     C.data(), g.N);
  });
}

void time_backend_gemm(Backend<float>& backend, GemmTiming& g) {
  const std::int64_t a = std::int64_t{g.M} * g.K, w = std::int64_t{g.N} * g.K;
  BackendArray<float> A(backend, a), W(backend, w), out(backend, std::int64_t{g.M} * g.N);
  std::vector<float> host(static_cast<std::size_t>(std::max(a, w)));
  for (std::size_t i = 0; i < host.size(); ++i) host[i] = static_cast<float>(i % 13) * 0.01f;
  backend.upload(A.data(), host.data(), static_cast<std::size_t>(a) * sizeof(float));
  backend.upload(W.data(), host.data(), static_cast<std::size_t>(w) * sizeof(float));
  backend.synchronize();
  // Each run waits for the device; the first loads the library's kernels.
  record_best_rate(g, 20, true, [&] {
    backend.matmul_forward(out.data(), A.data(), W.data(), nullptr, g.M, g.K, g.N, false);
    backend.synchronize();
  });
}

}  // namespace

void time_gemm(Backend<float>& backend, GemmTiming& g) {
  if (backend.host_memory()) {
    time_host_gemm(g);
  } else {
    time_backend_gemm(backend, g);
  }
}

double bf16_gemm_peak_gflops(const std::vector<GemmTiming>& shapes,
                             [[maybe_unused]] const std::string& where) {
#ifdef BOREALIS_HAVE_CUDA_KERNELS
  double peak = 0;
  for (const auto& g : shapes) peak = std::max(peak, cuda_bf16_gemm_gflops(g.M, g.N, g.K));
  return peak;
#else
  (void)shapes;
  throw Error("the bf16 GEMM peak needs the CUDA backend, which this build does not have", where);
#endif
}

double train_flops_per_token(const ModelConfig& c, std::int64_t params, int seq) {
  return 6.0 * static_cast<double>(params) +
         12.0 * c.n_layer * static_cast<double>(c.d_model) * seq;
}

std::vector<GemmTiming> model_gemm_shapes(const ModelConfig& c, int N, int loss_chunk_rows) {
  const int C = c.d_model;
  return {
      {"qkv projection (forward)", N, c.qkv_width(), C, false, true, 0},
      {"mlp up (forward)", N, c.fc_width(), C, false, true, 0},
      {"mlp down, input grad (backward)", N, c.d_ff, C, false, false, 0},
      {"mlp up, weight grad (backward)", c.fc_width(), C, N, true, false, 0},
      {"lm head chunk (forward)", loss_chunk_rows, c.padded_vocab, C, false, true, 0},
  };
}

double TrainBenchResult::mean_step_s() const {
  double s = 0;
  for (const auto& st : steps) s += st.total_s();
  return steps.empty() ? 0 : s / static_cast<double>(steps.size());
}

double TrainBenchResult::best_step_s() const {
  double best = 0;
  for (const auto& st : steps) best = best == 0 ? st.total_s() : std::min(best, st.total_s());
  return best;
}

double TrainBenchResult::tokens_per_s(double step_s) const {
  return static_cast<double>(batch) * seq / step_s;
}

double TrainBenchResult::achieved_gflops(double step_s) const {
  return flops_per_token * tokens_per_s(step_s) * 1e-9;
}

double TrainBenchResult::run_peak_gflops() const {
  return precision == "bf16" ? bf16_peak_gflops : peak_gflops;
}

double TrainBenchResult::mfu(double step_s) const {
  return achieved_gflops(step_s) / run_peak_gflops();
}

TrainBenchResult run_train_bench(const TrainBenchOptions& o) {
  TrainBenchResult r;
  r.config = model_preset(o.model);
  const ModelConfig& c = r.config;
  if (o.batch <= 0) throw Error(fmt::format("batch must be positive, got {}", o.batch), "--batch");
  if (o.seq <= 0 || o.seq > c.max_seq) {
    throw Error(fmt::format("seq must be in 1..{} for {}, got {}", c.max_seq, c.name, o.seq),
                "--seq-len");
  }
  if (o.steps <= 0) throw Error(fmt::format("steps must be positive, got {}", o.steps), "--steps");
  r.batch = o.batch;
  r.seq = o.seq;
  r.threads = cpu_threads();
  r.device = o.device;
  Precision precision = Precision::kFp32;
  try {
    precision = parse_precision(o.precision);
  } catch (const std::invalid_argument& e) {
    throw Error(e.what(), "--precision");
  }
  r.precision = precision_name(precision);
  const std::unique_ptr<Backend<float>> inner =
      o.backend ? o.backend(precision)
                : make_backend(o.device, "--device", precision, "--precision");
  if (inner->host_memory()) {
    r.hardware = fmt::format("{} CPU threads, {}", r.threads, blas_info().library);
  } else {
    const CudaInfo info = cuda_info();
    r.hardware = fmt::format("{} ({} backend, {} matmuls, cuBLAS)",
                             info.devices.empty() ? "GPU" : info.devices.front().name,
                             inner->name(), r.precision);
  }
  TimedBackend<float> backend(*inner);
  Model<float> model(c, backend);
  model.init(o.seed);
  model.reserve(o.batch, o.seq);
  AdamW optimizer(backend, model.layout(), AdamWConfig{});
  LrSchedule schedule;
  schedule.lr_max = 3e-4;
  schedule.warmup_steps = 1;
  schedule.total_steps = o.steps + 2;
  schedule.validate();

  r.params = model.num_params();
  r.flops_per_token = train_flops_per_token(c, r.params, o.seq);
  r.param_bytes = static_cast<std::uint64_t>(r.params) * sizeof(float);
  r.grad_bytes = r.param_bytes;
  r.optimizer_bytes = optimizer.state_bytes();
  r.activation_bytes = model.activation_bytes();

  // sgemm peak at the shapes this model runs (rows = batch * seq).
  const int N = o.batch * o.seq;
  r.gemms = model_gemm_shapes(c, N, model.loss_chunk_rows());
  // Timed before and after the steps (best of both), so that a moment of
  // contention from other processes does not lower the peak and flatter MFU.
  // In fp32 (a bf16 run's own peak is the bf16 GEMM's, measured below).
  const std::unique_ptr<Backend<float>> fp32 = precision == Precision::kFp32 ? nullptr
                                               : o.backend ? o.backend(Precision::kFp32)
                                                           : make_backend(o.device);
  Backend<float>& sgemm = fp32 ? *fp32 : *inner;
  for (auto& g : r.gemms) time_gemm(sgemm, g);

  // A fixed synthetic batch (the data does not change the work done).
  std::vector<std::int32_t> tokens(static_cast<std::size_t>(N) + 1);
  std::uint64_t s = o.seed * 0x9E3779B97F4A7C15ull + 7;
  for (auto& t : tokens) {
    s = s * 6364136223846793005ull + 1442695040888963407ull;
    t = static_cast<std::int32_t>((s >> 33) % static_cast<std::uint64_t>(c.vocab_size));
  }
  // On a GPU, timing each op alone adds a wait around every op that a run
  // does not have: the measured steps run untimed and one more step is
  // timed op by op for the breakdown. CPU ops are synchronous: the measured
  // steps are timed op by op themselves.
  r.ops_timed_apart = !inner->host_memory();
  backend.set_timing(!r.ops_timed_apart);
  const int last_step = o.steps + (r.ops_timed_apart ? 1 : 0);
  for (int step = 0; step <= last_step; ++step) {
    const bool profile = r.ops_timed_apart && step == last_step;
    if (profile) {
      backend.reset();
      backend.set_timing(true);
    }
    StepTiming st;
    auto t0 = Clock::now();
    model.zero_grad();
    st.loss = model.forward(tokens.data(), tokens.data() + 1, o.batch, o.seq, true);
    st.forward_s = seconds_since(t0);
    t0 = Clock::now();
    model.backward();
    backend.synchronize();  // a GPU's ops return before they finish
    st.backward_s = seconds_since(t0);
    t0 = Clock::now();
    const float scale = clip_scale(global_norm(backend, model.grads(), model.num_params()), 1.0);
    optimizer.step(model.params(), model.grads(), static_cast<float>(schedule.lr(step)), scale);
    backend.synchronize();
    st.optimizer_s = seconds_since(t0);
    st.rss_bytes = process_rss();
    if (step == 0) {
      r.warmup = st;
      backend.reset();
    } else if (profile) {
      r.profiled = st;
    } else {
      r.steps.push_back(st);
    }
  }
  r.activation_bytes_after = model.activation_bytes();
  const int timed_steps = r.ops_timed_apart ? 1 : o.steps;
  for (const auto& [op, sec] : backend.seconds()) r.op_seconds[op] += sec / timed_steps;
  for (const auto& [shape, t] : backend.matmul_shapes()) {
    r.matmul_shapes[shape] = {t.seconds / timed_steps, t.flops / t.seconds * 1e-9,
                              t.calls / timed_steps};
  }
  for (auto& g : r.gemms) {
    time_gemm(sgemm, g);
    r.peak_gflops = std::max(r.peak_gflops, g.gflops);
  }
  if (o.device == "cuda" && !o.backend)
    r.bf16_peak_gflops = bf16_gemm_peak_gflops(r.gemms, "--device");
  return r;
}

std::string format_train_bench(const TrainBenchResult& r) {
  const ModelConfig& c = r.config;
  std::string out;
  out += fmt::format(
      "model        {} ({}, {:.1f}M parameters, {} layers, d_model {}, {} heads, "
      "{} kv heads, vocab {} padded to {})\n",
      c.name, family_name(c.family), r.params / 1e6, c.n_layer, c.d_model, c.n_head, c.n_kv_head,
      c.vocab_size, c.padded_vocab);
  out += fmt::format("batch        {} x {} = {} tokens per step, {}\n", r.batch, r.seq,
                     r.batch * r.seq, r.hardware);
  out += fmt::format(
      "sgemm peak   measured in this run at this model's shapes (M x N x K, best of runs "
      "before and after the steps{}):\n",
      r.device == "cpu" ? "" : "; cuBLAS, each shape as matmul_forward");
  for (const auto& g : r.gemms) {
    out += fmt::format("  {:>5} x {:>5} x {:>5} {}{}  {:7.1f} GFLOP/s  {}\n", g.M, g.N, g.K,
                       g.trans_a ? "T" : "N", g.trans_b ? "T" : "N", g.gflops, g.what);
  }
  out += fmt::format("  peak {:.1f} GFLOP/s (the best of these)\n", r.peak_gflops);
  out += "step         forward   backward  optimizer  total     loss     RSS\n";
  auto line = [&](const std::string& label, const StepTiming& st) {
    out += fmt::format("  {:<10} {:7.3f}s {:8.3f}s {:8.3f}s {:8.3f}s {:8.4f} {}\n", label,
                       st.forward_s, st.backward_s, st.optimizer_s, st.total_s(), st.loss,
                       format_bytes(st.rss_bytes));
  };
  line("warm-up", r.warmup);
  for (std::size_t i = 0; i < r.steps.size(); ++i) line(fmt::format("{}", i + 1), r.steps[i]);
  double f = 0, b = 0, o = 0;
  for (const auto& st : r.steps) {
    f += st.forward_s;
    b += st.backward_s;
    o += st.optimizer_s;
  }
  const double n = static_cast<double>(r.steps.size());
  out += fmt::format("  {:<10} {:7.3f}s {:8.3f}s {:8.3f}s {:8.3f}s\n", "mean", f / n, b / n, o / n,
                     r.mean_step_s());
  out += "  (forward includes the loss head's fused backward: logits are never stored)\n";
  double op_total = 0;
  for (const auto& [op, sec] : r.op_seconds) op_total += sec;
  // Shares of the step the ops were timed in: the measured steps' mean, or
  // the one step timed op by op.
  const double op_step = r.ops_timed_apart ? r.profiled.total_s() : r.mean_step_s();
  if (r.ops_timed_apart) {
    out += fmt::format(
        "time per op  (one more step, {:.3f}s, each op timed alone: the waits around every op "
        "add the GPU's launch gaps, which the measured steps above do not have)\n",
        op_step);
  } else {
    out += "time per op  (mean per step, forward + backward)\n";
  }
  for (const auto& [op, sec] : r.op_seconds) {
    out += fmt::format("  {:<22} {:8.3f}s {:5.1f}%\n", op, sec, 100.0 * sec / op_step);
  }
  out += fmt::format("  {:<22} {:8.3f}s {:5.1f}%\n", "other", op_step - op_total,
                     100.0 * (op_step - op_total) / op_step);
  out += "matmul by shape  (M x N x K of the GEMM; backward = input + weight gradients)\n";
  for (const auto& [shape, m] : r.matmul_shapes) {
    out += fmt::format("  {}  {:3} calls {:8.3f}s {:7.1f} GFLOP/s {:5.1f}% of peak\n", shape,
                       m.calls, m.seconds, m.gflops, 100.0 * m.gflops / r.run_peak_gflops());
  }
  out += fmt::format(
      "FLOPs/token  6 * {} params + 12 * {} layers * {} d_model * {} seq = {:.4f} GFLOP\n",
      r.params, c.n_layer, c.d_model, r.seq, r.flops_per_token * 1e-9);
  for (const auto& [label, step_s] :
       {std::pair{"mean step", r.mean_step_s()}, std::pair{"best step", r.best_step_s()}}) {
    out += fmt::format(
        "{:<12} {:8.1f} tokens/s  {:7.1f} GFLOP/s  MFU {:5.1f}% of the measured {} peak\n", label,
        r.tokens_per_s(step_s), r.achieved_gflops(step_s), 100.0 * r.mfu(step_s),
        r.precision == "bf16" ? "bf16 GEMM" : "sgemm");
  }
  if (r.bf16_peak_gflops > 0 && r.precision == "bf16") {
    out += fmt::format(
        "bf16 peak    {:.1f} GFLOP/s (cuBLAS bf16 GEMM, fp32 accumulation, at the same shapes, "
        "measured after the steps): the peak MFU is held to in this bf16 run\n",
        r.bf16_peak_gflops);
  } else if (r.bf16_peak_gflops > 0) {
    out += fmt::format(
        "bf16 peak    {:.1f} GFLOP/s (cuBLAS bf16 GEMM, fp32 accumulation, at the same shapes): "
        "this fp32 run's best step is {:.1f}% of it\n",
        r.bf16_peak_gflops, 100.0 * r.achieved_gflops(r.best_step_s()) / r.bf16_peak_gflops);
  }
  out += fmt::format(
      "{}parameters {}, gradients {}, optimizer {}, activations {} (total {})\n",
      r.device == "cpu" ? "memory       " : "GPU memory   ", format_bytes(r.param_bytes),
      format_bytes(r.grad_bytes), format_bytes(r.optimizer_bytes), format_bytes(r.activation_bytes),
      format_bytes(r.param_bytes + r.grad_bytes + r.optimizer_bytes + r.activation_bytes));
  const std::uint64_t rss_first = r.steps.front().rss_bytes;
  const std::uint64_t rss_last = r.steps.back().rss_bytes;
  const bool same_arena = r.activation_bytes_after == r.activation_bytes;
  out += fmt::format(
      "             activation arena {} after the last step; process RSS {} after "
      "step 1, {} after step {} ({})\n",
      same_arena ? "unchanged" : "GREW", format_bytes(rss_first), format_bytes(rss_last),
      r.steps.size(),
      rss_last <= rss_first + (std::uint64_t{16} << 20) ? "no growth" : "GREW between steps");
  return out;
}

}  // namespace borealis
