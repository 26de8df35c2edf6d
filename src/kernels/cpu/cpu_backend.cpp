// The CPU backend: forwards each Backend op to its OpenMP/OpenBLAS kernel.
#include <algorithm>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>
#include <vector>

#include "kernels/backend.h"
#include "kernels/cpu/ops.h"
#include "kernels/cpu/vec_math.h"

namespace borealis {

namespace {

template <typename T>
class CpuBackend final : public Backend<T> {
 public:
  std::string name() const override { return "cpu"; }
  std::int64_t loss_chunk_elems() const override { return std::int64_t{1} << 25; }
  bool concurrent_attention() const override { return true; }

  // Host memory. calloc: large blocks come zeroed from the kernel, page by
  // page as they are first touched.
  void* allocate(std::size_t bytes) override {
    void* p = std::calloc(std::max<std::size_t>(bytes, 1), 1);
    if (p == nullptr) throw std::bad_alloc();
    return p;
  }
  void release(void* ptr) noexcept override { std::free(ptr); }
  bool host_memory() const override { return true; }
  void upload(void* dst, const void* host, std::size_t bytes) override {
    if (bytes > 0 && dst != host) std::memcpy(dst, host, bytes);
  }
  void download(void* host, const void* src, std::size_t bytes) override {
    if (bytes > 0 && host != src) std::memcpy(host, src, bytes);
  }

  void embedding_forward(T* out, const std::int32_t* tokens, const T* wte, const T* wpe, int N,
                         int seq, int C) override {
    cpu::embedding_forward(out, tokens, wte, 0, INT_MAX, wpe, N, seq, C);
  }
  void embedding_backward(T* dwte, T* dwpe, const T* dout, const std::int32_t* tokens, int N,
                          int seq, int C) override {
    cpu::embedding_backward(dwte, dwpe, dout, tokens, 0, INT_MAX, N, seq, C);
  }
  void embedding_forward_part(T* out, const std::int32_t* tokens, const T* wte, int v0, int rows,
                              const T* wpe, int N, int seq, int C) override {
    cpu::embedding_forward(out, tokens, wte, v0, rows, wpe, N, seq, C);
  }
  void embedding_backward_part(T* dwte, T* dwpe, const T* dout, const std::int32_t* tokens, int v0,
                               int rows, int N, int seq, int C) override {
    cpu::embedding_backward(dwte, dwpe, dout, tokens, v0, rows, N, seq, C);
  }
  void crossentropy_part_max(T* row_max, const T* logits, int N, int V, int Vp) override {
    cpu::crossentropy_part_max(row_max, logits, N, V, Vp);
  }
  void crossentropy_part_sums(T* logits, T* sums, const T* row_max, const std::int32_t* targets,
                              int v0, int N, int V, int Vp, bool keep_exp) override {
    cpu::crossentropy_part_sums(logits, sums, row_max, targets, v0, N, V, Vp, keep_exp);
  }
  void crossentropy_part_finish(T* logits, T* losses, const T* row_max, const T* sums,
                                const std::int32_t* targets, int v0, int N, int V, int Vp,
                                T dloss) override {
    cpu::crossentropy_part_finish(logits, losses, row_max, sums, targets, v0, N, V, Vp, dloss);
  }
  void matmul_forward(T* out, const T* inp, const T* w, const T* bias, int N, int C, int OC,
                      bool accumulate) override {
    cpu::matmul_forward(out, inp, w, bias, N, C, OC, accumulate);
  }
  void matmul_backward(T* dinp, T* dw, T* dbias, const T* dout, const T* inp, const T* w, int N,
                       int C, int OC) override {
    cpu::matmul_backward(dinp, dw, dbias, dout, inp, w, N, C, OC);
  }
  void layernorm_forward(T* out, T* mean, T* rstd, const T* inp, const T* w, const T* b, int N,
                         int C, float eps) override {
    cpu::layernorm_forward(out, mean, rstd, inp, w, b, N, C, eps);
  }
  void layernorm_backward(T* dinp, T* dw, T* db, const T* dout, const T* inp, const T* w,
                          const T* mean, const T* rstd, int N, int C) override {
    cpu::layernorm_backward(dinp, dw, db, dout, inp, w, mean, rstd, N, C);
  }
  void rmsnorm_forward(T* out, T* rstd, const T* inp, const T* w, int N, int C,
                       float eps) override {
    cpu::rmsnorm_forward(out, rstd, inp, w, N, C, eps);
  }
  void rmsnorm_backward(T* dinp, T* dw, const T* dout, const T* inp, const T* w, const T* rstd,
                        int N, int C) override {
    cpu::rmsnorm_backward(dinp, dw, dout, inp, w, rstd, N, C);
  }
  void gelu_forward(T* out, const T* inp, std::int64_t count) override {
    cpu::gelu_forward(out, inp, count);
  }
  void gelu_backward(T* dinp, const T* inp, const T* dout, std::int64_t count) override {
    cpu::gelu_backward(dinp, inp, dout, count);
  }
  void swiglu_forward(T* out, const T* inp, int N, int F) override {
    cpu::swiglu_forward(out, inp, N, F);
  }
  void swiglu_backward(T* dinp, const T* inp, const T* dout, int N, int F) override {
    cpu::swiglu_backward(dinp, inp, dout, N, F);
  }
  void rope_forward(T* qkv, int B, int seq, int NH, int NKV, int HD, float theta) override {
    const RopeTable& r = rope_table(seq, HD, theta);
    cpu::rope_apply(qkv, r.cos.data(), r.sin.data(), B, seq, NH, NKV, HD, false);
  }
  void rope_backward(T* dqkv, int B, int seq, int NH, int NKV, int HD, float theta) override {
    const RopeTable& r = rope_table(seq, HD, theta);
    cpu::rope_apply(dqkv, r.cos.data(), r.sin.data(), B, seq, NH, NKV, HD, true);
  }
  void attention_forward(T* out, T* lse, const T* qkv, int B, int seq, int NH, int NKV,
                         int HD) override {
    cpu::attention_forward(out, lse, qkv, B, seq, NH, NKV, HD);
  }
  void attention_backward(T* dqkv, const T* dout, const T* qkv, const T* out, const T* lse, int B,
                          int seq, int NH, int NKV, int HD) override {
    cpu::attention_backward(dqkv, dout, qkv, out, lse, B, seq, NH, NKV, HD);
  }
  void rope_forward_at(T* qkv, int N, int pos0, int NH, int NKV, int HD, float theta) override {
    // The table grows in steps of 256 positions, not at every decode step.
    const RopeTable& r = rope_table((pos0 + N + 255) / 256 * 256, HD, theta);
    // Rows of the table are positions: start it at pos0 and the N rows take
    // positions pos0 .. pos0+N-1.
    const std::size_t at = static_cast<std::size_t>(pos0) * (HD / 2);
    cpu::rope_apply(qkv, r.cos.data() + at, r.sin.data() + at, 1, N, NH, NKV, HD, false);
  }
  void attention_kv_forward(T* out, T* kpool, T* vpool, const std::int32_t* blocks, int block_size,
                            const T* qkv, int N, int pos0, int NH, int NKV, int HD) override {
    cpu::attention_kv_forward(out, kpool, vpool, blocks, block_size, qkv, N, pos0, NH, NKV, HD);
  }
  void matmul_forward_rowwise(T* out, const T* inp, const T* w, const T* bias, int N, int C, int OC,
                              bool accumulate) override {
    cpu::matmul_forward_rowwise(out, inp, w, bias, N, C, OC, accumulate);
  }
  void crossentropy_forward_backward(T* logits, T* losses, const std::int32_t* targets, int N,
                                     int V, int Vp, T dloss) override {
    cpu::crossentropy_forward_backward(logits, losses, targets, N, V, Vp, dloss);
  }
  void copy(T* out, const T* in, std::int64_t count) override {
#pragma omp parallel for simd schedule(static) if (cpu::worth_threads(count))
    for (std::int64_t i = 0; i < count; ++i) out[i] = in[i];
  }
  void fill(T* out, T value, std::int64_t count) override {
#pragma omp parallel for simd schedule(static) if (cpu::worth_threads(count))
    for (std::int64_t i = 0; i < count; ++i) out[i] = value;
  }
  void adamw_update(T* params, const T* grads, T* m, T* v, std::int64_t count,
                    const typename Backend<T>::AdamWUpdate& u) override {
    cpu::adamw_update(params, grads, m, v, count, u.lr, u.beta1, u.beta2, u.eps, u.weight_decay,
                      u.grad_scale, u.c1, u.c2);
  }
  double sum_of_squares(const T* x, std::int64_t count) override {
    return cpu::sum_of_squares(x, count);
  }
  void scale(T* x, T factor, std::int64_t count) override {
    cpu::scale(x, factor, count);
  }
  void add(T* out, const T* in, std::int64_t count) override {
    cpu::add(out, in, count);
  }

 private:
  // Rotary angles, computed once for the longest sequence seen: every layer
  // and every step reuses them (a table serves any shorter sequence too).
  struct RopeTable {
    int seq = 0, head_dim = 0;
    float theta = 0;
    std::vector<T> cos, sin;
  };
  const RopeTable& rope_table(int seq, int HD, float theta) {
    if (seq > rope_.seq || HD != rope_.head_dim || theta != rope_.theta) {
      rope_.seq = std::max(seq, HD == rope_.head_dim && theta == rope_.theta ? rope_.seq : 0);
      rope_.head_dim = HD;
      rope_.theta = theta;
      const std::size_t n = static_cast<std::size_t>(rope_.seq) * (HD / 2);
      rope_.cos.resize(n);
      rope_.sin.resize(n);
      cpu::rope_table(rope_.cos.data(), rope_.sin.data(), rope_.seq, HD, theta);
    }
    return rope_;
  }
  RopeTable rope_;
};

}  // namespace

template <typename T>
std::unique_ptr<Backend<T>> make_cpu_backend() {
  return std::make_unique<CpuBackend<T>>();
}

template std::unique_ptr<Backend<float>> make_cpu_backend<float>();
template std::unique_ptr<Backend<double>> make_cpu_backend<double>();

}  // namespace borealis
