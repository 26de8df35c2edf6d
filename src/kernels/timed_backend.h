// A Backend decorator that times every op of the backend it wraps: where a
// training step spends its time, per op, on any backend. Used by the
// training-step benchmark. Timings are wall-clock per call, from the end of
// the work queued before the op to the end of the op's own (the inner
// backend's synchronize(): a no-op on the CPU, whose ops are synchronous;
// on a GPU it adds the wait between ops that a run without timing does not
// have, so the benchmark times a GPU's steps with timing off and one more
// step op by op).
//
// Subclasses may override before_op() and after_op(), called around every
// op (the tests use them to emulate memory the host cannot touch).
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <string>

#include <fmt/format.h>

#include "kernels/backend.h"

namespace borealis {

template <typename T>
class TimedBackend : public Backend<T>, public Bf16Inputs<T> {
 public:
  explicit TimedBackend(Backend<T>& inner) : inner_(inner) {}

  // Seconds spent in each op since construction or reset().
  const std::map<std::string, double>& seconds() const { return seconds_; }
  // Matmuls by direction and shape ("forward  N x OC x C" as M x N x K of
  // the GEMM; backward is the input- and the weight-gradient GEMM together).
  struct Shape {
    double seconds = 0;
    double flops = 0;
    std::int64_t calls = 0;
  };
  const std::map<std::string, Shape>& matmul_shapes() const { return shapes_; }
  void reset() {
    seconds_.clear();
    shapes_.clear();
  }
  // With timing off, ops go straight to the inner backend (through
  // before_op and after_op, but without the waits timing needs): a GPU then
  // queues them back to back as in a run without timing.
  void set_timing(bool on) { timing_ = on; }

  std::string name() const override { return inner_.name() + " (timed)"; }
  std::int64_t loss_chunk_elems() const override { return inner_.loss_chunk_elems(); }
  // The inner backend's bf16-input ops, timed as their fp32 forms are.
  Bf16Inputs<T>* bf16_inputs() override { return inner_.bf16_inputs() != nullptr ? this : nullptr; }

  // Memory is the inner backend's, untimed.
  void* allocate(std::size_t bytes) override { return inner_.allocate(bytes); }
  void release(void* ptr) noexcept override { inner_.release(ptr); }
  bool host_memory() const override { return inner_.host_memory(); }
  void upload(void* dst, const void* host, std::size_t bytes) override {
    inner_.upload(dst, host, bytes);
  }
  void download(void* host, const void* src, std::size_t bytes) override {
    inner_.download(host, src, bytes);
  }
  void synchronize() override { inner_.synchronize(); }

  void embedding_forward(T* out, const std::int32_t* tokens, const T* wte, const T* wpe, int N,
                         int seq, int C) override {
    time("embedding", [&] { inner_.embedding_forward(out, tokens, wte, wpe, N, seq, C); });
  }
  void embedding_backward(T* dwte, T* dwpe, const T* dout, const std::int32_t* tokens, int N,
                          int seq, int C) override {
    time("embedding", [&] { inner_.embedding_backward(dwte, dwpe, dout, tokens, N, seq, C); });
  }
  void embedding_forward_part(T* out, const std::int32_t* tokens, const T* wte, int v0, int rows,
                              const T* wpe, int N, int seq, int C) override {
    time("embedding",
         [&] { inner_.embedding_forward_part(out, tokens, wte, v0, rows, wpe, N, seq, C); });
  }
  void embedding_backward_part(T* dwte, T* dwpe, const T* dout, const std::int32_t* tokens, int v0,
                               int rows, int N, int seq, int C) override {
    time("embedding",
         [&] { inner_.embedding_backward_part(dwte, dwpe, dout, tokens, v0, rows, N, seq, C); });
  }
  void crossentropy_part_max(T* row_max, const T* logits, int N, int V, int Vp) override {
    time("crossentropy", [&] { inner_.crossentropy_part_max(row_max, logits, N, V, Vp); });
  }
  void crossentropy_part_sums(T* logits, T* sums, const T* row_max, const std::int32_t* targets,
                              int v0, int N, int V, int Vp, bool keep_exp) override {
    time("crossentropy", [&] {
      inner_.crossentropy_part_sums(logits, sums, row_max, targets, v0, N, V, Vp, keep_exp);
    });
  }
  void crossentropy_part_finish(T* logits, T* losses, const T* row_max, const T* sums,
                                const std::int32_t* targets, int v0, int N, int V, int Vp,
                                T dloss) override {
    time("crossentropy", [&] {
      inner_.crossentropy_part_finish(logits, losses, row_max, sums, targets, v0, N, V, Vp, dloss);
    });
  }
  void matmul_forward(T* out, const T* inp, const T* w, const T* bias, int N, int C, int OC,
                      bool accumulate) override {
    const double t =
        time("matmul", [&] { inner_.matmul_forward(out, inp, w, bias, N, C, OC, accumulate); });
    add_shape("forward", N, OC, C, 2.0 * N * OC * C, t);
  }
  void matmul_backward(T* dinp, T* dw, T* dbias, const T* dout, const T* inp, const T* w, int N,
                       int C, int OC) override {
    const double t =
        time("matmul", [&] { inner_.matmul_backward(dinp, dw, dbias, dout, inp, w, N, C, OC); });
    add_shape("backward", N, C, OC, (dinp != nullptr ? 4.0 : 2.0) * N * OC * C, t);
  }
  void matmul_residual_forward(T* out, const T* residual, const T* inp, const T* w, const T* bias,
                               int N, int C, int OC) override {
    const double t = time(
        "matmul", [&] { inner_.matmul_residual_forward(out, residual, inp, w, bias, N, C, OC); });
    add_shape("forward", N, OC, C, 2.0 * N * OC * C, t);
  }
  // The fused GELU counts as matmul time, as the GEMM's epilogue.
  void matmul_gelu_forward(T* out, T* pre, const T* inp, const T* w, const T* bias, int N, int C,
                           int OC) override {
    const double t =
        time("matmul", [&] { inner_.matmul_gelu_forward(out, pre, inp, w, bias, N, C, OC); });
    add_shape("forward", N, OC, C, 2.0 * N * OC * C, t);
  }
  void matmul_backward_gelu(T* dpre, T* dw, T* dbias, const T* dout, const T* inp, const T* w,
                            const T* pre, int N, int C, int OC) override {
    const double t = time("matmul", [&] {
      inner_.matmul_backward_gelu(dpre, dw, dbias, dout, inp, w, pre, N, C, OC);
    });
    add_shape("backward", N, C, OC, 4.0 * N * OC * C, t);
  }
  void matmul_forward(T* out, const std::uint16_t* inp, const T* w, const T* bias, int N, int C,
                      int OC, bool accumulate) override {
    const double t = time("matmul", [&] {
      inner_.bf16_inputs()->matmul_forward(out, inp, w, bias, N, C, OC, accumulate);
    });
    add_shape("forward", N, OC, C, 2.0 * N * OC * C, t);
  }
  void matmul_residual_forward(T* out, const T* residual, const std::uint16_t* inp, const T* w,
                               const T* bias, int N, int C, int OC) override {
    const double t = time("matmul", [&] {
      inner_.bf16_inputs()->matmul_residual_forward(out, residual, inp, w, bias, N, C, OC);
    });
    add_shape("forward", N, OC, C, 2.0 * N * OC * C, t);
  }
  void matmul_backward(T* dinp, T* dw, T* dbias, const T* dout, const std::uint16_t* dout16,
                       const std::uint16_t* inp, const T* w, int N, int C, int OC) override {
    const double t = time("matmul", [&] {
      inner_.bf16_inputs()->matmul_backward(dinp, dw, dbias, dout, dout16, inp, w, N, C, OC);
    });
    add_shape("backward", N, C, OC, (dinp != nullptr ? 4.0 : 2.0) * N * OC * C, t);
  }
  void matmul_backward_gelu(std::uint16_t* dpre, T* dw, T* dbias, const T* dout,
                            const std::uint16_t* dout16, const std::uint16_t* inp, const T* w,
                            const std::uint16_t* pre, int N, int C, int OC) override {
    const double t = time("matmul", [&] {
      inner_.bf16_inputs()->matmul_backward_gelu(dpre, dw, dbias, dout, dout16, inp, w, pre, N, C,
                                                 OC);
    });
    add_shape("backward", N, C, OC, 4.0 * N * OC * C, t);
  }
  void layernorm_backward(T* dinp, std::uint16_t* dinp16, T* dw, T* db, const T* dout, const T* inp,
                          const T* w, const T* mean, const T* rstd, int N, int C) override {
    time("norm", [&] {
      inner_.bf16_inputs()->layernorm_backward(dinp, dinp16, dw, db, dout, inp, w, mean, rstd, N,
                                               C);
    });
  }
  void rmsnorm_backward(T* dinp, std::uint16_t* dinp16, T* dw, const T* dout, const T* inp,
                        const T* w, const T* rstd, int N, int C) override {
    time("norm", [&] {
      inner_.bf16_inputs()->rmsnorm_backward(dinp, dinp16, dw, dout, inp, w, rstd, N, C);
    });
  }
  void crossentropy_forward_backward(std::uint16_t* logits, T* losses, const std::int32_t* targets,
                                     int N, int V, int Vp, T dloss) override {
    time("softmax cross-entropy", [&] {
      inner_.bf16_inputs()->crossentropy_forward_backward(logits, losses, targets, N, V, Vp, dloss);
    });
  }
  void attention_forward(T* out, std::uint16_t* out_bf16, T* lse, const T* qkv, int B, int seq,
                         int NH, int NKV, int HD) override {
    time("attention", [&] {
      inner_.bf16_inputs()->attention_forward(out, out_bf16, lse, qkv, B, seq, NH, NKV, HD);
    });
  }
  bool attention_reads_bf16_qkv(int B, int NH, int NKV, int HD) const override {
    return inner_.bf16_inputs()->attention_reads_bf16_qkv(B, NH, NKV, HD);
  }
  void rope_forward(std::uint16_t* out, const T* qkv, int B, int seq, int NH, int NKV, int HD,
                    float theta) override {
    time("rope", [&] { inner_.bf16_inputs()->rope_forward(out, qkv, B, seq, NH, NKV, HD, theta); });
  }
  void matmul_forward(std::uint16_t* out, const std::uint16_t* inp, const T* w, const T* bias,
                      int N, int C, int OC) override {
    const double t =
        time("matmul", [&] { inner_.bf16_inputs()->matmul_forward(out, inp, w, bias, N, C, OC); });
    add_shape("forward", N, OC, C, 2.0 * N * OC * C, t);
  }
  void attention_forward(T* out, std::uint16_t* out_bf16, T* lse, const std::uint16_t* qkv, int B,
                         int seq, int NH, int NKV, int HD) override {
    time("attention", [&] {
      inner_.bf16_inputs()->attention_forward(out, out_bf16, lse, qkv, B, seq, NH, NKV, HD);
    });
  }
  void matmul_backward(std::uint16_t* dinp, T* dw, T* dbias, const T* dout,
                       const std::uint16_t* dout16, const std::uint16_t* inp, const T* w, int N,
                       int C, int OC) override {
    const double t = time("matmul", [&] {
      inner_.bf16_inputs()->matmul_backward(dinp, dw, dbias, dout, dout16, inp, w, N, C, OC);
    });
    add_shape("backward", N, C, OC, 4.0 * N * OC * C, t);
  }
  void attention_backward(T* dqkv, const std::uint16_t* dout, const std::uint16_t* qkv,
                          const std::uint16_t* out, const T* lse, int B, int seq, int NH, int NKV,
                          int HD) override {
    time("attention", [&] {
      inner_.bf16_inputs()->attention_backward(dqkv, dout, qkv, out, lse, B, seq, NH, NKV, HD);
    });
  }
  void attention_backward(std::uint16_t* dqkv, const std::uint16_t* dout, const std::uint16_t* qkv,
                          const std::uint16_t* out, const T* lse, int B, int seq, int NH, int NKV,
                          int HD) override {
    time("attention", [&] {
      inner_.bf16_inputs()->attention_backward(dqkv, dout, qkv, out, lse, B, seq, NH, NKV, HD);
    });
  }
  void attention_rope_backward(std::uint16_t* dqkv, const std::uint16_t* dout,
                               const std::uint16_t* qkv, const std::uint16_t* out, const T* lse,
                               int B, int seq, int NH, int NKV, int HD, float theta) override {
    time("attention", [&] {
      inner_.bf16_inputs()->attention_rope_backward(dqkv, dout, qkv, out, lse, B, seq, NH, NKV, HD,
                                                    theta);
    });
  }
  void swiglu_backward(std::uint16_t* dinp, const std::uint16_t* inp, const T* dout, int N,
                       int F) override {
    time("activation", [&] { inner_.bf16_inputs()->swiglu_backward(dinp, inp, dout, N, F); });
  }
  void rope_backward(std::uint16_t* out, const T* dqkv, int B, int seq, int NH, int NKV, int HD,
                     float theta) override {
    time("rope",
         [&] { inner_.bf16_inputs()->rope_backward(out, dqkv, B, seq, NH, NKV, HD, theta); });
  }
  void layernorm_forward(std::uint16_t* out, T* mean, T* rstd, const T* inp, const T* w, const T* b,
                         int N, int C, float eps) override {
    time("norm",
         [&] { inner_.bf16_inputs()->layernorm_forward(out, mean, rstd, inp, w, b, N, C, eps); });
  }
  void rmsnorm_forward(std::uint16_t* out, T* rstd, const T* inp, const T* w, int N, int C,
                       float eps) override {
    time("norm", [&] { inner_.bf16_inputs()->rmsnorm_forward(out, rstd, inp, w, N, C, eps); });
  }
  void gelu_forward(std::uint16_t* out, const std::uint16_t* inp, std::int64_t count) override {
    time("activation", [&] { inner_.bf16_inputs()->gelu_forward(out, inp, count); });
  }
  void swiglu_forward(std::uint16_t* out, const std::uint16_t* inp, int N, int F) override {
    time("activation", [&] { inner_.bf16_inputs()->swiglu_forward(out, inp, N, F); });
  }
  // (The weights' rounding is the matmuls' work, as when each rounded its own.)
  void use_weight_copy(const T* params, std::uint16_t* copy, std::int64_t count,
                       bool round) override {
    time("matmul", [&] { inner_.bf16_inputs()->use_weight_copy(params, copy, count, round); });
  }
  void layernorm_forward(T* out, T* mean, T* rstd, const T* inp, const T* w, const T* b, int N,
                         int C, float eps) override {
    time("norm", [&] { inner_.layernorm_forward(out, mean, rstd, inp, w, b, N, C, eps); });
  }
  void layernorm_backward(T* dinp, T* dw, T* db, const T* dout, const T* inp, const T* w,
                          const T* mean, const T* rstd, int N, int C) override {
    time("norm", [&] { inner_.layernorm_backward(dinp, dw, db, dout, inp, w, mean, rstd, N, C); });
  }
  void rmsnorm_forward(T* out, T* rstd, const T* inp, const T* w, int N, int C,
                       float eps) override {
    time("norm", [&] { inner_.rmsnorm_forward(out, rstd, inp, w, N, C, eps); });
  }
  void rmsnorm_backward(T* dinp, T* dw, const T* dout, const T* inp, const T* w, const T* rstd,
                        int N, int C) override {
    time("norm", [&] { inner_.rmsnorm_backward(dinp, dw, dout, inp, w, rstd, N, C); });
  }
  void gelu_forward(T* out, const T* inp, std::int64_t count) override {
    time("activation", [&] { inner_.gelu_forward(out, inp, count); });
  }
  void gelu_backward(T* dinp, const T* inp, const T* dout, std::int64_t count) override {
    time("activation", [&] { inner_.gelu_backward(dinp, inp, dout, count); });
  }
  void swiglu_forward(T* out, const T* inp, int N, int F) override {
    time("activation", [&] { inner_.swiglu_forward(out, inp, N, F); });
  }
  void swiglu_backward(T* dinp, const T* inp, const T* dout, int N, int F) override {
    time("activation", [&] { inner_.swiglu_backward(dinp, inp, dout, N, F); });
  }
  void rope_forward(T* qkv, int B, int seq, int NH, int NKV, int HD, float theta) override {
    time("rope", [&] { inner_.rope_forward(qkv, B, seq, NH, NKV, HD, theta); });
  }
  void rope_backward(T* dqkv, int B, int seq, int NH, int NKV, int HD, float theta) override {
    time("rope", [&] { inner_.rope_backward(dqkv, B, seq, NH, NKV, HD, theta); });
  }
  void attention_forward(T* out, T* lse, const T* qkv, int B, int seq, int NH, int NKV,
                         int HD) override {
    time("attention", [&] { inner_.attention_forward(out, lse, qkv, B, seq, NH, NKV, HD); });
  }
  void attention_backward(T* dqkv, const T* dout, const T* qkv, const T* out, const T* lse, int B,
                          int seq, int NH, int NKV, int HD) override {
    time("attention",
         [&] { inner_.attention_backward(dqkv, dout, qkv, out, lse, B, seq, NH, NKV, HD); });
  }
  void rope_forward_at(T* qkv, int N, int pos0, int NH, int NKV, int HD, float theta) override {
    time("rope", [&] { inner_.rope_forward_at(qkv, N, pos0, NH, NKV, HD, theta); });
  }
  void attention_kv_forward(T* out, T* kpool, T* vpool, const std::int32_t* blocks, int block_size,
                            const T* qkv, int N, int pos0, int NH, int NKV, int HD) override {
    time("attention", [&] {
      inner_.attention_kv_forward(out, kpool, vpool, blocks, block_size, qkv, N, pos0, NH, NKV, HD);
    });
  }
  void matmul_forward_rowwise(T* out, const T* inp, const T* w, const T* bias, int N, int C, int OC,
                              bool accumulate) override {
    time("matmul", [&] { inner_.matmul_forward_rowwise(out, inp, w, bias, N, C, OC, accumulate); });
  }
  void crossentropy_forward_backward(T* logits, T* losses, const std::int32_t* targets, int N,
                                     int V, int Vp, T dloss) override {
    time("softmax cross-entropy",
         [&] { inner_.crossentropy_forward_backward(logits, losses, targets, N, V, Vp, dloss); });
  }
  void copy(T* out, const T* in, std::int64_t count) override {
    time("copy/fill", [&] { inner_.copy(out, in, count); });
  }
  void fill(T* out, T value, std::int64_t count) override {
    time("copy/fill", [&] { inner_.fill(out, value, count); });
  }
  // The norm for clipping and the update together: what a step spends in
  // the optimizer.
  void adamw_update(T* params, const T* grads, T* m, T* v, std::int64_t count,
                    const typename Backend<T>::AdamWUpdate& u) override {
    time("optimizer", [&] { inner_.adamw_update(params, grads, m, v, count, u); });
  }
  double sum_of_squares(const T* x, std::int64_t count) override {
    double sum = 0;
    time("optimizer", [&] { sum = inner_.sum_of_squares(x, count); });
    return sum;
  }
  void scale(T* x, T factor, std::int64_t count) override {
    time("optimizer", [&] { inner_.scale(x, factor, count); });
  }
  void add(T* out, const T* in, std::int64_t count) override {
    time("residual", [&] { inner_.add(out, in, count); });
  }

 protected:
  virtual void before_op() {}
  virtual void after_op() {}

 private:
  template <typename F>
  double time(const char* what, F&& op) {
    if (!timing_) {
      before_op();
      op();
      after_op();
      return 0.0;
    }
    inner_.synchronize();
    before_op();
    const auto t0 = std::chrono::steady_clock::now();
    op();
    inner_.synchronize();
    const double t = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    after_op();
    seconds_[what] += t;
    return t;
  }
  void add_shape(const char* dir, int M, int N, int K, double flops, double t) {
    if (!timing_) return;
    Shape& s = shapes_[fmt::format("{:<8} {:>6} x {:>6} x {:>6}", dir, M, N, K)];
    s.seconds += t;
    s.flops += flops;
    ++s.calls;
  }

  Backend<T>& inner_;
  std::map<std::string, double> seconds_;
  bool timing_ = true;
  std::map<std::string, Shape> shapes_;
};

}  // namespace borealis
