// The training-step benchmark behind `borealis bench train` and
// bench/train_step: times forward, backward and the optimizer separately on
// a synthetic batch, on the CPU or (--device cuda) a GPU, measures the
// machine's fp32 GEMM peak (OpenBLAS sgemm, or cuBLAS sgemm on the GPU) at
// the model's own GEMM shapes in the same run, and reports tokens/s,
// achieved GFLOP/s, MFU and memory (which must not grow from step to step).
//
// FLOPs are counted as in PaLM (and in the PyTorch reference
// figures): 6 * N_params + 12 * n_layer * d_model * seq per token, i.e. the
// attention term counts the full (non-causal) score matrix.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "kernels/backend.h"
#include "model/config.h"

namespace borealis {

struct TrainBenchOptions {
  std::string model = "gpt2-124m";
  std::string device = "cpu";      // kernels/make_backend.h: "cpu" or "cuda"
  std::string precision = "fp32";  // the matmuls' (kernels/backend.h): "fp32", or "bf16" on cuda
  int batch = 4;
  int seq = 256;
  int steps = 3;  // measured steps, after one warm-up step
  std::uint64_t seed = 1;
  // The backend to run on in `precision` instead of `device`'s (null: that
  // one), for tests; the bf16 GEMM peak, which needs a GPU, is then not
  // measured.
  std::function<std::unique_ptr<Backend<float>>(Precision)> backend;
};

struct GemmTiming {
  std::string what;  // which model GEMM the shape stands for
  int M = 0, N = 0, K = 0;
  bool trans_a = false, trans_b = false;
  double gflops = 0;  // best of several runs
};

struct StepTiming {
  double forward_s = 0, backward_s = 0, optimizer_s = 0;
  double loss = 0;
  std::uint64_t rss_bytes = 0;  // process resident memory after the step
  double total_s() const { return forward_s + backward_s + optimizer_s; }
};

struct TrainBenchResult {
  ModelConfig config;
  std::string device;     // "cpu" or "cuda"
  std::string precision;  // "fp32" or "bf16"
  std::string hardware;   // what ran it: CPU threads and BLAS, or the GPU's name
  int batch = 0, seq = 0, threads = 0;
  std::int64_t params = 0;
  double flops_per_token = 0;
  std::vector<GemmTiming> gemms;
  double peak_gflops = 0;  // best sgemm rate over gemms (cuBLAS's on a GPU)
  // On a GPU: the best bf16 GEMM rate (fp32 accumulation) at the model's
  // largest shapes, the peak a bf16 run would be held to (0 on the CPU).
  double bf16_peak_gflops = 0;
  StepTiming warmup;
  std::vector<StepTiming> steps;
  // Whether the per-op figures come from one more step, timed op by op
  // (on a GPU), rather than from the measured steps (on the CPU); that step.
  bool ops_timed_apart = false;
  StepTiming profiled;
  std::uint64_t param_bytes = 0, grad_bytes = 0, optimizer_bytes = 0, activation_bytes = 0;
  std::uint64_t activation_bytes_after = 0;  // arena size after the last step
  // Seconds per measured step in each kind of op (forward and backward
  // together; "optimizer" is clipping + AdamW).
  std::map<std::string, double> op_seconds;
  // Per matmul shape, per step: seconds and GFLOP/s (TimedBackend's keys).
  struct MatmulShape {
    double seconds = 0, gflops = 0;
    std::int64_t calls = 0;
  };
  std::map<std::string, MatmulShape> matmul_shapes;

  // Over the measured steps; the best step shows the engine's speed when other
  // processes on the machine leave it alone, the mean what a run would see.
  double mean_step_s() const;
  double best_step_s() const;
  double tokens_per_s(double step_s) const;
  double achieved_gflops(double step_s) const;
  double mfu(double step_s) const;  // achieved / the peak of the run's precision
  // The peak MFU is held to: the sgemm peak for fp32, the bf16 GEMM peak for bf16.
  double run_peak_gflops() const;
};

// Training FLOPs per token of a model with `params` parameters at sequence
// length seq (the formula above).
double train_flops_per_token(const ModelConfig& config, std::int64_t params, int seq);

// The GEMM shapes a training step of `rows` = batch * seq rows runs, and the
// best rate of one shape (updates g.gflops if faster than before).
std::vector<GemmTiming> model_gemm_shapes(const ModelConfig& config, int rows, int loss_chunk_rows);
// On a backend with host memory (the CPU), OpenBLAS's sgemm with g's
// transposes; on another (a GPU), the same M x N x K as the backend's
// matmul_forward (out[M, N] = A[M, K] W[N, K]^T), waiting for the device at
// both ends of each run.
void time_gemm(Backend<float>& backend, GemmTiming& g);
// The best rate of cuBLAS's bf16 GEMM (fp32 accumulation) over these shapes
// on the first GPU: the peak a bf16 run's MFU is held to (the GEMMs alone,
// without the rounding of their operands). Throws borealis::Error at `where`
// in a build without the CUDA backend.
double bf16_gemm_peak_gflops(const std::vector<GemmTiming>& shapes, const std::string& where);

// Throws borealis::Error for an unknown model or bad sizes.
TrainBenchResult run_train_bench(const TrainBenchOptions& options);

// Multi-line human-readable report.
std::string format_train_bench(const TrainBenchResult& result);

}  // namespace borealis
