// CPU implementations of the ops of kernels/backend.h (see there for the
// contract of each op), plus the GEMM wrapper they share.
//
// GEMMs go to OpenBLAS (its OpenMP build). Everything else is an OpenMP loop
// the compiler vectorizes. Reductions into parameter gradients run over fixed
// row blocks and are summed in a fixed order, so results do not depend on the
// thread count (only OpenBLAS itself may round differently with another
// thread count). Instantiated for float and double.
#pragma once

#include <cstdint>

namespace borealis::cpu {

// Row-major C[M, N] = alpha * op(A)[M, K] * op(B)[K, N] + beta * C.
// Called inside an OpenMP parallel region, OpenBLAS runs single-threaded.
template <typename T>
void gemm(bool trans_a, bool trans_b, int M, int N, int K, T alpha, const T* A, int lda, const T* B,
          int ldb, T beta, T* C, int ldc);

// y[M] = alpha * op(A) x + beta * y with A row-major [M, N] (op(A) = A^T
// when trans, then y has N elements and x M). For single rows, where GEMM
// pays for packing a whole matrix to use it once.
template <typename T>
void gemv(bool trans, int M, int N, T alpha, const T* A, int lda, const T* x, T beta, T* y);

// The embedding ops over rows [v0, v0 + rows) of wte (the whole table:
// v0 = 0, rows = INT_MAX); tokens outside read zeros and take no gradient.
template <typename T>
void embedding_forward(T* out, const std::int32_t* tokens, const T* wte, int v0, int rows,
                       const T* wpe, int N, int seq, int C);
template <typename T>
void embedding_backward(T* dwte, T* dwpe, const T* dout, const std::int32_t* tokens, int v0,
                        int rows, int N, int seq, int C);
template <typename T>
void matmul_forward(T* out, const T* inp, const T* w, const T* bias, int N, int C, int OC,
                    bool accumulate);
template <typename T>
void matmul_backward(T* dinp, T* dw, T* dbias, const T* dout, const T* inp, const T* w, int N,
                     int C, int OC);
template <typename T>
void crossentropy_forward_backward(T* logits, T* losses, const std::int32_t* targets, int N, int V,
                                   int Vp, T dloss);
template <typename T>
void crossentropy_part_max(T* row_max, const T* logits, int N, int V, int Vp);
template <typename T>
void crossentropy_part_sums(T* logits, T* sums, const T* row_max, const std::int32_t* targets,
                            int v0, int N, int V, int Vp, bool keep_exp);
template <typename T>
void crossentropy_part_finish(T* logits, T* losses, const T* row_max, const T* sums,
                              const std::int32_t* targets, int v0, int N, int V, int Vp, T dloss);

template <typename T>
void layernorm_forward(T* out, T* mean, T* rstd, const T* inp, const T* w, const T* b, int N, int C,
                       float eps);
template <typename T>
void layernorm_backward(T* dinp, T* dw, T* db, const T* dout, const T* inp, const T* w,
                        const T* mean, const T* rstd, int N, int C);
template <typename T>
void rmsnorm_forward(T* out, T* rstd, const T* inp, const T* w, int N, int C, float eps);
template <typename T>
void rmsnorm_backward(T* dinp, T* dw, const T* dout, const T* inp, const T* w, const T* rstd, int N,
                      int C);

template <typename T>
void gelu_forward(T* out, const T* inp, std::int64_t count);
template <typename T>
void gelu_backward(T* dinp, const T* inp, const T* dout, std::int64_t count);
template <typename T>
void swiglu_forward(T* out, const T* inp, int N, int F);
template <typename T>
void swiglu_backward(T* dinp, const T* inp, const T* dout, int N, int F);
// cos and sin of t * theta^(-2i/HD) for positions t < seq and i < HD/2,
// each [seq][HD/2]. Computed once per shape by the backend, not per call.
template <typename T>
void rope_table(T* cos_t, T* sin_t, int seq, int HD, float theta);
// Rotates the q and k heads in place with a table of at least seq rows;
// inverse rotates by the opposite angle (the backward of the rotation).
template <typename T>
void rope_apply(T* qkv, const T* cos_t, const T* sin_t, int B, int seq, int NH, int NKV, int HD,
                bool inverse);

template <typename T>
void attention_forward(T* out, T* lse, const T* qkv, int B, int seq, int NH, int NKV, int HD);
template <typename T>
void attention_backward(T* dqkv, const T* dout, const T* qkv, const T* out, const T* lse, int B,
                        int seq, int NH, int NKV, int HD);

// The paged key/value-cache attention of Backend::attention_kv_forward.
template <typename T>
void attention_kv_forward(T* out, T* kpool, T* vpool, const std::int32_t* blocks, int block_size,
                          const T* qkv, int N, int pos0, int NH, int NKV, int HD);
// Backend::matmul_forward_rowwise (ops_rowwise.cpp).
template <typename T>
void matmul_forward_rowwise(T* out, const T* inp, const T* w, const T* bias, int N, int C, int OC,
                            bool accumulate);
// The same with 256-bit vectors only (what matmul_forward_rowwise does
// without AVX-512): the same bits, for the tests and bench/rowwise_bench.
template <typename T>
void matmul_forward_rowwise_portable(T* out, const T* inp, const T* w, const T* bias, int N, int C,
                                     int OC, bool accumulate);

// Column sums of x[N, C] added to out[C], over fixed row blocks (deterministic).
template <typename T>
void column_sum_accumulate(T* out, const T* x, int N, int C);

// AdamW's update, the sum of squares and scaling of Backend (adamw_update,
// sum_of_squares, scale).
template <typename T>
void adamw_update(T* params, const T* grads, T* m, T* v, std::int64_t count, float lr, float beta1,
                  float beta2, float eps, float weight_decay, float grad_scale, float c1, float c2);
template <typename T>
double sum_of_squares(const T* x, std::int64_t count);
template <typename T>
void scale(T* x, T factor, std::int64_t count);
template <typename T>
void add(T* out, const T* in, std::int64_t count);

}  // namespace borealis::cpu
