// The CUDA backend: Backend<float> on one GPU (see cuda_backend.h).
//
// Every op runs on the default stream, so ops run in the order they are
// called and a DeviceBuffer copy sees the results of the ops before it.
// GEMMs are cuBLAS's (CUBLAS_DEFAULT_MATH: fp32 arithmetic, no TF32). The
// other ops are plain kernels, written for correctness and a fixed order of
// every reduction first:
//  - row ops (norms, attention rows, the loss) give one warp or one block to
//    a row and reduce with a fixed shuffle tree;
//  - parameter gradients that sum over rows (embeddings, biases, norm
//    weights) sum in the CPU backend's order: row blocks of the same size,
//    then the blocks in order;
//  - attention keeps only the log-sum-exp per row (as the CPU backend and
//    FlashAttention do). Head dimensions up to 128 run tiled kernels
//    (FlashAttention-2's schedule, "tiled (flash) attention" below); larger
//    ones give each query row to one warp. Backward computes each query
//    row's dq, and each key row's dk and dv (summed over the query heads of
//    its group), in one thread or warp, so nothing is added from two places.
//
// The same source also builds against the CUDA emulator
// (tests/kernels/cuda_emulator/), which runs these kernels on the CPU in the
// tests: every launch therefore goes through launch() below, and the
// functions this file exports are then in namespace borealis::emulated.
#if defined(BOREALIS_CUDA_EMULATOR)
#include "kernels/cuda_emulator/cuda_emulator.h"
#include "kernels/cuda_emulator/emulated_cuda_backend.h"
#define BOREALIS_CUDA_NAMESPACE borealis::emulated
#else
#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <mma.h>

#include "kernels/cuda/cuda_backend.h"
#define BOREALIS_CUDA_NAMESPACE borealis
#endif

#include <algorithm>
#include <array>
#include <climits>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <initializer_list>
#include <map>
#include <optional>
#include <stdexcept>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "core/text.h"
#include "kernels/adamw_math.h"
#include "kernels/cpu/ops.h"

namespace BOREALIS_CUDA_NAMESPACE {

namespace {

namespace wmma = nvcuda::wmma;

void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess) {
    throw std::runtime_error(std::string("CUDA: ") + what + ": " + cudaGetErrorString(err));
  }
}

// cudaMalloc of `bytes` for `what`: a device too full for it throws
// OutOfDeviceMemory saying how much it has free.
void* device_malloc(std::size_t bytes, const char* what) {
  void* p = nullptr;
  const cudaError_t err = cudaMalloc(&p, bytes);
  if (err == cudaErrorMemoryAllocation) {
    cudaGetLastError();  // not a sticky error: the device goes on
    int device = 0;
    std::size_t free = 0, total = 0;
    std::string message =
        std::string("out of GPU memory: ") + what + " of " + format_bytes(bytes) + " does not fit";
    if (cudaGetDevice(&device) == cudaSuccess && cudaMemGetInfo(&free, &total) == cudaSuccess) {
      message += " on GPU " + std::to_string(device) + ", which has " + format_bytes(free) +
                 " free of " + format_bytes(total);
    }
    throw OutOfDeviceMemory(message, "cuda", bytes);
  }
  check(err, what);
  return p;
}

void check_blas(cublasStatus_t status, const char* what) {
  if (status != CUBLAS_STATUS_SUCCESS) {
    throw std::runtime_error(std::string("cuBLAS: ") + what + ": " + cublasGetStatusString(status));
  }
}

// kernel<<<grid, block>>>(args...), checked at once (a bad configuration
// fails here, not at the next copy). The emulator has its own launch().
#if defined(BOREALIS_CUDA_EMULATOR)
using cuda_emulator::launch;
#else
template <typename... Params, typename... Args>
void launch(const char* what, void (*kernel)(Params...), dim3 grid, dim3 block, Args&&... args) {
  kernel<<<grid, block>>>(std::forward<Args>(args)...);
  check(cudaGetLastError(), what);
}
#endif

// A block's shared memory holds whatever was there before the block (any
// bits): every kernel names its shared arrays here first thing, and on the
// emulator the block's first thread fills them with NaNs, so that a read
// of a value the block has not written shows in the tests' results.
#if defined(BOREALIS_CUDA_EMULATOR)
using cuda_emulator::fresh_shared;
#else
template <typename... T>
__device__ __forceinline__ void fresh_shared(T&...) {}
#endif

constexpr int kThreads = 256;
constexpr int kWarp = 32;
// Rows per block of the column reductions, as the CPU backend's kReduceRows
// (matmul bias) and kNormRows (norm weights): the same summation order.
constexpr int kReduceRows = 64;
constexpr int kNormRows = 32;
// Head dimensions up to kWarp * kMaxPerLane: each lane of a warp holds
// kMaxPerLane elements of a row of q, k, v or the output.
constexpr int kMaxPerLane = 8;
// Buckets of the embedding gradient: block (x, g) owns the vocabulary rows
// congruent to g modulo kTokenBuckets.
constexpr int kTokenBuckets = 32;
// Elements per partial sum of sum_of_squares: the CPU backend's block.
constexpr std::int64_t kSquaresBlock = std::int64_t{1} << 16;

// Blocks of `threads` threads for one thread per element (at least one
// block; at most the grid's limit, past which the grid-stride loops of the
// elementwise kernels take the rest).
unsigned blocks_for(std::int64_t count, int threads = kThreads) {
  const std::int64_t b = (count + threads - 1) / threads;
  return static_cast<unsigned>(std::clamp<std::int64_t>(b, 1, std::int64_t{0x7fffffff}));
}

// A grid-stride loop over elements: this thread's first, and the step.
__device__ std::int64_t first_index() {
  return blockIdx.x * std::int64_t{blockDim.x} + threadIdx.x;
}
__device__ std::int64_t index_stride() {
  return std::int64_t{gridDim.x} * blockDim.x;
}

__device__ float warp_sum(float x) {
  for (int o = kWarp / 2; o > 0; o /= 2) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}

// A softmax's normalizer over some values, as online softmax keeps it: their
// maximum m and the sum s of exp(x - m) (none yet: -infinity and 0). Two
// merge in either order to the same bits (the sum's two terms commute).
struct MaxSum {
  float m;
  float s;
};

__device__ MaxSum merge(MaxSum a, MaxSum b) {
  const float m = fmaxf(a.m, b.m);
  if (m == -INFINITY) return {m, 0.0f};  // (no values on either side)
  return {m, a.s * expf(a.m - m) + b.s * expf(b.m - m)};
}

// x added to a: a rescale when it is the new maximum.
__device__ MaxSum add_value(MaxSum a, float x) {
  if (x > a.m) return {x, a.s * expf(a.m - x) + 1.0f};
  a.s += expf(x - a.m);
  return a;
}

// The value of lane (this lane ^ o) of the warp.
__device__ float shuffle_xor(float x, int o) {
  return __shfl_xor_sync(0xffffffffu, x, o);
}
__device__ MaxSum shuffle_xor(MaxSum x, int o) {
  return {shuffle_xor(x.m, o), shuffle_xor(x.s, o)};
}

// x combined by op over a block of kThreads threads, the same value returned
// to every thread: a butterfly within warps, then one over the warps'
// results (lanes past them start from `none`). shared holds kThreads /
// kWarp values.
template <typename V, typename Op>
__device__ V block_combine(V x, Op op, V none, V* shared) {
  const int lane = threadIdx.x % kWarp;
  const int warp = threadIdx.x / kWarp;
  const auto warp_combine = [&](V v) {
    for (int o = kWarp / 2; o > 0; o /= 2) v = op(v, shuffle_xor(v, o));
    return v;
  };
  x = warp_combine(x);
  __syncthreads();  // shared may still be read by a previous reduction
  if (lane == 0) shared[warp] = x;
  __syncthreads();
  return warp_combine(lane < kThreads / kWarp ? shared[lane] : none);
}

// Sum (or max) over a block (block_combine).
template <bool kMax>
__device__ float block_reduce(float x, float* shared) {
  if (kMax)
    return block_combine(
        x, [](float a, float b) { return fmaxf(a, b); }, -INFINITY, shared);
  return block_combine(
      x, [](float a, float b) { return a + b; }, 0.0f, shared);
}

// ---- elementwise -------------------------------------------------------------

// An op's output element: fp32, or rounded to bf16 (to nearest even). Every
// bf16 value a GEMM reads is stored through here, by to_bf16_kernel's copies
// or by the op that makes it, so an op writing bf16 gives the bits of its
// fp32 output rounded afterwards.
__device__ void store(float* out, float value) {
  *out = value;
}
__device__ void store(__nv_bfloat16* out, float value) {
  *out = __float2bfloat16(value);
}
// An op's input element: fp32, or bf16 (the MLP pre-activation with bf16
// matmul inputs), computed with in fp32.
__device__ float load(const float* in) {
  return *in;
}
__device__ float load(const __nv_bfloat16* in) {
  return __bfloat162float(*in);
}

// 16 bytes of T, for one vector load or store: 8 bf16 or 4 floats.
template <typename T>
struct alignas(16) Pack {
  T v[16 / sizeof(T)];
};
constexpr int kPackBf16 = 8;  // bf16 values per 16 bytes

__host__ __device__ bool aligned16(const void* p) {
  return reinterpret_cast<std::uintptr_t>(p) % 16 == 0;
}

// The 16 bytes at x as one vector access. A GPU stops the kernel where x
// is not 16-byte aligned ("misaligned address"); the emulator, whose CPU
// would not, says so too.
template <typename T>
__device__ Pack<std::remove_const_t<T>>& pack_at(T* x) {
#if defined(BOREALIS_CUDA_EMULATOR)
  if (!aligned16(x)) {
    cuda_emulator::kernel_error("a 16-byte access to memory that is not 16-byte aligned");
  }
#endif
  return *reinterpret_cast<Pack<std::remove_const_t<T>>*>(const_cast<std::remove_const_t<T>*>(x));
}

// The kW values at x as fp32 (kW = 1, or 8 from 16-byte aligned memory:
// one 16-byte load of bf16, two of fp32), and back (rounded as store()
// rounds).
template <int kW, typename I>
__device__ void load_n(float (&out)[kW], const I* x) {
  if constexpr (kW == 1) {
    out[0] = load(x);
  } else {
    static_assert(kW == 8);
    constexpr int kPer = 16 / sizeof(I);
#pragma unroll
    for (int h = 0; h < kW / kPer; ++h) {
      const Pack<I> in = pack_at(x + h * kPer);
#pragma unroll
      for (int k = 0; k < kPer; ++k) out[h * kPer + k] = load(&in.v[k]);
    }
  }
}
template <int kW, typename O>
__device__ void store_n(O* x, const float (&values)[kW]) {
  if constexpr (kW == 1) {
    store(x, values[0]);
  } else {
    static_assert(kW == 8);
    constexpr int kPer = 16 / sizeof(O);
#pragma unroll
    for (int h = 0; h < kW / kPer; ++h) {
      Pack<O> out;
#pragma unroll
      for (int k = 0; k < kPer; ++k) store(&out.v[k], values[h * kPer + k]);
      pack_at(x + h * kPer) = out;
    }
  }
}

// The elements [0, count) of an elementwise op over arrays that may start
// anywhere (a tensor in a flat buffer): [head, head + body) in runs of 8,
// with 16-byte loads and stores, where every array's element head is
// 16-byte aligned (body a multiple of 8); the head before it and the tail
// after it one at a time. Where the arrays' alignments disagree, body is
// 0. The values are the same either way: only the accesses differ.
struct Span {
  std::int64_t count = 0, head = 0, body = 0;

  // The span of count elements of arrays at `arrays`, each {address,
  // element size}.
  static Span of(std::int64_t count, std::initializer_list<std::pair<const void*, int>> arrays) {
    Span s;
    s.count = s.head = count;
    for (std::int64_t h = 0; h < kPackBf16 && h < count; ++h) {
      bool aligned = true;
      for (const auto& [p, size] : arrays) {
        aligned = aligned && (reinterpret_cast<std::uintptr_t>(p) + h * size) % 16 == 0;
      }
      if (aligned) {
        s.head = h;
        s.body = (count - h) / kPackBf16 * kPackBf16;
        break;
      }
    }
    return s;
  }
  // Threads for it: one per run of 8 or element left over.
  unsigned blocks() const {
    return blocks_for(std::max<std::int64_t>(body / kPackBf16, count - body));
  }
};

// f(i, w) for the elements of `span`, this thread's share: w is a
// std::integral_constant of the width (8 or 1) of the run starting at
// element i.
template <typename F>
__device__ void for_each_run(Span span, F f) {
  for (std::int64_t r = first_index() * kPackBf16; r < span.body; r += index_stride() * kPackBf16) {
    f(span.head + r, std::integral_constant<int, kPackBf16>{});
  }
  const std::int64_t rest = span.count - span.body;
  for (std::int64_t r = first_index(); r < rest; r += index_stride()) {
    f(r < span.head ? r : r + span.body, std::integral_constant<int, 1>{});
  }
}

__global__ void fill_kernel(float* out, float value, Span span) {
  for_each_run(span, [&](std::int64_t i, auto w) {
    constexpr int kW = decltype(w)::value;
    float x[kW];
    for (auto& e : x) e = value;
    store_n(out + i, x);
  });
}

__global__ void scale_kernel(float* x, float factor, Span span) {
  for_each_run(span, [&](std::int64_t i, auto w) {
    float v[decltype(w)::value];
    load_n(v, x + i);
    for (auto& e : v) e *= factor;
    store_n(x + i, v);
  });
}

__global__ void add_kernel(float* out, const float* in, Span span) {
  for_each_run(span, [&](std::int64_t i, auto w) {
    constexpr int kW = decltype(w)::value;
    float a[kW], b[kW];
    load_n(a, out + i);
    load_n(b, in + i);
    for (int k = 0; k < kW; ++k) a[k] += b[k];
    store_n(out + i, a);
  });
}

// bf16 copies of fp32 values, for the bf16 GEMMs.
__global__ void to_bf16_kernel(__nv_bfloat16* out, const float* in, Span span) {
  for_each_run(span, [&](std::int64_t i, auto w) {
    float v[decltype(w)::value];
    load_n(v, in + i);
    store_n(out + i, v);
  });
}

__global__ void adamw_kernel(float* params, const float* grads, float* m, float* v, Span span,
                             Backend<float>::AdamWUpdate u) {
  for_each_run(span, [&](std::int64_t i, auto w) {
    constexpr int kW = decltype(w)::value;
    float p[kW], g[kW], mi[kW], vi[kW];
    load_n(p, params + i);
    load_n(g, grads + i);
    load_n(mi, m + i);
    load_n(vi, v + i);
#pragma unroll
    for (int k = 0; k < kW; ++k) {
      adamw_element(p[k], g[k], mi[k], vi[k], u.lr, u.beta1, u.beta2, u.eps, u.weight_decay,
                    u.grad_scale, u.c1, u.c2);
    }
    store_n(params + i, p);
    store_n(m + i, mi);
    store_n(v + i, vi);
  });
}

// partial[b] = sum of x^2 over block b of kSquaresBlock elements, in double.
__global__ void squares_kernel(double* partial, const float* x, std::int64_t count) {
  __shared__ double shared[kThreads];
  fresh_shared(shared);
  const std::int64_t begin = blockIdx.x * kSquaresBlock;
  const std::int64_t end = count < begin + kSquaresBlock ? count : begin + kSquaresBlock;
  double s = 0.0;
  for (std::int64_t i = begin + threadIdx.x; i < end; i += kThreads) {
    s += static_cast<double>(x[i]) * static_cast<double>(x[i]);
  }
  shared[threadIdx.x] = s;
  __syncthreads();
  for (int half = kThreads / 2; half > 0; half /= 2) {
    if (static_cast<int>(threadIdx.x) < half) shared[threadIdx.x] += shared[threadIdx.x + half];
    __syncthreads();
  }
  if (threadIdx.x == 0) partial[blockIdx.x] = shared[0];
}

constexpr float kGeluScale = 0.7978845608028654f;  // sqrt(2 / pi)
constexpr float kGeluCube = 0.044715f;

// The activations, kW consecutive values a thread at a time (kW = 8 where
// every row and pointer allows 16-byte accesses: the launchers'
// vector_width; the values and their math are the same either way).
template <typename O, typename I, int kW>
__global__ void gelu_forward_kernel(O* out, const I* inp, std::int64_t count) {
  for (std::int64_t i = first_index() * kW; i < count; i += index_stride() * kW) {
    float x[kW], y[kW];
    load_n(x, inp + i);
#pragma unroll
    for (int k = 0; k < kW; ++k) {
      const float u = kGeluScale * (x[k] + kGeluCube * x[k] * x[k] * x[k]);
      y[k] = 0.5f * x[k] * (1.0f + tanhf(u));
    }
    store_n(out + i, y);
  }
}

template <typename O, typename I, int kW>
__global__ void gelu_backward_kernel(O* dinp, const I* inp, const float* dout, std::int64_t count) {
  for (std::int64_t i = first_index() * kW; i < count; i += index_stride() * kW) {
    float x[kW], d[kW], y[kW];
    load_n(x, inp + i);
    load_n(d, dout + i);
#pragma unroll
    for (int k = 0; k < kW; ++k) {
      const float u = kGeluScale * (x[k] + kGeluCube * x[k] * x[k] * x[k]);
      const float th = tanhf(u);
      const float du = kGeluScale * (1.0f + 3.0f * kGeluCube * x[k] * x[k]);
      const float grad = 0.5f * (1.0f + th) + 0.5f * x[k] * (1.0f - th * th) * du;
      y[k] = grad * d[k];
    }
    store_n(dinp + i, y);
  }
}

template <typename O, typename I, int kW>
__global__ void swiglu_forward_kernel(O* out, const I* inp, int N, int F) {
  const std::int64_t count = std::int64_t{N} * F;
  for (std::int64_t i = first_index() * kW; i < count; i += index_stride() * kW) {
    const std::int64_t n = i / F;
    const std::int64_t f = i % F;
    float g[kW], u[kW], y[kW];
    load_n(g, inp + n * 2 * F + f);
    load_n(u, inp + n * 2 * F + F + f);
#pragma unroll
    for (int k = 0; k < kW; ++k) y[k] = g[k] / (1.0f + expf(-g[k])) * u[k];
    store_n(out + i, y);
  }
}

template <typename O, typename I, int kW>
__global__ void swiglu_backward_kernel(O* dinp, const I* inp, const float* dout, int N, int F) {
  const std::int64_t count = std::int64_t{N} * F;
  for (std::int64_t i = first_index() * kW; i < count; i += index_stride() * kW) {
    const std::int64_t n = i / F;
    const std::int64_t f = i % F;
    float g[kW], u[kW], d[kW], dg[kW], du[kW];
    load_n(g, inp + n * 2 * F + f);
    load_n(u, inp + n * 2 * F + F + f);
    load_n(d, dout + i);
#pragma unroll
    for (int k = 0; k < kW; ++k) {
      const float sig = 1.0f / (1.0f + expf(-g[k]));
      dg[k] = d[k] * u[k] * sig * (1.0f + g[k] * (1.0f - sig));
      du[k] = d[k] * g[k] * sig;
    }
    store_n(dinp + n * 2 * F + f, dg);
    store_n(dinp + n * 2 * F + F + f, du);
  }
}

// Rotates the q and k heads of rows [0, rows) of a packed qkv buffer; row n
// is position pos0 + n % seq of the table (cos_t, sin_t: [positions][HD/2]).
// out = qkv with its q and k heads rotated: in place (out == qkv), or
// into a bf16 copy of whole rows (v heads rounded as they are).
template <typename O>
__global__ void rope_kernel(const float* qkv, O* out, const float* cos_t, const float* sin_t,
                            int rows, int seq, int pos0, int NH, int NKV, int HD, float sign) {
  const int half = HD / 2;
  const int heads = NH + NKV;
  const int stride = (NH + 2 * NKV) * HD;
  const std::int64_t count = std::int64_t{rows} * heads * half;
  for (std::int64_t idx = first_index(); idx < count; idx += index_stride()) {
    const int i = static_cast<int>(idx % half);
    const int h = static_cast<int>((idx / half) % heads);
    const std::int64_t n = idx / (std::int64_t{half} * heads);
    const std::int64_t t = pos0 + n % seq;
    const float c = cos_t[t * half + i];
    const float s = sign * sin_t[t * half + i];
    const std::int64_t at = n * stride + std::int64_t{h} * HD;
    const float x1 = qkv[at + i];
    const float x2 = qkv[at + i + half];
    store(out + at + i, x1 * c - x2 * s);
    store(out + at + i + half, x2 * c + x1 * s);
  }
  if constexpr (!std::is_same_v<O, float>) {
    const int vwidth = NKV * HD;
    const std::int64_t values = std::int64_t{rows} * vwidth;
    for (std::int64_t idx = first_index(); idx < values; idx += index_stride()) {
      const std::int64_t at = idx / vwidth * stride + std::int64_t{heads} * HD + idx % vwidth;
      store(out + at, qkv[at]);
    }
  }
}

// ---- embeddings --------------------------------------------------------------

__global__ void embedding_forward_kernel(float* out, const std::int32_t* tokens, const float* wte,
                                         int v0, int rows, const float* wpe, int N, int seq,
                                         int C) {
  const std::int64_t count = std::int64_t{N} * C;
  for (std::int64_t i = first_index(); i < count; i += index_stride()) {
    const std::int64_t n = i / C;
    const std::int64_t c = i % C;
    const std::int64_t row = static_cast<std::int64_t>(tokens[n]) - v0;
    const bool inside = row >= 0 && row < rows;
    if (wpe != nullptr) {
      const float p = wpe[(n % seq) * C + c];
      out[i] = inside ? wte[row * C + c] + p : p;
    } else {
      out[i] = inside ? wte[row * C + c] : 0.0f;
    }
  }
}

// Block (x, g): channels [x * kThreads, ...) of the vocabulary rows r with
// r % kTokenBuckets == g, walking the tokens in order (the CPU order).
__global__ void embedding_backward_wte_kernel(float* dwte, const float* dout,
                                              const std::int32_t* tokens, int v0, int rows, int N,
                                              int C) {
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= C) return;
  const int bucket = blockIdx.y;
  for (int n = 0; n < N; ++n) {
    const std::int64_t row = static_cast<std::int64_t>(tokens[n]) - v0;
    if (row < 0 || row >= rows || row % kTokenBuckets != bucket) continue;
    dwte[row * C + c] += dout[std::int64_t{n} * C + c];
  }
}

__global__ void embedding_backward_wpe_kernel(float* dwpe, const float* dout, int N, int seq,
                                              int C) {
  const std::int64_t count = std::int64_t{seq} * C;
  const int batches = N / seq;
  for (std::int64_t i = first_index(); i < count; i += index_stride()) {
    const std::int64_t t = i / C;
    const std::int64_t c = i % C;
    float s = dwpe[i];
    for (int b = 0; b < batches; ++b) s += dout[(std::int64_t{b} * seq + t) * C + c];
    dwpe[i] = s;
  }
}

// ---- column reductions (parameter gradients over rows) -----------------------

// partial[blk][c] = sum over rows of block blk (kRows rows) of x[n][c] (fp32
// or bf16 values, summed in fp32).
template <int kRows, typename I>
__global__ void column_partial_kernel(float* partial, const I* x, int N, int C) {
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= C) return;
  for (int blk = blockIdx.y; blk * kRows < N; blk += gridDim.y) {
    const int end = min(N, (blk + 1) * kRows);
    float s = 0.0f;
    for (int n = blk * kRows; n < end; ++n) s += load(x + std::int64_t{n} * C + c);
    partial[std::int64_t{blk} * C + c] = s;
  }
}

// out[c] += sum over blocks in order of partial[blk][c].
__global__ void column_finish_kernel(float* out, const float* partial, int blocks, int C) {
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= C) return;
  float s = 0.0f;
  for (int b = 0; b < blocks; ++b) s += partial[std::int64_t{b} * C + c];
  out[c] += s;
}

__global__ void add_bias_kernel(float* out, const float* bias, int N, int OC, bool accumulate) {
  const std::int64_t count = std::int64_t{N} * OC;
  for (std::int64_t i = first_index(); i < count; i += index_stride()) {
    const float b = bias[i % OC];
    out[i] = accumulate ? out[i] + b : b;
  }
}

// One warp per output element: lanes take every 32nd input channel and the
// warp sums them with a fixed tree, the same arithmetic for any N.
__global__ void matmul_rowwise_kernel(float* out, const float* inp, const float* w,
                                      const float* bias, int N, int C, int OC, bool accumulate) {
  const std::int64_t warp = (blockIdx.x * std::int64_t{blockDim.x} + threadIdx.x) / kWarp;
  const int lane = threadIdx.x % kWarp;
  if (warp >= std::int64_t{N} * OC) return;
  const std::int64_t n = warp / OC;
  const std::int64_t o = warp % OC;
  const float* x = inp + n * C;
  const float* wr = w + o * C;
  float s = 0.0f;
  for (int c = lane; c < C; c += kWarp) s += x[c] * wr[c];
  s = warp_sum(s);
  if (lane == 0) {
    if (bias != nullptr) s += bias[o];
    out[warp] = accumulate ? out[warp] + s : s;
  }
}

// ---- norms -------------------------------------------------------------------

// A warp's walk over a row of C values, 8 consecutive ones a lane at a
// time (lane l takes 8l to 8l + 7, then those 256 further on, ...):
// f(c, w) for each, w a std::integral_constant of the access width. With
// kVec (C a multiple of 8, every row 16-byte aligned), one call per run of
// 8 (16-byte accesses); else one per value of the run inside the row. The
// same values in the same order either way, so the same sums.
template <bool kVec, typename F>
__device__ void for_row_runs(int C, F f) {
  for (int c0 = static_cast<int>(threadIdx.x % kWarp) * kPackBf16; c0 < C;
       c0 += kWarp * kPackBf16) {
    if constexpr (kVec) {
      f(c0, std::integral_constant<int, kPackBf16>{});
    } else {
      for (int c = c0; c < c0 + kPackBf16 && c < C; ++c) f(c, std::integral_constant<int, 1>{});
    }
  }
}

// One warp per row.
template <typename O, bool kVec>
__global__ void layernorm_forward_kernel(O* out, float* mean, float* rstd, const float* inp,
                                         const float* w, const float* b, int N, int C, float eps) {
  const std::int64_t n = (blockIdx.x * std::int64_t{blockDim.x} + threadIdx.x) / kWarp;
  const int lane = threadIdx.x % kWarp;
  if (n >= N) return;
  const float* x = inp + n * C;
  float s = 0.0f;
  for_row_runs<kVec>(C, [&](int c, auto width) {
    float v[decltype(width)::value];
    load_n(v, x + c);
    for (const float e : v) s += e;
  });
  const float m = warp_sum(s) / C;
  float var = 0.0f;
  for_row_runs<kVec>(C, [&](int c, auto width) {
    float v[decltype(width)::value];
    load_n(v, x + c);
    for (const float e : v) var += (e - m) * (e - m);
  });
  const float r = rsqrtf(warp_sum(var) / C + eps);
  O* o = out + n * C;
  for_row_runs<kVec>(C, [&](int c, auto width) {
    constexpr int kW = decltype(width)::value;
    float v[kW], wv[kW], bv[kW];
    load_n(v, x + c);
    load_n(wv, w + c);
    load_n(bv, b + c);
    for (int k = 0; k < kW; ++k) v[k] = (v[k] - m) * r * wv[k] + bv[k];
    store_n(o + c, v);
  });
  if (lane == 0) {
    mean[n] = m;
    rstd[n] = r;
  }
}

// dinp += ..., one warp per row (the weight gradients are column
// reductions). LayerNorm's with mean, RMSNorm's with mean null (no centring).
// dinp16, when not null, gets the resulting dinp rounded to bf16.
template <bool kVec>
__global__ void norm_backward_input_kernel(float* dinp, __nv_bfloat16* dinp16, const float* dout,
                                           const float* inp, const float* w, const float* mean,
                                           const float* rstd, int N, int C) {
  const std::int64_t n = (blockIdx.x * std::int64_t{blockDim.x} + threadIdx.x) / kWarp;
  if (n >= N) return;
  const float* x = inp + n * C;
  const float* g = dout + n * C;
  float* dx = dinp + n * C;
  const float m = mean != nullptr ? mean[n] : 0.0f;
  const float r = rstd[n];
  float gm = 0.0f, gnm = 0.0f;
  for_row_runs<kVec>(C, [&](int c, auto width) {
    constexpr int kW = decltype(width)::value;
    float xv[kW], gv[kW], wv[kW];
    load_n(xv, x + c);
    load_n(gv, g + c);
    load_n(wv, w + c);
    for (int k = 0; k < kW; ++k) {
      const float dnorm = gv[k] * wv[k];
      gm += dnorm;
      gnm += dnorm * (xv[k] - m) * r;
    }
  });
  gm = mean != nullptr ? warp_sum(gm) / C : 0.0f;
  gnm = warp_sum(gnm) / C;
  for_row_runs<kVec>(C, [&](int c, auto width) {
    constexpr int kW = decltype(width)::value;
    float xv[kW], gv[kW], wv[kW], d[kW];
    load_n(xv, x + c);
    load_n(gv, g + c);
    load_n(wv, w + c);
    load_n(d, dx + c);
    for (int k = 0; k < kW; ++k) {
      const float norm = (xv[k] - m) * r;
      d[k] += (gv[k] * wv[k] - gm - norm * gnm) * r;
    }
    store_n(dx + c, d);
    if (dinp16 != nullptr) store_n(dinp16 + n * C + c, d);
  });
}

// Partial weight (and bias) gradients per block of kNormRows rows: pdw gets
// dout * normalized input, pdb dout. mean is null for RMSNorm (no centring,
// no bias).
__global__ void norm_weight_partial_kernel(float* pdw, float* pdb, const float* dout,
                                           const float* inp, const float* mean, const float* rstd,
                                           int N, int C) {
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= C) return;
  for (int blk = blockIdx.y; blk * kNormRows < N; blk += gridDim.y) {
    const int end = min(N, (blk + 1) * kNormRows);
    float sw = 0.0f, sb = 0.0f;
    for (int n = blk * kNormRows; n < end; ++n) {
      const std::int64_t i = std::int64_t{n} * C + c;
      const float m = mean != nullptr ? mean[n] : 0.0f;
      sw += dout[i] * ((inp[i] - m) * rstd[n]);
      sb += dout[i];
    }
    pdw[std::int64_t{blk} * C + c] = sw;
    if (pdb != nullptr) pdb[std::int64_t{blk} * C + c] = sb;
  }
}

template <typename O, bool kVec>
__global__ void rmsnorm_forward_kernel(O* out, float* rstd, const float* inp, const float* w, int N,
                                       int C, float eps) {
  const std::int64_t n = (blockIdx.x * std::int64_t{blockDim.x} + threadIdx.x) / kWarp;
  const int lane = threadIdx.x % kWarp;
  if (n >= N) return;
  const float* x = inp + n * C;
  float ss = 0.0f;
  for_row_runs<kVec>(C, [&](int c, auto width) {
    float v[decltype(width)::value];
    load_n(v, x + c);
    for (const float e : v) ss += e * e;
  });
  const float r = rsqrtf(warp_sum(ss) / C + eps);
  O* o = out + n * C;
  for_row_runs<kVec>(C, [&](int c, auto width) {
    constexpr int kW = decltype(width)::value;
    float v[kW], wv[kW];
    load_n(v, x + c);
    load_n(wv, w + c);
    for (int k = 0; k < kW; ++k) v[k] = v[k] * r * wv[k];
    store_n(o + c, v);
  });
  if (lane == 0) rstd[n] = r;
}

// ---- attention ---------------------------------------------------------------

// A warp's share of one row of HD elements: lane l holds elements l, l + 32,
// ... (kMaxPerLane of them, zero past HD).
struct Lanes {
  float v[kMaxPerLane];
};

__device__ Lanes load_lanes(const float* row, int HD, int lane) {
  Lanes r;
#pragma unroll
  for (int k = 0; k < kMaxPerLane; ++k) {
    const int d = lane + k * kWarp;
    r.v[k] = d < HD ? row[d] : 0.0f;
  }
  return r;
}

__device__ Lanes zero_lanes() {
  Lanes r;
#pragma unroll
  for (int k = 0; k < kMaxPerLane; ++k) r.v[k] = 0.0f;
  return r;
}

// The row (all lanes) dot a row in memory.
__device__ float dot_lanes(const Lanes& a, const float* row, int HD, int lane) {
  float s = 0.0f;
#pragma unroll
  for (int k = 0; k < kMaxPerLane; ++k) {
    const int d = lane + k * kWarp;
    if (d < HD) s += a.v[k] * row[d];
  }
  return warp_sum(s);
}

// acc = acc * keep + factor * row.
__device__ void axpy_lanes(Lanes& acc, float keep, float factor, const float* row, int HD,
                           int lane) {
#pragma unroll
  for (int k = 0; k < kMaxPerLane; ++k) {
    const int d = lane + k * kWarp;
    acc.v[k] = acc.v[k] * keep + (d < HD ? factor * row[d] : 0.0f);
  }
}

__device__ void store_lanes(float* row, const Lanes& a, float factor, int HD, int lane) {
#pragma unroll
  for (int k = 0; k < kMaxPerLane; ++k) {
    const int d = lane + k * kWarp;
    if (d < HD) row[d] = factor * a.v[k];
  }
}

// Softmax-weighted sum of value rows over keys seen one at a time (the
// online softmax of FlashAttention): after all keys, out = acc / l and the
// log-sum-exp is mx + log(l).
struct OnlineSoftmax {
  Lanes acc = zero_lanes();
  float mx = -INFINITY, l = 0.0f;
  __device__ void add(float score, const float* value, int HD, int lane) {
    const float mnew = fmaxf(mx, score);
    const float corr = expf(mx - mnew);
    const float p = expf(score - mnew);
    l = l * corr + p;
    axpy_lanes(acc, corr, p, value, HD, lane);
    mx = mnew;
  }
};

// The (batch, head, row) of a warp's task over rows of `seq` positions and
// `heads` heads, and the lane.
struct RowTask {
  std::int64_t task, b;
  int head, row, lane;
};

__device__ RowTask row_task(int seq, int heads) {
  RowTask t;
  t.task = (blockIdx.x * std::int64_t{blockDim.x} + threadIdx.x) / kWarp;
  t.lane = static_cast<int>(threadIdx.x % kWarp);
  t.row = static_cast<int>(t.task % seq);
  t.head = static_cast<int>((t.task / seq) % heads);
  t.b = t.task / (std::int64_t{seq} * heads);
  return t;
}

// A warp's query row of the packed qkv buffer: its task (valid: one of the
// B * NH * seq rows), the row stride S, the kv head g of its head, the
// sequence's first row and the row's q head (loaded for valid tasks only).
struct QueryRow {
  RowTask t;
  bool valid;
  int S, g;
  const float* base;
  Lanes q;
};

__device__ QueryRow query_row(const float* qkv, int B, int seq, int NH, int NKV, int HD) {
  QueryRow r;
  r.t = row_task(seq, NH);
  r.valid = r.t.task < std::int64_t{B} * NH * seq;
  r.S = (NH + 2 * NKV) * HD;
  r.g = r.t.head / (NH / NKV);
  r.base = qkv + r.t.b * seq * r.S;
  r.q = r.valid ? load_lanes(r.base + std::int64_t{r.t.row} * r.S + std::int64_t{r.t.head} * HD, HD,
                             r.t.lane)
                : zero_lanes();
  return r;
}

// One warp per (b, h, query row i): an online softmax over keys 0..i.
__global__ void attention_forward_kernel(float* out, float* lse, const float* qkv, int B, int seq,
                                         int NH, int NKV, int HD, float scale) {
  const QueryRow r = query_row(qkv, B, seq, NH, NKV, HD);
  if (!r.valid) return;
  const RowTask& t = r.t;
  const int S = r.S, C = NH * HD, g = r.g;
  const float* base = r.base;
  const Lanes& q = r.q;
  OnlineSoftmax sm;
  for (int j = 0; j <= t.row; ++j) {
    const float* kr = base + std::int64_t{j} * S + C + std::int64_t{g} * HD;
    sm.add(scale * dot_lanes(q, kr, HD, t.lane), kr + std::int64_t{NKV} * HD, HD, t.lane);
  }
  store_lanes(out + (t.b * seq + t.row) * C + std::int64_t{t.head} * HD, sm.acc, 1.0f / sm.l, HD,
              t.lane);
  if (t.lane == 0) lse[t.task] = sm.mx + logf(sm.l);
}

// delta[b, h, i] = dout_i . out_i (one warp per row).
// An attention operand as delta's products take it: fp32 as it is, or
// (kRound: the tensor-core kernels, whose products read dout and the
// output in bf16) rounded to bf16; a bf16 value as it is.
template <bool kRound>
__device__ float operand(const float* p) {
  return kRound ? __bfloat162float(__float2bfloat16(*p)) : *p;
}
template <bool kRound>
__device__ float operand(const __nv_bfloat16* p) {
  return __bfloat162float(*p);
}

// delta[row] = dout_row . out_row over the HD elements of one (token, head)
// row, one warp per row (lane l sums elements l, l + 32, ..., then the warp
// sums the lanes): dout and out in fp32 or bf16.
template <bool kRound, typename D, typename O>
__global__ void attention_delta_kernel(float* delta, const D* dout, const O* out, int B, int seq,
                                       int NH, int HD) {
  const RowTask t = row_task(seq, NH);
  if (t.task >= std::int64_t{B} * NH * seq) return;
  const std::int64_t at = (t.b * seq + t.row) * NH * HD + std::int64_t{t.head} * HD;
  float s = 0.0f;
  for (int d = t.lane; d < HD; d += kWarp) {
    s += operand<kRound>(dout + at + d) * operand<kRound>(out + at + d);
  }
  s = warp_sum(s);
  if (t.lane == 0) delta[t.task] = s;
}

// dq of one query row per warp: dq_i = scale * sum_j p_ij (dp_ij - delta_i) k_j.
__global__ void attention_dq_kernel(float* dqkv, const float* dout, const float* qkv,
                                    const float* lse, const float* delta, int B, int seq, int NH,
                                    int NKV, int HD, float scale) {
  const QueryRow r = query_row(qkv, B, seq, NH, NKV, HD);
  if (!r.valid) return;
  const RowTask& t = r.t;
  const int S = r.S, C = NH * HD, g = r.g;
  const float* base = r.base;
  const Lanes& q = r.q;
  const Lanes d_o =
      load_lanes(dout + (t.b * seq + t.row) * C + std::int64_t{t.head} * HD, HD, t.lane);
  Lanes dq = zero_lanes();
  const float l = lse[t.task];
  const float dl = delta[t.task];
  for (int j = 0; j <= t.row; ++j) {
    const float* kr = base + std::int64_t{j} * S + C + std::int64_t{g} * HD;
    const float p = expf(scale * dot_lanes(q, kr, HD, t.lane) - l);
    const float ds = p * (dot_lanes(d_o, kr + std::int64_t{NKV} * HD, HD, t.lane) - dl);
    axpy_lanes(dq, 1.0f, ds, kr, HD, t.lane);
  }
  store_lanes(dqkv + (t.b * seq + t.row) * S + std::int64_t{t.head} * HD, dq, scale, HD, t.lane);
}

// dk and dv of one key row of kv head g per warp, summed over the group's
// query heads and the query rows i >= j, in that order.
__global__ void attention_dkv_kernel(float* dqkv, const float* dout, const float* qkv,
                                     const float* lse, const float* delta, int B, int seq, int NH,
                                     int NKV, int HD, float scale) {
  const RowTask t = row_task(seq, NKV);  // head: the kv head, row: the key row j
  if (t.task >= std::int64_t{B} * NKV * seq) return;
  const int S = (NH + 2 * NKV) * HD;
  const int C = NH * HD;
  const int group = NH / NKV;
  const float* base = qkv + t.b * seq * S;
  const float* kv = base + std::int64_t{t.row} * S + C + std::int64_t{t.head} * HD;
  const Lanes kj = load_lanes(kv, HD, t.lane);
  const Lanes vj = load_lanes(kv + std::int64_t{NKV} * HD, HD, t.lane);
  Lanes dk = zero_lanes(), dv = zero_lanes();
  for (int h = t.head * group; h < (t.head + 1) * group; ++h) {
    const std::int64_t row = (t.b * NH + h) * seq;
    for (int i = t.row; i < seq; ++i) {
      const float* qr = base + std::int64_t{i} * S + std::int64_t{h} * HD;
      const float* dr = dout + (t.b * seq + i) * C + std::int64_t{h} * HD;
      const float p = expf(scale * dot_lanes(kj, qr, HD, t.lane) - lse[row + i]);
      const float ds = p * (dot_lanes(vj, dr, HD, t.lane) - delta[row + i]);
      axpy_lanes(dk, 1.0f, ds, qr, HD, t.lane);
      axpy_lanes(dv, 1.0f, p, dr, HD, t.lane);
    }
  }
  float* dkr = dqkv + (t.b * seq + t.row) * S + C + std::int64_t{t.head} * HD;
  store_lanes(dkr, dk, scale, HD, t.lane);
  store_lanes(dkr + std::int64_t{NKV} * HD, dv, 1.0f, HD, t.lane);
}

// ---- tiled (flash) attention -------------------------------------------------
//
// FlashAttention-2's schedule in fp32, for head dimensions up to kMaxHD (64
// or 128; the warp-per-row kernels above take larger ones): one to four
// threads per row (RowSplit: as many as keep a thread's share of the row in
// registers), keys or queries staged tile by tile in shared memory and read
// there by every thread of the block at once, so K and V are read from
// global memory once per tile of rows instead of once per row.
//  - forward: a block per tile of kFlashRows query rows of one (b, h); per
//    key tile, each row's scores, one rescale of its accumulator, then the
//    weighted values (the online softmax per tile);
//  - backward, dq: a block per tile of query rows, as forward, with
//    dq_i = scale sum_j p_ij (dp_ij - delta_i) k_j;
//  - backward, dk and dv: a block per tile of key rows of one kv head g,
//    over the group's query heads and the query rows i >= j in tiles, in
//    that order (each key row's sums in its own threads: no atomics).
// Rows past the sequence take part in staging, barriers and shuffles, and
// add nothing.
// A block of `rows` query rows of one (sequence b, head h) (blockIdx.x: the
// block of rows, blockIdx.y: b * NH + h), and, for the tensor-core kernels
// (a warp per 16 rows), this lane's place in it: its warp's 16 rows from w0,
// its row i (row of the warp's 16) and half of the columns; the packed qkv sequence (base, row
// stride S), the kv head g, the attention output width C, and the head dimension rounded up to a
// tile.
// (In: the type qkv is kept in, float or bf16.)
template <typename In>
struct QueryRows {
  int warp, row, half, h, g, C, kdim, q0, w0, i;
  std::int64_t bh, b, S;
  const In* base;
};

template <typename In>
__device__ QueryRows<In> query_rows(const In* qkv, int rows, int seq, int NH, int NKV, int HD) {
  QueryRows<In> t;
  t.warp = static_cast<int>(threadIdx.x / 32);
  const int lane = static_cast<int>(threadIdx.x % 32);
  t.row = lane / 2;
  t.half = lane % 2;
  t.bh = blockIdx.y;
  t.h = static_cast<int>(t.bh % NH);
  t.b = t.bh / NH;
  t.g = t.h / (NH / NKV);
  t.S = std::int64_t{NH + 2 * NKV} * HD;
  t.C = NH * HD;
  t.kdim = (HD + 15) / 16 * 16;
  t.base = qkv + t.b * seq * t.S;
  t.q0 = static_cast<int>(blockIdx.x) * rows;
  t.w0 = t.q0 + t.warp * 16;
  t.i = t.w0 + t.row;
  return t;
}

constexpr int kFlashRows = 64;  // query rows per forward and dq block (threads)
constexpr int kFlashKeys = 32;  // keys per shared-memory tile (forward, dq)

// Stages rows [r0, r0 + rows) of a packed qkv sequence (base, row stride
// S), columns [col, col + HD) into tile[rows][ld], and (when tile2 is not
// null) columns [col2, col2 + HD) into tile2; rows past the sequence are
// zeros. Called by all threads of the block; `threads` is the block size.
__device__ void stage_rows(float* tile, float* tile2, int ld, const float* base, std::int64_t S,
                           int col, int col2, int r0, int rows, int seq, int HD, int threads) {
  for (int e = threadIdx.x; e < rows * HD; e += threads) {
    const int r = e / HD, d = e % HD;
    const bool in = r0 + r < seq;
    const float* row = base + std::int64_t{r0 + r} * S;
    tile[r * ld + d] = in ? row[col + d] : 0.0f;
    if (tile2 != nullptr) tile2[r * ld + d] = in ? row[col2 + d] : 0.0f;
  }
}

// Threads a row takes in the tiled fp32 kernels: each holds kPer of the
// row's columns in registers, few enough that nothing spills (ptxas; the
// kernel_resources test). Thread `part` of a row's kSplit holds columns
// part, part + kSplit, ...: the kSplit threads of a row read consecutive
// words of a staged row at once (no bank conflict), and sum their parts of
// a dot product with group_sum.
template <int kMaxHD, int kCols>
struct RowSplit {
  static constexpr int kSplit = kMaxHD > kCols ? kMaxHD / kCols : 1;
  static constexpr int kPer = kMaxHD / kSplit;
};
constexpr int kForwardCols = 64;  // q and the accumulator: 2 x 64 floats
constexpr int kDqCols = 32;       // q, the output gradient and dq: 3 x 32
constexpr int kDkvCols = 64;      // dk and dv: 2 x 64

// x summed over the kSplit consecutive lanes of a row, a butterfly that
// gives each of them the same bits (the sums' two terms commute). Every lane
// of the warp must call it.
template <int kSplit>
__device__ float group_sum(float x) {
#pragma unroll
  for (int o = 1; o < kSplit; o *= 2) x += shuffle_xor(x, o);
  return x;
}

// The row of a block's tiled kernel that thread t serves (kSplit threads a
// row), its part of the columns, and the first and last rows of its warp
// (whose lanes skip tiles together: group_sum needs every lane).
struct SplitRow {
  int row, part, warp_first, warp_last;
};
template <int kSplit>
__device__ SplitRow split_row(int first_row) {
  const int t = static_cast<int>(threadIdx.x);
  const int w0 = t / kWarp * kWarp;
  return {first_row + t / kSplit, t % kSplit, first_row + w0 / kSplit,
          first_row + (w0 + kWarp - 1) / kSplit};
}

template <int kMaxHD>
__global__ void flash_forward_kernel(float* out, float* lse, const float* qkv, int seq, int NH,
                                     int NKV, int HD, float scale) {
  constexpr int kSplit = RowSplit<kMaxHD, kForwardCols>::kSplit;
  constexpr int kPer = RowSplit<kMaxHD, kForwardCols>::kPer;
  __shared__ float ks[kFlashKeys * kMaxHD];
  __shared__ float vs[kFlashKeys * kMaxHD];
  fresh_shared(ks, vs);
  const auto at = query_rows(qkv, kFlashRows, seq, NH, NKV, HD);
  const int h = at.h, g = at.g, C = at.C, q0 = at.q0;
  const std::int64_t bh = at.bh, b = at.b, S = at.S;
  const float* base = at.base;
  const auto sr = split_row<kSplit>(q0);
  const int i = sr.row, part = sr.part;
  const bool valid = i < seq;
  float q[kPer], acc[kPer];
#pragma unroll
  for (int k = 0; k < kPer; ++k) {
    const int d = k * kSplit + part;
    q[k] = valid && d < HD ? base[i * S + std::int64_t{h} * HD + d] : 0.0f;
    acc[k] = 0.0f;
  }
  float m = -INFINITY, l = 0.0f;
  const int keys = min(seq, q0 + kFlashRows);
  for (int j0 = 0; j0 < keys; j0 += kFlashKeys) {
    __syncthreads();  // every thread is done with the previous tile
    stage_rows(ks, vs, kMaxHD, base, S, C + g * HD, C + (NKV + g) * HD, j0, kFlashKeys, seq, HD,
               kFlashRows * kSplit);
    __syncthreads();
    // A row's threads skip a tile together: alone (one thread a row), or
    // with the warp (a group_sum needs every lane).
    if (kSplit == 1 ? !valid || j0 > i : j0 > sr.warp_last) continue;
    // Keys j0 .. j0 + n - 1 are at or before i (none past the sequence).
    const int n = valid ? max(0, min(kFlashKeys, i - j0 + 1)) : 0;
    float s[kFlashKeys];
    float mt = m;
#pragma unroll
    for (int r = 0; r < kFlashKeys; ++r) {
      float dot = 0.0f;
      if (kSplit > 1 || r < n) {  // (a split row's threads all take each group_sum)
#pragma unroll
        for (int k = 0; k < kPer; ++k) {
          const int d = k * kSplit + part;
          if (d < HD) dot += q[k] * ks[r * kMaxHD + d];
        }
      }
      dot = group_sum<kSplit>(dot);
      if (r < n) mt = fmaxf(mt, scale * dot);
      s[r] = scale * dot;
    }
    if (kSplit > 1 && n == 0) continue;  // (one thread a row: n >= 1 here)
    const float corr = expf(m - mt);     // 0 for the first tile (m = -inf)
    l *= corr;
#pragma unroll
    for (int k = 0; k < kPer; ++k) acc[k] *= corr;
#pragma unroll
    for (int r = 0; r < kFlashKeys; ++r) {
      if (r < n) {
        const float p = expf(s[r] - mt);
        l += p;
#pragma unroll
        for (int k = 0; k < kPer; ++k) {
          const int d = k * kSplit + part;
          if (d < HD) acc[k] += p * vs[r * kMaxHD + d];
        }
      }
    }
    m = mt;
  }
  if (!valid) return;
  float* o = out + (b * seq + i) * C + std::int64_t{h} * HD;
#pragma unroll
  for (int k = 0; k < kPer; ++k) {
    const int d = k * kSplit + part;
    if (d < HD) o[d] = acc[k] / l;
  }
  if (part == 0) lse[std::int64_t{bh} * seq + i] = m + logf(l);
}

template <int kMaxHD>
__global__ void flash_dq_kernel(float* dqkv, const float* dout, const float* qkv, const float* lse,
                                const float* delta, int seq, int NH, int NKV, int HD, float scale) {
  constexpr int kSplit = RowSplit<kMaxHD, kDqCols>::kSplit;
  constexpr int kPer = RowSplit<kMaxHD, kDqCols>::kPer;
  __shared__ float ks[kFlashKeys * kMaxHD];
  __shared__ float vs[kFlashKeys * kMaxHD];
  fresh_shared(ks, vs);
  const auto at = query_rows(qkv, kFlashRows, seq, NH, NKV, HD);
  const int h = at.h, g = at.g, C = at.C, q0 = at.q0;
  const std::int64_t bh = at.bh, b = at.b, S = at.S;
  const float* base = at.base;
  const auto sr = split_row<kSplit>(q0);
  const int i = sr.row, part = sr.part;
  const bool valid = i < seq;
  float q[kPer], d_o[kPer], dq[kPer];
  const float* dor = dout + (b * seq + (valid ? i : 0)) * C + std::int64_t{h} * HD;
#pragma unroll
  for (int k = 0; k < kPer; ++k) {
    const int d = k * kSplit + part;
    q[k] = valid && d < HD ? base[i * S + std::int64_t{h} * HD + d] : 0.0f;
    d_o[k] = valid && d < HD ? dor[d] : 0.0f;
    dq[k] = 0.0f;
  }
  const float l = valid ? lse[std::int64_t{bh} * seq + i] : 0.0f;
  const float dl = valid ? delta[std::int64_t{bh} * seq + i] : 0.0f;
  const int keys = min(seq, q0 + kFlashRows);
  for (int j0 = 0; j0 < keys; j0 += kFlashKeys) {
    __syncthreads();
    stage_rows(ks, vs, kMaxHD, base, S, C + g * HD, C + (NKV + g) * HD, j0, kFlashKeys, seq, HD,
               kFlashRows * kSplit);
    __syncthreads();
    if (j0 > sr.warp_last) continue;
    // This row's keys (n, as in the forward) and its warp's (the last
    // row's; zeros staged past the sequence).
    const int n = valid ? max(0, min(kFlashKeys, i - j0 + 1)) : 0;
    const int warp_keys = min(kFlashKeys, sr.warp_last - j0 + 1);
#pragma unroll 4
    for (int r = 0; r < warp_keys; ++r) {
      const float* kr = ks + r * kMaxHD;
      const float* vr = vs + r * kMaxHD;
      float dot = 0.0f, dp = 0.0f;
#pragma unroll
      for (int k = 0; k < kPer; ++k) {
        const int d = k * kSplit + part;
        if (d < HD) {
          dot += q[k] * kr[d];
          dp += d_o[k] * vr[d];
        }
      }
      dot = group_sum<kSplit>(dot);
      dp = group_sum<kSplit>(dp);
      if (r >= n) continue;
      const float ds = expf(scale * dot - l) * (dp - dl);
#pragma unroll
      for (int k = 0; k < kPer; ++k) {
        const int d = k * kSplit + part;
        if (d < HD) dq[k] += ds * kr[d];
      }
    }
  }
  if (!valid) return;
  float* dqr = dqkv + (b * seq + i) * S + std::int64_t{h} * HD;
#pragma unroll
  for (int k = 0; k < kPer; ++k) {
    const int d = k * kSplit + part;
    if (d < HD) dqr[d] = scale * dq[k];
  }
}

// Key rows per dk/dv block and query rows per staged tile: each key row's
// own key and value rows (rows kSplit floats apart more than the head
// dimension, against bank conflicts) and the staged query and
// output-gradient rows fit in 48 KB of shared memory.
template <int kMaxHD>
struct FlashKv {
  static constexpr int kSplit = RowSplit<kMaxHD, kDkvCols>::kSplit;
  static constexpr int kPer = RowSplit<kMaxHD, kDkvCols>::kPer;
  static constexpr int kKeys = 4096 / kMaxHD;     // 64 or 32
  static constexpr int kBlock = kKeys * kSplit;   // threads: 64
  static constexpr int kQueries = 1024 / kMaxHD;  // 16 or 8
  static constexpr int kLd = kMaxHD + kSplit;
};

template <int kMaxHD>
__global__ void flash_dkv_kernel(float* dqkv, const float* dout, const float* qkv, const float* lse,
                                 const float* delta, int seq, int NH, int NKV, int HD,
                                 float scale) {
  using T = FlashKv<kMaxHD>;
  constexpr int kSplit = T::kSplit, kPer = T::kPer;
  __shared__ float kown[T::kKeys * T::kLd];
  __shared__ float vown[T::kKeys * T::kLd];
  __shared__ float qs[T::kQueries * kMaxHD];
  __shared__ float dos[T::kQueries * kMaxHD];
  __shared__ float ls[T::kQueries];
  __shared__ float dls[T::kQueries];
  fresh_shared(kown, vown, qs, dos, ls, dls);
  const int bg = blockIdx.y;  // b * NKV + g
  const int g = bg % NKV;
  const std::int64_t b = bg / NKV;
  const int group = NH / NKV;
  const std::int64_t S = std::int64_t{NH + 2 * NKV} * HD;
  const int C = NH * HD;
  const float* base = qkv + b * seq * S;
  const int k0 = blockIdx.x * T::kKeys;
  const auto sr = split_row<kSplit>(k0);
  const int j = sr.row, part = sr.part;
  const bool valid = j < seq;
  stage_rows(kown, vown, T::kLd, base, S, C + g * HD, C + (NKV + g) * HD, k0, T::kKeys, seq, HD,
             T::kBlock);
  float dk[kPer], dv[kPer];
#pragma unroll
  for (int k = 0; k < kPer; ++k) dk[k] = dv[k] = 0.0f;
  const float* kr = kown + (j - k0) * T::kLd;
  const float* vr = vown + (j - k0) * T::kLd;
  for (int h = g * group; h < (g + 1) * group; ++h) {
    const std::int64_t row = (b * NH + h) * seq;
    for (int i0 = k0; i0 < seq; i0 += T::kQueries) {
      __syncthreads();  // every thread is done with the previous tile
      stage_rows(qs, nullptr, kMaxHD, base, S, h * HD, 0, i0, T::kQueries, seq, HD, T::kBlock);
      stage_rows(dos, nullptr, kMaxHD, dout + b * seq * C, C, h * HD, 0, i0, T::kQueries, seq, HD,
                 T::kBlock);
      if (static_cast<int>(threadIdx.x) < T::kQueries) {
        const int i = i0 + threadIdx.x;
        ls[threadIdx.x] = i < seq ? lse[row + i] : 0.0f;
        dls[threadIdx.x] = i < seq ? delta[row + i] : 0.0f;
      }
      __syncthreads();
      if (sr.warp_first >= seq) continue;
      for (int r = 0; r < T::kQueries && i0 + r < seq; ++r) {
        const float* qr = qs + r * kMaxHD;
        const float* dr = dos + r * kMaxHD;
        float dot = 0.0f, dp = 0.0f;
#pragma unroll
        for (int k = 0; k < kPer; ++k) {
          const int d = k * kSplit + part;
          if (d < HD) {
            dot += kr[d] * qr[d];
            dp += vr[d] * dr[d];
          }
        }
        dot = group_sum<kSplit>(dot);
        dp = group_sum<kSplit>(dp);
        if (!valid || i0 + r < j) continue;
        const float p = expf(scale * dot - ls[r]);
        const float ds = p * (dp - dls[r]);
#pragma unroll
        for (int k = 0; k < kPer; ++k) {
          const int d = k * kSplit + part;
          if (d < HD) {
            dv[k] += p * dr[d];
            dk[k] += ds * qr[d];
          }
        }
      }
    }
  }
  if (!valid) return;
  float* dkr = dqkv + (b * seq + j) * S + C + std::int64_t{g} * HD;
#pragma unroll
  for (int k = 0; k < kPer; ++k) {
    const int d = k * kSplit + part;
    if (d < HD) {
      dkr[d] = scale * dk[k];
      dkr[std::int64_t{NKV} * HD + d] = dv[k];
    }
  }
}

// ---- attention on tensor cores (bf16 matmuls) ---------------------------------
//
// With bf16 matmuls and head dimensions up to 128, attention's products run on
// tensor cores (wmma, 16 x 16 x 16 tiles, bf16 inputs, fp32 accumulation),
// on the tiled kernels' schedule: q, k, v and the output gradient are staged
// as bf16 (zero-padded to 64 columns); scores, softmax statistics, the
// log-sum-exp and every accumulator stay fp32; the probabilities (and their
// gradients) are rounded to bf16 for the products that use them, as
// FlashAttention does. Each warp owns 16 rows: it computes their score tiles
// into its own shared memory, lane l takes row l / 2 and half of the columns
// (l % 2), and the output tiles of the second product go through the warp's
// scratch into the lanes' fp32 accumulators. Sums run in a fixed order and
// nothing is added from two places (no atomics).
namespace tc {

using bf16 = __nv_bfloat16;
using FragA = wmma::fragment<wmma::matrix_a, 16, 16, 16, bf16, wmma::row_major>;
using FragBRow = wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::row_major>;
using FragBCol = wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::col_major>;
using FragC = wmma::fragment<wmma::accumulator, 16, 16, 16, float>;

// Tile sizes for head dimensions up to kHD (64 or 128, staged zero-padded
// to kHD), each kernel's shared memory within 48 KB. Blocks have a warp per
// 16 rows.
template <int kHD>
struct Shape {
  static_assert(kHD == 64 || kHD == 128);
  static constexpr int kHalf = kHD / 2;                 // accumulator columns per lane
  static constexpr int kRows = 64;                      // query rows per forward block
  static constexpr int kDqRows = kHD == 64 ? 64 : 32;   // query rows per dq block
  static constexpr int kKeys = 32;                      // keys per staged tile (forward, dq)
  static constexpr int kKeyRows = kHD == 64 ? 64 : 32;  // key rows per dk/dv block
  static constexpr int kQueries = 32;                   // query rows per staged tile (dk/dv)
  // Row pitch of the staged bf16 tiles: 16 bytes more than a row, so that
  // the 8 rows a tensor-core load reads at a time start on 8 different
  // groups of 4 banks (at kHD elements, 128 or 256 bytes, they all start on
  // the same: an 8-way bank conflict). A multiple of 8, as wmma needs, and
  // 16-row tiles stay 32-byte aligned.
  static constexpr int kLd = kHD + 8;
};

// A value in a tile: fp32 rounded to bf16 (round to nearest even, as
// store() rounds), bf16 as it is. So a tensor kept in bf16 by the kernel
// that wrote it stages to the same tile as the fp32 tensor would.
__device__ bf16 as_tile(float v) {
  return __float2bfloat16(v);
}
__device__ bf16 as_tile(bf16 v) {
  return v;
}

// The 8 values at x (16-byte aligned) as bf16, rounded as as_tile rounds.
__device__ Pack<bf16> load8(const bf16* x) {
  return pack_at(x);
}
__device__ Pack<bf16> load8(const float* x) {
  float in[kPackBf16];
  load_n(in, x);
  Pack<bf16> out;
  for (int k = 0; k < kPackBf16; ++k) out.v[k] = as_tile(in[k]);
  return out;
}

// Rows [r0, r0 + rows) of a sequence (base, row stride S), columns
// [col, col + HD), as bf16 into tile[rows][Shape<kHD>::kLd], the first kHD
// columns of each row (16-byte aligned); zeros past the sequence and past
// HD. All threads of the block. Where every row starts 16-byte aligned and
// HD is a multiple of 8, 8 values at a time.
template <int kHD, typename In>
__device__ void stage(bf16* tile, const In* base, std::int64_t S, int col, int r0, int rows,
                      int seq, int HD) {
  static_assert(kHD % kPackBf16 == 0);
  constexpr int kLd = Shape<kHD>::kLd;
  constexpr int kPer = 16 / sizeof(In);  // values of In per 16 bytes
  if (HD % kPackBf16 == 0 && S % kPer == 0 && col % kPer == 0 && aligned16(base)) {
    for (int e = threadIdx.x * kPackBf16; e < rows * kHD; e += blockDim.x * kPackBf16) {
      const int r = e / kHD, d = e % kHD;
      Pack<bf16> values;
      if (r0 + r < seq && d < HD) {
        values = load8(base + std::int64_t{r0 + r} * S + col + d);
      } else {
        for (auto& v : values.v) v = __float2bfloat16(0.0f);
      }
      pack_at(tile + r * kLd + d) = values;
    }
    return;
  }
  for (int e = threadIdx.x; e < rows * kHD; e += blockDim.x) {
    const int r = e / kHD, d = e % kHD;
    tile[r * kLd + d] = r0 + r < seq && d < HD ? as_tile(base[std::int64_t{r0 + r} * S + col + d])
                                               : __float2bfloat16(0.0f);
  }
}

// A warp's 16 rows of a staged tile (bf16, row-major, row pitch
// Shape<kHD>::kLd, kdim columns used) as the left operand of products with
// many other 16-row tiles (the scores, dP and their transposes). With
// kKeep its A fragments, one per 16-column step, are loaded once into
// registers, for a tile that stays staged while the others pass: half the
// fragment loads of each product. Without (where the registers are not
// there to spare) they are loaded from shared memory at each product. All
// lanes of the warp.
template <int kHD, bool kKeep>
struct LeftRows {
  static constexpr int kSteps = kHD / 16;
  const bf16* rows;
  int kdim;
  FragA kept[kKeep ? kSteps : 1];

  __device__ LeftRows(const bf16* rows_, int kdim_) : rows(rows_), kdim(kdim_) {
    if constexpr (kKeep) {
#pragma unroll
      for (int s = 0; s < kSteps; ++s) {
        if (s * 16 < kdim) wmma::load_matrix_sync(kept[s], rows + s * 16, Shape<kHD>::kLd);
      }
    }
  }
  // out[16][ldo] = these rows times b^T over kdim columns: b is 16 rows of
  // a staged tile (the same pitch). The sum runs over the steps in order.
  __device__ void times_bt(float* out, int ldo, const bf16* b) const {
    FragC acc;
    wmma::fill_fragment(acc, 0.0f);
#pragma unroll
    for (int s = 0; s < kSteps; ++s) {
      if (s * 16 >= kdim) break;
      FragBCol fb;
      wmma::load_matrix_sync(fb, b + s * 16, Shape<kHD>::kLd);
      if constexpr (kKeep) {
        wmma::mma_sync(acc, kept[s], fb, acc);
      } else {
        FragA fa;
        wmma::load_matrix_sync(fa, rows + s * 16, Shape<kHD>::kLd);
        wmma::mma_sync(acc, fa, fb, acc);
      }
    }
    wmma::store_matrix_sync(out, acc, ldo, wmma::mem_row_major);
  }
};

// Shared memory has 32 banks of 4 bytes; a warp's accesses that hit one
// bank at different addresses take a pass each. Row pitches that keep them
// apart, none changing a value:
// - score tiles (fp32, 16 rows of 32 columns) are 36 floats a row apart:
//   lane l reads row l / 2, columns (l % 2) * 16 on, in 16-byte loads, of
//   which 8 lanes (4 rows, both halves) are served at a time; at 36 floats
//   their 8 groups of 4 banks all differ (at 32, the 4 rows would share
//   theirs: 4 passes). Tensor-core stores of 16 x 16 tiles into them take
//   2 passes where 32 floats took 4;
// - probability tiles (bf16, the A operand of the second product) are 40
//   values a row apart: the 8 rows a tensor-core load reads at a time start
//   on 8 different groups of 4 banks (at 32 they would start on two);
// - the 16 x 16 tiles RowsAccumulator::take passes the accumulators
//   through at the end are 20 floats apart (the rows start on 8 different
//   banks: 2 passes for 16 lanes, not 8).
constexpr int kScoreLd = 36;
constexpr int kProbLd = 40;
constexpr int kScratchLd = 20;

// A warp's 16 x 32 tile: fp32 scores (or their gradients) as a product
// stores them, then bf16 values computed from them for the next product,
// over the same bytes (each lane reads its fp32 values, then, after a
// __syncwarp, writes bf16).
union ScoreTile {
  float f[16 * kScoreLd];
  bf16 h[16 * kProbLd];
};

// Lane (row, half)'s 16 values of a score tile: row `row`, columns
// half * 16 to half * 16 + 15, in 16-byte loads.
__device__ void read_scores(float (&v)[2][kPackBf16], const float* tile, int row, int half) {
  load_n(v[0], tile + row * kScoreLd + half * 16);
  load_n(v[1], tile + row * kScoreLd + half * 16 + kPackBf16);
}
// And 16 bf16 values into a probability tile at the same place, in
// 16-byte stores.
__device__ void write_probs(bf16* tile, const Pack<bf16> (&v)[2], int row, int half) {
  pack_at(tile + row * kProbLd + half * 16) = v[0];
  pack_at(tile + row * kProbLd + half * 16 + kPackBf16) = v[1];
}

// A warp's 16 rows of kHD fp32 columns, summed on tensor cores across the
// tiles of a kernel's loop: one accumulator fragment per 16 columns, kept
// in registers from the first product to the last (no tile goes through
// shared memory on the way). The loops run over compile-time counts,
// unrolled, so that every index into the fragments is a constant (a
// runtime index puts the array in local memory).
template <int kHD>
struct RowsAccumulator {
  static constexpr int kTiles = kHD / 16;
  FragC f[kTiles];

  __device__ RowsAccumulator() {
#pragma unroll
    for (int t = 0; t < kTiles; ++t) wmma::fill_fragment(f[t], 0.0f);
  }

  // += a b: a is the warp's 16 rows of kK columns (bf16, row-major, lda), b
  // kK rows of kHD columns (bf16, row-major, ldb); column tiles past kdim
  // are left alone (they stay zero). Each a fragment is loaded once for
  // all the column tiles. Ends at a __syncwarp: no lane reads a or b any
  // more.
  template <int kK>
  __device__ void add_ab(const bf16* a, int lda, const bf16* b, int ldb, int kdim) {
#pragma unroll
    for (int k0 = 0; k0 < kK; k0 += 16) {
      FragA fa;
      wmma::load_matrix_sync(fa, a + k0, lda);
#pragma unroll
      for (int t = 0; t < kTiles; ++t) {
        if (t * 16 >= kdim) break;
        FragBRow fb;
        wmma::load_matrix_sync(fb, b + std::int64_t{k0} * ldb + t * 16, ldb);
        wmma::mma_sync(f[t], fa, fb, f[t]);
      }
    }
    __syncwarp();
  }

  // Each row times its own factor: factor[r] for row r (shared memory, 16
  // values the warp has written), rows.x[e] the row of fragment element e
  // (row_index). The same element of every fragment is in the same row.
  __device__ void scale_rows(const float* factor, const FragC& rows) {
#pragma unroll
    for (int e = 0; e < FragC::num_elements; ++e) {
      const float x = factor[static_cast<int>(rows.x[e])];
#pragma unroll
      for (int t = 0; t < kTiles; ++t) f[t].x[e] *= x;
    }
  }

  // use(d, value) for each of this lane's half of its row's kHD columns
  // (lane l: row l / 2, columns (l % 2) * kHD / 2 + d), one tile at a time
  // through scratch (16 x kScratchLd floats, 32-byte aligned), up to kdim.
  // All lanes of the warp.
  template <typename F>
  __device__ void for_each_column(float* scratch, int row, int half, int kdim, F use) const {
    constexpr int kTilesPerHalf = kTiles / 2;
#pragma unroll
    for (int t = 0; t < kTiles; ++t) {
      if (t * 16 >= kdim) break;
      wmma::store_matrix_sync(scratch, f[t], kScratchLd, wmma::mem_row_major);
      __syncwarp();
      if (t / kTilesPerHalf == half) {
#pragma unroll
        for (int c = 0; c < 16; ++c)
          use((t % kTilesPerHalf) * 16 + c, scratch[row * kScratchLd + c]);
      }
      __syncwarp();
    }
  }
  // acc[kHD / 2] = those columns' values (zero past kdim).
  __device__ void take(float* acc, float* scratch, int row, int half, int kdim) const {
#pragma unroll
    for (int d = 0; d < kHD / 2; ++d) acc[d] = 0.0f;
    for_each_column(scratch, row, half, kdim, [&](int d, float v) { acc[d] = v; });
  }
};

// The row of each element of an accumulator fragment, as a fragment: the
// elements a lane holds are not specified by CUDA, but the same fragment
// type loads a matrix the same way, so loading one whose every value is
// its row gives each element's row. scratch: 16 x 16 floats (32-byte
// aligned) of the warp's own. All lanes of the warp.
__device__ FragC row_index(float* scratch) {
  for (int e = static_cast<int>(threadIdx.x % kWarp); e < 256; e += kWarp) {
    scratch[e] = static_cast<float>(e / 16);
  }
  __syncwarp();
  FragC rows;
  wmma::load_matrix_sync(rows, scratch, 16, wmma::mem_row_major);
  __syncwarp();
  return rows;
}

// out16, when not null, gets the output rounded to bf16 as well.
template <int kHD, typename In>
__global__ void forward_kernel(float* out, bf16* out16, float* lse, const In* qkv, int seq, int NH,
                               int NKV, int HD, float scale) {
  using T = Shape<kHD>;
  constexpr int kLd = T::kLd;
  constexpr int kRows = T::kRows, kKeys = T::kKeys, kHalf = T::kHalf;
  __shared__ __align__(32) bf16 qs[kRows * kLd];
  __shared__ __align__(32) bf16 ks[kKeys * kLd];
  __shared__ __align__(32) bf16 vs[kKeys * kLd];
  static_assert(kKeys == 32);                         // 16 columns a lane
  __shared__ __align__(32) ScoreTile ss[kRows / 16];  // S, then P over it
  __shared__ float cs[kRows / 16][16];  // each row's rescaling of the output, per tile
  fresh_shared(qs, ks, vs, ss, cs);
  const auto at = query_rows(qkv, kRows, seq, NH, NKV, HD);
  const int warp = at.warp, row = at.row, half = at.half, h = at.h, g = at.g, C = at.C;
  const int kdim = at.kdim, q0 = at.q0, w0 = at.w0, i = at.i;
  const std::int64_t bh = at.bh, b = at.b, S = at.S;
  const In* base = at.base;
  ScoreTile& sw = ss[warp];
  stage<kHD>(qs, base, S, h * HD, q0, kRows, seq, HD);
  // (Kept in registers, its fragments would cost this kernel, bound by its
  // registers, a block per multiprocessor at head dimensions 64 and 128:
  // ptxas for sm_90.)
  const LeftRows<kHD, false> q(qs + warp * 16 * kLd, kdim);
  const FragC rows = row_index(sw.f);
  RowsAccumulator<kHD> o;
  float m = -INFINITY, l = 0.0f;
  const int keys = min(seq, q0 + kRows);
  for (int j0 = 0; j0 < keys; j0 += kKeys) {
    __syncthreads();  // every warp is done with the previous tile (and qs is staged)
    stage<kHD>(ks, base, S, C + g * HD, j0, kKeys, seq, HD);
    stage<kHD>(vs, base, S, C + (NKV + g) * HD, j0, kKeys, seq, HD);
    __syncthreads();
    if (j0 > w0 + 15) continue;  // the whole tile is after the warp's rows
    for (int t = 0; t < kKeys / 16; ++t) {
      q.times_bt(sw.f + t * 16, kScoreLd, ks + t * 16 * kLd);
    }
    __syncwarp();
    // This lane's columns c <= last are keys j = j0 + half * 16 + c that
    // row i sees (j <= i, j < seq).
    const int last = min(i, seq - 1) - (j0 + half * 16);
    float sv[2][kPackBf16];
    read_scores(sv, sw.f, row, half);
    float mt = m;
    for (int c = 0; c < 16; ++c) {
      float& x = sv[c / kPackBf16][c % kPackBf16];
      x = c <= last ? scale * x : -INFINITY;
      mt = fmaxf(mt, x);
    }
    mt = fmaxf(mt, __shfl_xor_sync(0xffffffffu, mt, 1));
    const float corr = expf(m - mt);  // 0 for the first tile (m = -inf)
    float psum = 0.0f;
    Pack<bf16> pv[2];
    for (int c = 0; c < 16; ++c) {
      const float p = expf(sv[c / kPackBf16][c % kPackBf16] - mt);
      psum += p;
      pv[c / kPackBf16].v[c % kPackBf16] = __float2bfloat16(p);
    }
    psum += __shfl_xor_sync(0xffffffffu, psum, 1);
    __syncwarp();  // every lane has read its scores before P goes over them
    write_probs(sw.h, pv, row, half);
    l = l * corr + psum;
    m = mt;
    if (half == 0) cs[warp][row] = corr;
    __syncwarp();
    o.scale_rows(cs[warp], rows);
    o.template add_ab<kKeys>(sw.h, kProbLd, vs, kLd, kdim);
  }
  float od[kHalf];
  o.take(od, sw.f, row, half, kdim);
  if (i >= seq) return;
  const std::int64_t orow = (b * seq + i) * C + std::int64_t{h} * HD;
  for (int d = 0; d < kHalf; ++d) {
    const int col = half * kHalf + d;
    if (col >= HD) continue;
    const float v = od[d] / l;
    if (out != nullptr) out[orow + col] = v;
    if (out16 != nullptr) store(out16 + orow + col, v);
  }
  if (half == 0) lse[std::int64_t{bh} * seq + i] = m + logf(l);
}

// RoPE's tables ([positions][HD / 2] of cos and sin) for the backward
// kernels to rotate their q and k gradients back as they store them; null
// for no rotation.
struct RopeTables {
  const float* cos_t = nullptr;
  const float* sin_t = nullptr;
};

// RoPE's backward rotation of a row's gradient v at position t, as
// rope_kernel's with sign -1 computes it, for a head dimension of exactly
// kHD: lane half 0 holds the first columns of each rotated pair, its
// partner (lane ^ 1) the second. Each lane trades its values with its
// partner and keeps its own half of the rotated pairs. All lanes of the
// warp.
template <int kHalf>
__device__ void rotate_back(float* v, RopeTables rope, std::int64_t t, int half) {
  for (int d = 0; d < kHalf; ++d) {
    const float other = __shfl_xor_sync(0xffffffffu, v[d], 1);
    const float c = rope.cos_t[t * kHalf + d];
    const float s = -1.0f * rope.sin_t[t * kHalf + d];
    const float x1 = half == 0 ? v[d] : other;
    const float x2 = half == 0 ? other : v[d];
    v[d] = half == 0 ? x1 * c - x2 * s : x2 * c + x1 * s;
  }
}

template <int kHD, typename In, typename Out, typename D>
__global__ void dq_kernel(Out* dqkv, const D* dout, const In* qkv, const float* lse,
                          const float* delta, int seq, int NH, int NKV, int HD, float scale,
                          RopeTables rope) {
  using T = Shape<kHD>;
  constexpr int kLd = T::kLd;
  constexpr int kRows = T::kDqRows, kKeys = T::kKeys, kHalf = T::kHalf;
  __shared__ __align__(32) bf16 qs[kRows * kLd];
  __shared__ __align__(32) bf16 dos[kRows * kLd];
  __shared__ __align__(32) bf16 ks[kKeys * kLd];
  __shared__ __align__(32) bf16 vs[kKeys * kLd];
  static_assert(kKeys == 32);  // 16 columns a lane
  __shared__ __align__(32) float ss[kRows / 16][16 * kScoreLd];
  __shared__ __align__(32) ScoreTile dps[kRows / 16];  // dP, then dS over it
  fresh_shared(qs, dos, ks, vs, ss, dps);
  const auto at = query_rows(qkv, kRows, seq, NH, NKV, HD);
  const int warp = at.warp, row = at.row, half = at.half, h = at.h, g = at.g, C = at.C;
  const int kdim = at.kdim, q0 = at.q0, w0 = at.w0, i = at.i;
  const std::int64_t bh = at.bh, b = at.b, S = at.S;
  const In* base = at.base;
  float* sw = ss[warp];
  ScoreTile& dpw = dps[warp];
  stage<kHD>(qs, base, S, h * HD, q0, kRows, seq, HD);
  stage<kHD>(dos, dout + b * seq * C, C, h * HD, q0, kRows, seq, HD);
  __syncthreads();
  // Kept in registers at head dimension 64, where the blocks per
  // multiprocessor stay as many as the shared memory allows (ptxas for
  // sm_90: 116 registers a thread); at 128 they would take 215, and a block
  // of the 5 the shared memory allows (168 without).
  const LeftRows<kHD, kHD == 64> q(qs + warp * 16 * kLd, kdim), g_out(dos + warp * 16 * kLd, kdim);
  const float li = i < seq ? lse[std::int64_t{bh} * seq + i] : 0.0f;
  const float di = i < seq ? delta[std::int64_t{bh} * seq + i] : 0.0f;
  RowsAccumulator<kHD> dq_sum;
  const int keys = min(seq, q0 + kRows);
  for (int j0 = 0; j0 < keys; j0 += kKeys) {
    __syncthreads();
    stage<kHD>(ks, base, S, C + g * HD, j0, kKeys, seq, HD);
    stage<kHD>(vs, base, S, C + (NKV + g) * HD, j0, kKeys, seq, HD);
    __syncthreads();
    if (j0 > w0 + 15) continue;
    for (int t = 0; t < kKeys / 16; ++t) {
      q.times_bt(sw + t * 16, kScoreLd, ks + t * 16 * kLd);
      g_out.times_bt(dpw.f + t * 16, kScoreLd, vs + t * 16 * kLd);
    }
    __syncwarp();
    // This lane's columns c <= last are keys j = j0 + half * 16 + c that
    // row i sees (j <= i; none for rows past the sequence).
    const int last = i < seq ? i - (j0 + half * 16) : -1;
    Pack<bf16> ds[2];
    for (int u = 0; u < 2; ++u) {  // (8 columns at a time: fewer registers)
      float sv[kPackBf16], dp[kPackBf16];
      load_n(sv, sw + row * kScoreLd + half * 16 + u * kPackBf16);
      load_n(dp, dpw.f + row * kScoreLd + half * 16 + u * kPackBf16);
      for (int k = 0; k < kPackBf16; ++k) {
        const int c = u * kPackBf16 + k;
        const float p = c <= last ? expf(scale * sv[k] - li) : 0.0f;
        ds[u].v[k] = __float2bfloat16(p * (dp[k] - di));
      }
    }
    __syncwarp();  // every lane has read its dP before dS goes over it
    write_probs(dpw.h, ds, row, half);
    __syncwarp();
    dq_sum.template add_ab<kKeys>(dpw.h, kProbLd, ks, kLd, kdim);
  }
  float dq[kHalf];
  dq_sum.take(dq, sw, row, half, kdim);
  for (int d = 0; d < kHalf; ++d) dq[d] *= scale;
  // (Rows past the sequence take part in the exchange, at its last position.)
  if (rope.cos_t != nullptr) rotate_back<kHalf>(dq, rope, min(i, seq - 1), half);
  if (i >= seq) return;
  Out* dqr = dqkv + (b * seq + i) * S + std::int64_t{h} * HD;
  for (int d = 0; d < kHalf; ++d) {
    const int col = half * kHalf + d;
    if (col < HD) store(dqr + col, dq[d]);
  }
}

template <int kHD, typename In, typename Out, typename D>
__global__ void dkv_kernel(Out* dqkv, const D* dout, const In* qkv, const float* lse,
                           const float* delta, int seq, int NH, int NKV, int HD, float scale,
                           RopeTables rope) {
  using T = Shape<kHD>;
  constexpr int kLd = T::kLd;
  constexpr int kKeyRows = T::kKeyRows, kQueries = T::kQueries, kHalf = T::kHalf;
  constexpr int kWarps = kKeyRows / 16;
  __shared__ __align__(32) bf16 ks[kKeyRows * kLd];
  __shared__ __align__(32) bf16 vs[kKeyRows * kLd];
  __shared__ __align__(32) bf16 qs[kQueries * kLd];
  __shared__ __align__(32) bf16 dos[kQueries * kLd];
  static_assert(kQueries == 32);                    // 16 query columns a lane
  __shared__ __align__(32) ScoreTile sts[kWarps];   // S^T, then P^T over it
  __shared__ __align__(32) ScoreTile dpts[kWarps];  // dP^T, then dS^T over it
  __shared__ float ls[kQueries];
  __shared__ float dls[kQueries];
  fresh_shared(ks, vs, qs, dos, sts, dpts, ls, dls);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int row = lane / 2, half = lane % 2;
  const int bg = blockIdx.y;
  const int g = bg % NKV;
  const std::int64_t b = bg / NKV;
  const int group = NH / NKV;
  const std::int64_t S = std::int64_t{NH + 2 * NKV} * HD;
  const int C = NH * HD;
  const int kdim = (HD + 15) / 16 * 16;
  const In* base = qkv + b * seq * S;
  const D* dbase = dout + b * seq * C;
  const int k0 = blockIdx.x * kKeyRows;
  const int w0 = k0 + warp * 16;
  const int j = w0 + row;
  ScoreTile& stw = sts[warp];
  ScoreTile& dptw = dpts[warp];
  stage<kHD>(ks, base, S, C + g * HD, k0, kKeyRows, seq, HD);
  stage<kHD>(vs, base, S, C + (NKV + g) * HD, k0, kKeyRows, seq, HD);
  // (Not kept in registers: at head dimension 64 that would cost a block per
  // multiprocessor (ptxas for sm_90); at 128 the registers hold the dk and
  // dv accumulators.)
  const LeftRows<kHD, false> k(ks + warp * 16 * kLd, kdim), v(vs + warp * 16 * kLd, kdim);
  RowsAccumulator<kHD> dk_sum, dv_sum;
  for (int h = g * group; h < (g + 1) * group; ++h) {
    const std::int64_t rows = (b * NH + h) * seq;
    for (int i0 = k0; i0 < seq; i0 += kQueries) {
      __syncthreads();  // every warp is done with the previous tile (and ks, vs are staged)
      stage<kHD>(qs, base, S, h * HD, i0, kQueries, seq, HD);
      stage<kHD>(dos, dbase, C, h * HD, i0, kQueries, seq, HD);
      if (static_cast<int>(threadIdx.x) < kQueries) {
        const int i = i0 + static_cast<int>(threadIdx.x);
        ls[threadIdx.x] = i < seq ? lse[rows + i] : 0.0f;
        dls[threadIdx.x] = i < seq ? delta[rows + i] : 0.0f;
      }
      __syncthreads();
      if (i0 + kQueries - 1 < w0) continue;  // every query of the tile is before the warp's keys
      for (int t = 0; t < kQueries / 16; ++t) {
        k.times_bt(stw.f + t * 16, kScoreLd, qs + t * 16 * kLd);
        v.times_bt(dptw.f + t * 16, kScoreLd, dos + t * 16 * kLd);
      }
      __syncwarp();
      // This lane's query columns q = half * 16 + c for c in [first, end)
      // are queries i = i0 + q that see key j (i >= j, i < seq; none for
      // keys past the sequence).
      const int q0 = half * 16;
      const int first = j - (i0 + q0), end = j < seq ? seq - (i0 + q0) : 0;
      // P^T (for dv) and dS^T (for dk) in bf16, dS^T from the fp32 P^T;
      // 8 columns at a time (fewer registers).
      Pack<bf16> pt[2], dst[2];
      for (int u = 0; u < 2; ++u) {
        float sv[kPackBf16], dp[kPackBf16];
        load_n(sv, stw.f + row * kScoreLd + q0 + u * kPackBf16);
        load_n(dp, dptw.f + row * kScoreLd + q0 + u * kPackBf16);
        for (int kk = 0; kk < kPackBf16; ++kk) {
          const int c = u * kPackBf16 + kk;
          const float p = c >= first && c < end ? expf(scale * sv[kk] - ls[q0 + c]) : 0.0f;
          pt[u].v[kk] = __float2bfloat16(p);
          dst[u].v[kk] = __float2bfloat16(p * (dp[kk] - dls[q0 + c]));
        }
      }
      __syncwarp();  // every lane has read its S^T and dP^T before they are overwritten
      write_probs(stw.h, pt, row, half);
      write_probs(dptw.h, dst, row, half);
      __syncwarp();
      dv_sum.template add_ab<kQueries>(stw.h, kProbLd, dos, kLd, kdim);
      dk_sum.template add_ab<kQueries>(dptw.h, kProbLd, qs, kLd, kdim);
    }
  }
  // dv, then dk, out of the fragments (every lane takes part in the
  // exchanges, rows past the sequence too); dv straight to memory.
  const std::int64_t dk_at = (b * seq + j) * S + C + std::int64_t{g} * HD;
  dv_sum.for_each_column(stw.f, row, half, kdim, [&](int d, float value) {
    const int col = half * kHalf + d;
    if (col < HD && j < seq) store(dqkv + dk_at + std::int64_t{NKV} * HD + col, value);
  });
  float dr[kHalf];
  dk_sum.take(dr, stw.f, row, half, kdim);
  for (int d = 0; d < kHalf; ++d) dr[d] *= scale;
  if (rope.cos_t != nullptr) rotate_back<kHalf>(dr, rope, min(j, seq - 1), half);
  if (j >= seq) return;
  for (int d = 0; d < kHalf; ++d) {
    const int col = half * kHalf + d;
    if (col < HD) store(dqkv + dk_at + col, dr[d]);
  }
}

}  // namespace tc

__device__ std::int64_t cache_row(const std::int32_t* blocks, int block_size, int pos) {
  return std::int64_t{blocks[pos / block_size]} * block_size + pos % block_size;
}

// Stores the k and v heads of N packed qkv rows at positions pos0.. of the
// paged cache.
__global__ void kv_store_kernel(float* kpool, float* vpool, const std::int32_t* blocks,
                                int block_size, const float* qkv, int N, int pos0, int NH, int NKV,
                                int HD) {
  const int KW = NKV * HD;
  const int S = (NH + 2 * NKV) * HD;
  const std::int64_t count = std::int64_t{N} * KW;
  for (std::int64_t idx = first_index(); idx < count; idx += index_stride()) {
    const int i = static_cast<int>(idx / KW);
    const int c = static_cast<int>(idx % KW);
    const std::int64_t at = cache_row(blocks, block_size, pos0 + i) * KW + c;
    const float* row = qkv + std::int64_t{i} * S + NH * HD;
    kpool[at] = row[c];
    vpool[at] = row[KW + c];
  }
}

// One warp per (query row i, head h) over cached positions 0..pos0+i.
__global__ void attention_kv_kernel(float* out, const float* kpool, const float* vpool,
                                    const std::int32_t* blocks, int block_size, const float* qkv,
                                    int N, int pos0, int NH, int NKV, int HD, float scale) {
  const RowTask t = row_task(NH, 1);  // row: the head; b: the query row
  if (t.task >= std::int64_t{N} * NH) return;
  const int h = t.row;
  const int i = static_cast<int>(t.b);
  const int KW = NKV * HD;
  const int S = (NH + 2 * NKV) * HD;
  const int g = h / (NH / NKV);
  const Lanes q = load_lanes(qkv + std::int64_t{i} * S + std::int64_t{h} * HD, HD, t.lane);
  OnlineSoftmax sm;
  for (int p = 0; p <= pos0 + i; ++p) {
    const std::int64_t at = cache_row(blocks, block_size, p) * KW + std::int64_t{g} * HD;
    sm.add(scale * dot_lanes(q, kpool + at, HD, t.lane), vpool + at, HD, t.lane);
  }
  store_lanes(out + std::int64_t{i} * NH * HD + std::int64_t{h} * HD, sm.acc, 1.0f / sm.l, HD,
              t.lane);
}

// ---- the loss ----------------------------------------------------------------

// One block per row. Modes: whole rows (crossentropy_forward_backward), or
// the three steps of the vocabulary-parallel form.
// The loss of row blockIdx.x and, when dloss != 0, its logits' gradient
// over the logits, in their type: fp32, or bf16 (the lm head's output and
// its gradient as bf16 matmul inputs), computed in fp32 either way. The row
// is read twice: once for its maximum and sum together (online softmax),
// once for the gradient. Each thread takes kW consecutive logits at a time
// (8, in 16-byte accesses, where the launchers' vector_width allows; else
// 1): fp32 and bf16 logits of the same row width walk the row in the same
// order, so the bf16 form gives the bits of the fp32 one on rounded
// logits.
template <typename L, int kW>
__global__ void crossentropy_kernel(L* logits, float* losses, const std::int32_t* targets, int V,
                                    int Vp, float dloss) {
  __shared__ MaxSum shared[kThreads / kWarp];
  fresh_shared(shared);
  const std::int64_t n = blockIdx.x;
  L* x = logits + n * Vp;
  const MaxSum none{-INFINITY, 0.0f};
  MaxSum ms = none;
  for (int j = threadIdx.x * kW; j < V; j += kThreads * kW) {
    float v[kW];
    load_n(v, x + j);  // (j + kW <= Vp: kW divides Vp)
#pragma unroll
    for (int k = 0; k < kW; ++k) {
      if (j + k < V) ms = add_value(ms, v[k]);
    }
  }
  // (Read before the merge's barriers: past them, other threads write the
  // gradient over the logits.)
  const int t = targets[n];
  const float target_logit = load(x + t);
  ms = block_combine(
      ms, [](MaxSum a, MaxSum b) { return merge(a, b); }, none, shared);
  const float mx = ms.m, sum = ms.s;
  if (threadIdx.x == 0) losses[n] = logf(sum) + mx - target_logit;
  if (dloss == 0.0f) return;
  const float scale = dloss / sum;
  for (int j = threadIdx.x * kW; j < Vp; j += kThreads * kW) {
    float v[kW], d[kW];
    load_n(v, x + j);
#pragma unroll
    for (int k = 0; k < kW; ++k) {
      d[k] = j + k < V ? expf(v[k] - mx) * scale - (j + k == t ? dloss : 0.0f) : 0.0f;
    }
    store_n(x + j, d);
  }
}

__global__ void crossentropy_part_max_kernel(float* row_max, const float* logits, int V, int Vp) {
  __shared__ float shared[kThreads / kWarp];
  fresh_shared(shared);
  const std::int64_t n = blockIdx.x;
  const float* x = logits + n * Vp;
  float mx = -INFINITY;
  for (int j = threadIdx.x; j < V; j += kThreads) mx = fmaxf(mx, x[j]);
  mx = block_reduce<true>(mx, shared);
  if (threadIdx.x == 0) row_max[n] = mx;
}

__global__ void crossentropy_part_sums_kernel(float* logits, float* sums, const float* row_max,
                                              const std::int32_t* targets, int v0, int V, int Vp,
                                              bool keep_exp) {
  __shared__ float shared[kThreads / kWarp];
  fresh_shared(shared);
  const std::int64_t n = blockIdx.x;
  float* x = logits + n * Vp;
  const float mx = row_max[n];
  const std::int64_t t = static_cast<std::int64_t>(targets[n]) - v0;
  const float target_logit = (t >= 0 && t < V) ? x[t] : 0.0f;
  __syncthreads();  // every thread has read the target's logit before any exp overwrites it
  float sum = 0.0f;
  for (int j = threadIdx.x; j < V; j += kThreads) {
    const float e = expf(x[j] - mx);
    sum += e;
    if (keep_exp) x[j] = e;
  }
  sum = block_reduce<false>(sum, shared);
  if (threadIdx.x == 0) {
    sums[2 * n] = sum;
    sums[2 * n + 1] = target_logit;
  }
}

__global__ void crossentropy_part_finish_kernel(float* logits, float* losses, const float* row_max,
                                                const float* sums, const std::int32_t* targets,
                                                int v0, int V, int Vp, float dloss) {
  const std::int64_t n = blockIdx.x;
  if (threadIdx.x == 0) losses[n] = logf(sums[2 * n]) + row_max[n] - sums[2 * n + 1];
  if (dloss == 0.0f) return;
  float* x = logits + n * Vp;
  const float scale = dloss / sums[2 * n];
  const std::int64_t t = static_cast<std::int64_t>(targets[n]) - v0;
  for (int j = threadIdx.x; j < Vp; j += kThreads) {
    x[j] = j < V ? x[j] * scale - (j == t ? dloss : 0.0f) : 0.0f;
  }
}

// ---- the backend -------------------------------------------------------------

// The second grid dimension of the column reductions (at most 65535; the
// kernels loop over the rest).
unsigned row_blocks(int blocks) {
  return static_cast<unsigned>(std::min(blocks, 65535));
}

unsigned warps_blocks(std::int64_t warps) {
  return blocks_for(warps * kWarp);
}

// Device memory kept between calls and grown on demand. Work queued before
// a reallocation finishes first (cudaFree waits for it).
// The elements a column-major operand of rows x cols (as op() sees it,
// transposed when t is CUBLAS_OP_T) spans with leading dimension ld: whole
// columns of ld, of which the last holds only the rows.
std::int64_t operand_extent(cublasOperation_t t, int rows, int cols, int ld) {
  return t == CUBLAS_OP_N ? std::int64_t{ld} * (cols - 1) + rows
                          : std::int64_t{ld} * (rows - 1) + cols;
}

// The largest power of two, up to 256 bytes, that p is aligned to.
std::uint32_t alignment(const void* p) {
  const auto address = reinterpret_cast<std::uintptr_t>(p);
  std::uint32_t a = 256;
  while (a > 1 && address % a != 0) a /= 2;
  return a;
}

class Scratch {
 public:
  Scratch() = default;
  ~Scratch() {
    if (ptr_ != nullptr) cudaFree(ptr_);
  }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  // At least `bytes` bytes.
  void* get(std::size_t bytes, const char* what) {
    bytes = std::max<std::size_t>(bytes, 16);
    if (bytes > bytes_) {
      if (ptr_ != nullptr) check(cudaFree(ptr_), what);
      ptr_ = nullptr;
      bytes_ = 0;
      ptr_ = device_malloc(bytes, what);
      bytes_ = bytes;
    }
    return ptr_;
  }

 private:
  void* ptr_ = nullptr;
  std::size_t bytes_ = 0;
};

// A GEMM operand: fp32 values, or (bf16 matmuls) values already in bf16,
// which the GEMM reads as they are instead of rounding a copy.
struct Operand {
  Operand(const float* p) : f32(p) {}           // NOLINT(google-explicit-constructor)
  Operand(const __nv_bfloat16* p) : bf16(p) {}  // NOLINT(google-explicit-constructor)
  const float* f32 = nullptr;
  const __nv_bfloat16* bf16 = nullptr;
};

// The API's bf16 values (their 16 bits) as CUDA's type.
__nv_bfloat16* as_bf16(std::uint16_t* p) {
  return reinterpret_cast<__nv_bfloat16*>(p);
}
const __nv_bfloat16* as_bf16(const std::uint16_t* p) {
  return reinterpret_cast<const __nv_bfloat16*>(p);
}

class CudaBackend final : public Backend<float>, public Bf16Inputs<float> {
 public:
  CudaBackend(int device, Precision precision)
      : device_(device), bf16_(precision == Precision::kBf16) {
    check(cudaSetDevice(device), "cudaSetDevice");
    check_blas(cublasCreate(&blas_), "cublasCreate");
    // fp32 GEMMs in fp32 arithmetic (no TF32), and no atomics in cuBLAS's
    // reductions, so a GEMM repeats bit for bit.
    check_blas(cublasSetMathMode(blas_, CUBLAS_DEFAULT_MATH), "cublasSetMathMode");
    check_blas(cublasSetAtomicsMode(blas_, CUBLAS_ATOMICS_NOT_ALLOWED), "cublasSetAtomicsMode");
  }
  ~CudaBackend() override {
    if (rope_cos_ != nullptr) cudaFree(rope_cos_);
    if (rope_sin_ != nullptr) cudaFree(rope_sin_);
    if (lt_ != nullptr) cublasLtDestroy(lt_);
    cublasDestroy(blas_);
  }
  CudaBackend(const CudaBackend&) = delete;
  CudaBackend& operator=(const CudaBackend&) = delete;

  std::string name() const override { return "cuda"; }
  std::int64_t loss_chunk_elems() const override { return std::int64_t{1} << 29; }
  // With bf16 matmuls, the tensors only GEMMs read may be written in bf16
  // and the GEMMs read them as they are.
  Bf16Inputs<float>* bf16_inputs() override { return bf16_ ? this : nullptr; }

  // Device memory (cudaMalloc, zeroed); copies on the default stream, after
  // the ops queued before them.
  void* allocate(std::size_t bytes) override {
    void* p = device_malloc(std::max<std::size_t>(bytes, 1), "an allocation");
    const cudaError_t err = cudaMemset(p, 0, bytes);
    if (err != cudaSuccess) {
      cudaFree(p);
      check(err, "cudaMemset");
    }
    return p;
  }
  void release(void* ptr) noexcept override { cudaFree(ptr); }
  bool host_memory() const override { return false; }
  void upload(void* dst, const void* host, std::size_t bytes) override {
    if (bytes > 0) check(cudaMemcpy(dst, host, bytes, cudaMemcpyHostToDevice), "upload");
  }
  void download(void* host, const void* src, std::size_t bytes) override {
    if (bytes > 0) check(cudaMemcpy(host, src, bytes, cudaMemcpyDeviceToHost), "download");
  }
  void synchronize() override { check(cudaDeviceSynchronize(), "synchronize"); }

  void embedding_forward(float* out, const std::int32_t* tokens, const float* wte, const float* wpe,
                         int N, int seq, int C) override {
    embedding_forward_part(out, tokens, wte, 0, INT_MAX, wpe, N, seq, C);
  }
  void embedding_backward(float* dwte, float* dwpe, const float* dout, const std::int32_t* tokens,
                          int N, int seq, int C) override {
    embedding_backward_part(dwte, dwpe, dout, tokens, 0, INT_MAX, N, seq, C);
  }
  void embedding_forward_part(float* out, const std::int32_t* tokens, const float* wte, int v0,
                              int rows, const float* wpe, int N, int seq, int C) override {
    launch("embedding_forward", embedding_forward_kernel, blocks_for(std::int64_t{N} * C), kThreads,
           out, tokens, wte, v0, rows, wpe, N, seq, C);
  }
  void embedding_backward_part(float* dwte, float* dwpe, const float* dout,
                               const std::int32_t* tokens, int v0, int rows, int N, int seq,
                               int C) override {
    const dim3 grid(blocks_for(C, 128), kTokenBuckets);
    launch("embedding_backward", embedding_backward_wte_kernel, grid, 128, dwte, dout, tokens, v0,
           rows, N, C);
    if (dwpe == nullptr) return;
    launch("embedding_backward (positions)", embedding_backward_wpe_kernel,
           blocks_for(std::int64_t{seq} * C), kThreads, dwpe, dout, N, seq, C);
  }

  void use_weight_copy(const float* params, std::uint16_t* copy, std::int64_t count,
                       bool round) override {
    if (count > 0 && (params == nullptr || copy == nullptr)) {
      throw std::invalid_argument("use_weight_copy: weights and their copy, or a count of 0");
    }
    if (count > 0 && round) bf16_copy_into(as_bf16(copy), params, count);
    weights_ = count > 0 ? params : nullptr;
    weight_copy_ = count > 0 ? as_bf16(copy) : nullptr;
    weight_count_ = count > 0 ? count : 0;
  }

  void matmul_forward(float* out, const float* inp, const float* w, const float* bias, int N, int C,
                      int OC, bool accumulate) override {
    forward_gemm(out, inp, w, bias, N, C, OC, accumulate);
  }
  void matmul_forward(float* out, const std::uint16_t* inp, const float* w, const float* bias,
                      int N, int C, int OC, bool accumulate) override {
    forward_gemm(out, as_bf16(inp), w, bias, N, C, OC, accumulate);
  }
  // out in bf16: cuBLASLt's epilogue adds the bias in fp32 and rounds as it
  // stores; else the fp32 product in scratch, rounded.
  void matmul_forward(std::uint16_t* out, const std::uint16_t* inp, const float* w,
                      const float* bias, int N, int C, int OC) override {
    if (lt_matmul(CUBLAS_OP_T, CUBLAS_OP_N, OC, N, C, w, C, as_bf16(inp), C, nullptr, out, OC,
                  bias != nullptr ? CUBLASLT_EPILOGUE_BIAS : CUBLASLT_EPILOGUE_DEFAULT, bias,
                  nullptr, 0, "matmul_forward (bf16 output)", CUDA_R_16BF)) {
      return;
    }
    const std::int64_t count = std::int64_t{N} * OC;
    float* product = scratch(count);
    forward_gemm(product, as_bf16(inp), w, bias, N, C, OC, false);
    bf16_copy_into(as_bf16(out), product, count);
  }
  void matmul_backward(float* dinp, float* dw, float* dbias, const float* dout, const float* inp,
                       const float* w, int N, int C, int OC) override {
    backward_gemms(dinp, dw, dbias, dout, inp, w, N, C, OC);
  }
  void matmul_backward(float* dinp, float* dw, float* dbias, const float* dout,
                       const std::uint16_t* dout16, const std::uint16_t* inp, const float* w, int N,
                       int C, int OC) override {
    backward_gemms(dinp, dw, dbias, gradient(dout, dout16), as_bf16(inp), w, N, C, OC);
  }
  // dinp in bf16 (the attention output's gradient): cuBLASLt rounds the
  // fp32 product as it stores it; else the product in scratch, rounded.
  void matmul_backward(std::uint16_t* dinp, float* dw, float* dbias, const float* dout,
                       const std::uint16_t* dout16, const std::uint16_t* inp, const float* w, int N,
                       int C, int OC) override {
    const std::int64_t count = std::int64_t{N} * C;
    const Operand d = gradient(dout, dout16);
    if (!lt_matmul(CUBLAS_OP_N, CUBLAS_OP_N, C, N, OC, w, C, d, OC, nullptr, dinp, C,
                   CUBLASLT_EPILOGUE_DEFAULT, nullptr, nullptr, 0, "matmul_backward (input, bf16)",
                   CUDA_R_16BF)) {
      float* product = scratch(count);
      gemm(CUBLAS_OP_N, CUBLAS_OP_N, C, N, OC, w, C, d, OC, 0.0f, product, C,
           "matmul_backward (input, bf16)");
      bf16_copy_into(as_bf16(dinp), product, count);
    }
    backward_gemms(nullptr, dw, dbias, rounded_in_slot_1(d, N, OC), as_bf16(inp), w, N, C, OC);
  }
  void matmul_residual_forward(float* out, const float* residual, const float* inp, const float* w,
                               const float* bias, int N, int C, int OC) override {
    residual_gemm(out, residual, inp, w, bias, N, C, OC);
  }
  void matmul_residual_forward(float* out, const float* residual, const std::uint16_t* inp,
                               const float* w, const float* bias, int N, int C, int OC) override {
    residual_gemm(out, residual, as_bf16(inp), w, bias, N, C, OC);
  }
  // One cuBLASLt GEMM: pre = inp w^T + bias kept as the epilogue's aux
  // (its leading dimension OC must divide by 8), out = gelu(pre).
  void matmul_gelu_forward(float* out, float* pre, const float* inp, const float* w,
                           const float* bias, int N, int C, int OC) override {
    if (OC % 8 == 0 &&
        lt_matmul(CUBLAS_OP_T, CUBLAS_OP_N, OC, N, C, w, C, inp, C, nullptr, out, OC,
                  bias != nullptr ? CUBLASLT_EPILOGUE_GELU_AUX_BIAS : CUBLASLT_EPILOGUE_GELU_AUX,
                  bias, pre, OC, "matmul_gelu_forward")) {
      return;
    }
    Backend<float>::matmul_gelu_forward(out, pre, inp, w, bias, N, C, OC);
  }
  void matmul_backward_gelu(float* dpre, float* dw, float* dbias, const float* dout,
                            const float* inp, const float* w, const float* pre, int N, int C,
                            int OC) override {
    backward_gelu_gemms(dpre, dw, dbias, dout, inp, w, pre, N, C, OC);
  }
  // dpre and pre in bf16: cuBLASLt's DGELU epilogue reads pre and writes
  // dpre in bf16 (its aux takes D's type); else the input gradient in fp32
  // scratch and gelu_backward from it into dpre.
  void matmul_backward_gelu(std::uint16_t* dpre, float* dw, float* dbias, const float* dout,
                            const std::uint16_t* dout16, const std::uint16_t* inp, const float* w,
                            const std::uint16_t* pre, int N, int C, int OC) override {
    const std::int64_t count = std::int64_t{N} * C;
    const Operand d = gradient(dout, dout16);
    if (C % 8 == 0 && lt_matmul(CUBLAS_OP_N, CUBLAS_OP_N, C, N, OC, w, C, d, OC, nullptr, dpre, C,
                                CUBLASLT_EPILOGUE_DGELU, nullptr, const_cast<std::uint16_t*>(pre),
                                C, "matmul_backward_gelu (input, bf16)", CUDA_R_16BF)) {
      backward_gemms(nullptr, dw, dbias, rounded_in_slot_1(d, N, OC), as_bf16(inp), w, N, C, OC);
      return;
    }
    // (The bias gradient after GELU's: its partial sums take the scratch.)
    float* dinp = scratch(count);
    backward_gemms(dinp, dw, nullptr, d, as_bf16(inp), w, N, C, OC);
    launch("gelu_backward (bf16)", gelu_backward_kernel<__nv_bfloat16, __nv_bfloat16, 1>,
           blocks_for(count), kThreads, as_bf16(dpre), as_bf16(pre), dinp, count);
    if (dbias != nullptr) bias_gradient(dbias, d, N, OC);
  }
  void matmul_forward_rowwise(float* out, const float* inp, const float* w, const float* bias,
                              int N, int C, int OC, bool accumulate) override {
    launch("matmul_forward_rowwise", matmul_rowwise_kernel, warps_blocks(std::int64_t{N} * OC),
           kThreads, out, inp, w, bias, N, C, OC, accumulate);
  }

  void layernorm_forward(float* out, float* mean, float* rstd, const float* inp, const float* w,
                         const float* b, int N, int C, float eps) override {
    layernorm_forward_into(out, mean, rstd, inp, w, b, N, C, eps);
  }
  void layernorm_forward(std::uint16_t* out, float* mean, float* rstd, const float* inp,
                         const float* w, const float* b, int N, int C, float eps) override {
    layernorm_forward_into(as_bf16(out), mean, rstd, inp, w, b, N, C, eps);
  }
  void layernorm_backward(float* dinp, float* dw, float* db, const float* dout, const float* inp,
                          const float* w, const float* mean, const float* rstd, int N,
                          int C) override {
    layernorm_backward(dinp, nullptr, dw, db, dout, inp, w, mean, rstd, N, C);
  }
  void layernorm_backward(float* dinp, std::uint16_t* dinp16, float* dw, float* db,
                          const float* dout, const float* inp, const float* w, const float* mean,
                          const float* rstd, int N, int C) override {
    norm_backward_input("layernorm_backward", dinp, as_bf16(dinp16), dout, inp, w, mean, rstd, N,
                        C);
    norm_weight_grads(dw, db, dout, inp, mean, rstd, N, C);
  }
  void rmsnorm_forward(float* out, float* rstd, const float* inp, const float* w, int N, int C,
                       float eps) override {
    rmsnorm_forward_into(out, rstd, inp, w, N, C, eps);
  }
  void rmsnorm_forward(std::uint16_t* out, float* rstd, const float* inp, const float* w, int N,
                       int C, float eps) override {
    rmsnorm_forward_into(as_bf16(out), rstd, inp, w, N, C, eps);
  }
  void rmsnorm_backward(float* dinp, float* dw, const float* dout, const float* inp, const float* w,
                        const float* rstd, int N, int C) override {
    rmsnorm_backward(dinp, nullptr, dw, dout, inp, w, rstd, N, C);
  }
  void rmsnorm_backward(float* dinp, std::uint16_t* dinp16, float* dw, const float* dout,
                        const float* inp, const float* w, const float* rstd, int N,
                        int C) override {
    norm_backward_input("rmsnorm_backward", dinp, as_bf16(dinp16), dout, inp, w, nullptr, rstd, N,
                        C);
    norm_weight_grads(dw, nullptr, dout, inp, nullptr, rstd, N, C);
  }

  // The norms' row kernels, with 16-byte accesses where vector_width
  // allows them (the same values either way).
  template <typename O>
  void layernorm_forward_into(O* out, float* mean, float* rstd, const float* inp, const float* w,
                              const float* b, int N, int C, float eps) {
    const bool vec = vector_width(C, {out, inp, w, b}) == 8;
    launch(std::is_same_v<O, float> ? "layernorm_forward" : "layernorm_forward (bf16 out)",
           vec ? layernorm_forward_kernel<O, true> : layernorm_forward_kernel<O, false>,
           warps_blocks(N), kThreads, out, mean, rstd, inp, w, b, N, C, eps);
  }
  template <typename O>
  void rmsnorm_forward_into(O* out, float* rstd, const float* inp, const float* w, int N, int C,
                            float eps) {
    const bool vec = vector_width(C, {out, inp, w}) == 8;
    launch(std::is_same_v<O, float> ? "rmsnorm_forward" : "rmsnorm_forward (bf16 out)",
           vec ? rmsnorm_forward_kernel<O, true> : rmsnorm_forward_kernel<O, false>,
           warps_blocks(N), kThreads, out, rstd, inp, w, N, C, eps);
  }
  void norm_backward_input(const char* what, float* dinp, __nv_bfloat16* dinp16, const float* dout,
                           const float* inp, const float* w, const float* mean, const float* rstd,
                           int N, int C) {
    const bool vec = vector_width(C, {dinp, dinp16, dout, inp, w}) == 8;
    launch(what, vec ? norm_backward_input_kernel<true> : norm_backward_input_kernel<false>,
           warps_blocks(N), kThreads, dinp, dinp16, dout, inp, w, mean, rstd, N, C);
  }

  // The values a thread of the activations' bf16 kernels, of the loss and
  // of the norms takes at a time: 8 (16-byte accesses, where they would
  // otherwise be 2 or 4 bytes) where every pointer is 16-byte aligned and
  // the rows (of `row` values) divide into eights, else 1.
  static int vector_width(std::int64_t row, std::initializer_list<const void*> pointers) {
    if (row % 8 != 0) return 1;
    for (const void* p : pointers) {
      if (!aligned16(p)) return 1;
    }
    return 8;
  }
  void gelu_forward(float* out, const float* inp, std::int64_t count) override {
    launch("gelu_forward", gelu_forward_kernel<float, float, 1>, blocks_for(count), kThreads, out,
           inp, count);
  }
  void gelu_forward(std::uint16_t* out, const std::uint16_t* inp, std::int64_t count) override {
    const int w = vector_width(count, {out, inp});
    launch("gelu_forward (bf16)",
           w == 8 ? gelu_forward_kernel<__nv_bfloat16, __nv_bfloat16, 8>
                  : gelu_forward_kernel<__nv_bfloat16, __nv_bfloat16, 1>,
           blocks_for(count / w), kThreads, as_bf16(out), as_bf16(inp), count);
  }
  void gelu_backward(float* dinp, const float* inp, const float* dout,
                     std::int64_t count) override {
    launch("gelu_backward", gelu_backward_kernel<float, float, 1>, blocks_for(count), kThreads,
           dinp, inp, dout, count);
  }
  void swiglu_forward(float* out, const float* inp, int N, int F) override {
    launch("swiglu_forward", swiglu_forward_kernel<float, float, 1>,
           blocks_for(std::int64_t{N} * F), kThreads, out, inp, N, F);
  }
  void swiglu_forward(std::uint16_t* out, const std::uint16_t* inp, int N, int F) override {
    const int w = vector_width(F, {out, inp});
    launch("swiglu_forward (bf16)",
           w == 8 ? swiglu_forward_kernel<__nv_bfloat16, __nv_bfloat16, 8>
                  : swiglu_forward_kernel<__nv_bfloat16, __nv_bfloat16, 1>,
           blocks_for(std::int64_t{N} * F / w), kThreads, as_bf16(out), as_bf16(inp), N, F);
  }
  void swiglu_backward(float* dinp, const float* inp, const float* dout, int N, int F) override {
    launch("swiglu_backward", swiglu_backward_kernel<float, float, 1>,
           blocks_for(std::int64_t{N} * F), kThreads, dinp, inp, dout, N, F);
  }
  void swiglu_backward(std::uint16_t* dinp, const std::uint16_t* inp, const float* dout, int N,
                       int F) override {
    const int w = vector_width(F, {dinp, inp, dout});
    launch("swiglu_backward (bf16)",
           w == 8 ? swiglu_backward_kernel<__nv_bfloat16, __nv_bfloat16, 8>
                  : swiglu_backward_kernel<__nv_bfloat16, __nv_bfloat16, 1>,
           blocks_for(std::int64_t{N} * F / w), kThreads, as_bf16(dinp), as_bf16(inp), dout, N, F);
  }

  void rope_forward(float* qkv, int B, int seq, int NH, int NKV, int HD, float theta) override {
    rope(qkv, qkv, B * seq, seq, 0, NH, NKV, HD, theta, 1.0f);
  }
  void rope_backward(float* dqkv, int B, int seq, int NH, int NKV, int HD, float theta) override {
    rope(dqkv, dqkv, B * seq, seq, 0, NH, NKV, HD, theta, -1.0f);
  }
  void rope_backward(std::uint16_t* out, const float* dqkv, int B, int seq, int NH, int NKV, int HD,
                     float theta) override {
    rope(dqkv, as_bf16(out), B * seq, seq, 0, NH, NKV, HD, theta, -1.0f);
  }
  void rope_forward(std::uint16_t* out, const float* qkv, int B, int seq, int NH, int NKV, int HD,
                    float theta) override {
    rope(qkv, as_bf16(out), B * seq, seq, 0, NH, NKV, HD, theta, 1.0f);
  }
  void rope_forward_at(float* qkv, int N, int pos0, int NH, int NKV, int HD, float theta) override {
    rope(qkv, qkv, N, N, pos0, NH, NKV, HD, theta, 1.0f);
  }

  void attention_forward(float* out, float* lse, const float* qkv, int B, int seq, int NH, int NKV,
                         int HD) override {
    attention(out, nullptr, lse, qkv, B, seq, NH, NKV, HD);
  }
  void attention_forward(float* out, std::uint16_t* out_bf16, float* lse, const float* qkv, int B,
                         int seq, int NH, int NKV, int HD) override {
    attention(out, as_bf16(out_bf16), lse, qkv, B, seq, NH, NKV, HD);
  }
  // qkv in bf16: the tensor-core kernels, which round qkv to bf16 as they
  // stage it, read it as it is.
  bool attention_reads_bf16_qkv(int B, int NH, int NKV, int HD) const override {
    const AttentionKernels k = attention_kernels(B, NH, NKV, HD);
    return k == AttentionKernels::kTensorCores64 || k == AttentionKernels::kTensorCores128;
  }
  void attention_forward(float* out, std::uint16_t* out_bf16, float* lse, const std::uint16_t* qkv,
                         int B, int seq, int NH, int NKV, int HD) override {
    attention(out, as_bf16(out_bf16), lse, as_bf16(qkv), B, seq, NH, NKV, HD);
  }
  void attention_backward(float* dqkv, const float* dout, const float* qkv, const float* out,
                          const float* lse, int B, int seq, int NH, int NKV, int HD) override {
    attention_grads(dqkv, dout, qkv, out, lse, B, seq, NH, NKV, HD);
  }
  void attention_backward(float* dqkv, const std::uint16_t* dout, const std::uint16_t* qkv,
                          const std::uint16_t* out, const float* lse, int B, int seq, int NH,
                          int NKV, int HD) override {
    attention_grads(dqkv, as_bf16(dout), as_bf16(qkv), as_bf16(out), lse, B, seq, NH, NKV, HD);
  }
  void attention_backward(std::uint16_t* dqkv, const std::uint16_t* dout, const std::uint16_t* qkv,
                          const std::uint16_t* out, const float* lse, int B, int seq, int NH,
                          int NKV, int HD) override {
    attention_grads(as_bf16(dqkv), as_bf16(dout), as_bf16(qkv), as_bf16(out), lse, B, seq, NH, NKV,
                    HD);
  }
  // In the tensor-core kernels' stores where the head dimension is theirs
  // (64 or 128: each rotated pair is in the two lanes of a row); else the
  // fp32 gradient in scratch of its own and RoPE's backward into dqkv.
  void attention_rope_backward(std::uint16_t* dqkv, const std::uint16_t* dout,
                               const std::uint16_t* qkv, const std::uint16_t* out, const float* lse,
                               int B, int seq, int NH, int NKV, int HD, float theta) override {
    const AttentionKernels kernels = attention_kernels_for(as_bf16(qkv), B, NH, NKV, HD);
    if ((kernels == AttentionKernels::kTensorCores64 && HD == 64) ||
        (kernels == AttentionKernels::kTensorCores128 && HD == 128)) {
      if (B == 0 || seq == 0) return;
      rope_tables(seq, HD, theta);
      attention_grads(as_bf16(dqkv), as_bf16(dout), as_bf16(qkv), as_bf16(out), lse, B, seq, NH,
                      NKV, HD, tc::RopeTables{rope_cos_, rope_sin_});
      return;
    }
    const std::int64_t count = std::int64_t{B} * seq * (NH + 2 * NKV) * HD;
    auto* grad = static_cast<float*>(
        rope_scratch_.get(static_cast<std::size_t>(std::max<std::int64_t>(count, 1)) * 4,
                          "the qkv gradient before RoPE's backward"));
    attention_grads(grad, as_bf16(dout), as_bf16(qkv), as_bf16(out), lse, B, seq, NH, NKV, HD);
    rope(grad, as_bf16(dqkv), B * seq, seq, 0, NH, NKV, HD, theta, -1.0f);
  }
  void attention_kv_forward(float* out, float* kpool, float* vpool, const std::int32_t* blocks,
                            int block_size, const float* qkv, int N, int pos0, int NH, int NKV,
                            int HD) override {
    check_head_dim(HD);
    launch("attention_kv_forward (store)", kv_store_kernel, blocks_for(std::int64_t{N} * NKV * HD),
           kThreads, kpool, vpool, blocks, block_size, qkv, N, pos0, NH, NKV, HD);
    launch("attention_kv_forward", attention_kv_kernel, warps_blocks(std::int64_t{N} * NH),
           kThreads, out, kpool, vpool, blocks, block_size, qkv, N, pos0, NH, NKV, HD,
           1.0f / std::sqrt(static_cast<float>(HD)));
  }

  void crossentropy_forward_backward(float* logits, float* losses, const std::int32_t* targets,
                                     int N, int V, int Vp, float dloss) override {
    if (N == 0) return;
    launch("crossentropy_forward_backward",
           vector_width(Vp, {logits}) == 8 ? crossentropy_kernel<float, 8>
                                           : crossentropy_kernel<float, 1>,
           N, kThreads, logits, losses, targets, V, Vp, dloss);
  }
  void crossentropy_forward_backward(std::uint16_t* logits, float* losses,
                                     const std::int32_t* targets, int N, int V, int Vp,
                                     float dloss) override {
    if (N == 0) return;
    launch("crossentropy_forward_backward (bf16)",
           vector_width(Vp, {logits}) == 8 ? crossentropy_kernel<__nv_bfloat16, 8>
                                           : crossentropy_kernel<__nv_bfloat16, 1>,
           N, kThreads, as_bf16(logits), losses, targets, V, Vp, dloss);
  }
  void crossentropy_part_max(float* row_max, const float* logits, int N, int V, int Vp) override {
    if (N == 0) return;
    launch("crossentropy_part_max", crossentropy_part_max_kernel, N, kThreads, row_max, logits, V,
           Vp);
  }
  void crossentropy_part_sums(float* logits, float* sums, const float* row_max,
                              const std::int32_t* targets, int v0, int N, int V, int Vp,
                              bool keep_exp) override {
    if (N == 0) return;
    launch("crossentropy_part_sums", crossentropy_part_sums_kernel, N, kThreads, logits, sums,
           row_max, targets, v0, V, Vp, keep_exp);
  }
  void crossentropy_part_finish(float* logits, float* losses, const float* row_max,
                                const float* sums, const std::int32_t* targets, int v0, int N,
                                int V, int Vp, float dloss) override {
    if (N == 0) return;
    launch("crossentropy_part_finish", crossentropy_part_finish_kernel, N, kThreads, logits, losses,
           row_max, sums, targets, v0, V, Vp, dloss);
  }

  void copy(float* out, const float* in, std::int64_t count) override {
    if (count == 0 || out == in) return;
    check(cudaMemcpyAsync(out, in, static_cast<std::size_t>(count) * sizeof(float),
                          cudaMemcpyDeviceToDevice, nullptr),
          "copy");
  }
  void fill(float* out, float value, std::int64_t count) override {
    if (count == 0) return;
    const Span span = Span::of(count, {{out, 4}});
    launch("fill", fill_kernel, span.blocks(), kThreads, out, value, span);
  }
  void adamw_update(float* params, const float* grads, float* m, float* v, std::int64_t count,
                    const AdamWUpdate& u) override {
    if (count == 0) return;
    const Span span = Span::of(count, {{params, 4}, {grads, 4}, {m, 4}, {v, 4}});
    launch("adamw_update", adamw_kernel, span.blocks(), kThreads, params, grads, m, v, span, u);
  }
  double sum_of_squares(const float* x, std::int64_t count) override {
    if (count == 0) return 0.0;
    const std::int64_t blocks = (count + kSquaresBlock - 1) / kSquaresBlock;
    double* partial = reinterpret_cast<double*>(scratch(2 * blocks));
    launch("sum_of_squares", squares_kernel, static_cast<unsigned>(blocks), kThreads, partial, x,
           count);
    std::vector<double> host(static_cast<std::size_t>(blocks));
    check(cudaMemcpy(host.data(), partial, host.size() * sizeof(double), cudaMemcpyDeviceToHost),
          "sum_of_squares (copy)");
    double total = 0.0;
    for (const double s : host) total += s;
    return total;
  }
  void scale(float* x, float factor, std::int64_t count) override {
    if (count == 0) return;
    const Span span = Span::of(count, {{x, 4}});
    launch("scale", scale_kernel, span.blocks(), kThreads, x, factor, span);
  }
  void add(float* out, const float* in, std::int64_t count) override {
    if (count == 0) return;
    const Span span = Span::of(count, {{out, 4}, {in, 4}});
    launch("add", add_kernel, span.blocks(), kThreads, out, in, span);
  }

 private:
  // attention_backward, on qkv in fp32 or bf16, writing dqkv in fp32 or
  // (the tensor-core kernels) bf16, and reading dout and the output in
  // fp32 or (the tensor-core kernels) bf16. The tensor-core kernels compute
  // delta from dout and the output rounded to bf16, as their products read
  // dout, so the bits do not depend on which form they are kept in. With
  // rope's tables (the tensor-core kernels, HD 64 or 128 only), the q and k
  // gradients are rotated back as they are stored.
  template <typename In, typename Out, typename D, typename O>
  void attention_grads(Out* dqkv, const D* dout, const In* qkv, const O* out, const float* lse,
                       int B, int seq, int NH, int NKV, int HD, tc::RopeTables rope = {}) {
    check_head_dim(HD);
    const AttentionKernels kernels = attention_kernels_for(qkv, B, NH, NKV, HD);
    if (B == 0 || seq == 0) return;
    const std::int64_t rows = std::int64_t{B} * NH * seq;
    float* delta = scratch(rows);
    const float scale = 1.0f / std::sqrt(static_cast<float>(HD));
    const bool tensor_cores =
        kernels == AttentionKernels::kTensorCores64 || kernels == AttentionKernels::kTensorCores128;
    if (tensor_cores) {
      launch("attention_backward (delta)", attention_delta_kernel<true, D, O>, warps_blocks(rows),
             kThreads, delta, dout, out, B, seq, NH, HD);
    }
    if (kernels == AttentionKernels::kTensorCores64) {
      return tc_backward<64>(dqkv, dout, qkv, lse, delta, B, seq, NH, NKV, HD, scale, rope);
    }
    if (kernels == AttentionKernels::kTensorCores128) {
      return tc_backward<128>(dqkv, dout, qkv, lse, delta, B, seq, NH, NKV, HD, scale, rope);
    }
    if constexpr (std::is_same_v<In, float> && std::is_same_v<Out, float> &&
                  std::is_same_v<D, float> && std::is_same_v<O, float>) {
      launch("attention_backward (delta)", attention_delta_kernel<false, float, float>,
             warps_blocks(rows), kThreads, delta, dout, out, B, seq, NH, HD);
      if (kernels == AttentionKernels::kTiled64) {
        return flash_backward<64>(dqkv, dout, qkv, lse, delta, B, seq, NH, NKV, HD, scale);
      }
      if (kernels == AttentionKernels::kTiled128) {
        return flash_backward<128>(dqkv, dout, qkv, lse, delta, B, seq, NH, NKV, HD, scale);
      }
      launch("attention_backward (dq)", attention_dq_kernel, warps_blocks(rows), kThreads, dqkv,
             dout, qkv, lse, delta, B, seq, NH, NKV, HD, scale);
      launch("attention_backward (dk, dv)", attention_dkv_kernel,
             warps_blocks(std::int64_t{B} * NKV * seq), kThreads, dqkv, dout, qkv, lse, delta, B,
             seq, NH, NKV, HD, scale);
    }
  }
  // attention_forward, on qkv in fp32 or bf16, with its output in bf16 as
  // well where out16 is not null: the tensor-core kernels write both, the
  // others are followed by a rounding pass (head dimensions over 128, with
  // bf16 matmuls).
  template <typename In>
  void attention(float* out, __nv_bfloat16* out16, float* lse, const In* qkv, int B, int seq,
                 int NH, int NKV, int HD) {
    check_head_dim(HD);
    const AttentionKernels kernels = attention_kernels_for(qkv, B, NH, NKV, HD);
    if (B == 0 || seq == 0) return;
    const float scale = 1.0f / std::sqrt(static_cast<float>(HD));
    if (kernels == AttentionKernels::kTensorCores64) {
      return tc_forward<64>(out, out16, lse, qkv, B, seq, NH, NKV, HD, scale);
    }
    if (kernels == AttentionKernels::kTensorCores128) {
      return tc_forward<128>(out, out16, lse, qkv, B, seq, NH, NKV, HD, scale);
    }
    if constexpr (std::is_same_v<In, float>) {
      if (out == nullptr) {
        throw std::logic_error(
            "CUDA attention: an output in bf16 only needs the tensor-core kernels");
      }
      if (kernels == AttentionKernels::kTiled64) {
        flash_forward<64>(out, lse, qkv, B, seq, NH, NKV, HD, scale);
      } else if (kernels == AttentionKernels::kTiled128) {
        flash_forward<128>(out, lse, qkv, B, seq, NH, NKV, HD, scale);
      } else {
        launch("attention_forward", attention_forward_kernel,
               warps_blocks(std::int64_t{B} * NH * seq), kThreads, out, lse, qkv, B, seq, NH, NKV,
               HD, scale);
      }
      if (out16 != nullptr) bf16_copy_into(out16, out, std::int64_t{B} * seq * NH * HD);
    }
  }

  // The matmul ops, on an input in fp32 or in bf16.
  void forward_gemm(float* out, Operand inp, const float* w, const float* bias, int N, int C,
                    int OC, bool accumulate) {
    // The bias in cuBLASLt's epilogue (what out holds as its C when
    // accumulating).
    if (bias != nullptr &&
        lt_matmul(CUBLAS_OP_T, CUBLAS_OP_N, OC, N, C, w, C, inp, C, accumulate ? out : nullptr, out,
                  OC, CUBLASLT_EPILOGUE_BIAS, bias, nullptr, 0, "matmul_forward")) {
      return;
    }
    if (bias != nullptr) {
      launch("matmul_forward (bias)", add_bias_kernel, blocks_for(std::int64_t{N} * OC), kThreads,
             out, bias, N, OC, accumulate);
    }
    const float beta = (accumulate || bias != nullptr) ? 1.0f : 0.0f;
    // Row-major out[N, OC] = inp[N, C] w[OC, C]^T is column-major
    // out^T[OC, N] = w^T... : cuBLAS sees w as [C, OC] and inp as [C, N].
    gemm(CUBLAS_OP_T, CUBLAS_OP_N, OC, N, C, w, C, inp, C, beta, out, OC, "matmul_forward");
  }
  // (A bias gradient sums dout's values, fp32 or bf16, in fp32.)
  void backward_gemms(float* dinp, float* dw, float* dbias, Operand dout, Operand inp,
                      const float* w, int N, int C, int OC) {
    if (bf16_ && N > 0 && C > 0 && OC > 0) {
      // As below, with dout rounded to bf16 once for both GEMMs.
      const __nv_bfloat16* d = rounded(dout, std::int64_t{N} * OC, 1);
      if (dinp != nullptr) {
        gemm_bf16(CUBLAS_OP_N, CUBLAS_OP_N, C, N, OC, rounded(w, std::int64_t{OC} * C, 0), C, d, OC,
                  0.0f, dinp, C, "matmul_backward (input)");
      }
      gemm_bf16(CUBLAS_OP_N, CUBLAS_OP_T, C, OC, N, rounded(inp, std::int64_t{N} * C, 0), C, d, OC,
                1.0f, dw, C, "matmul_backward (weight)");
      if (dbias != nullptr) bias_gradient(dbias, dout, N, OC);
      return;
    }
    if (dinp != nullptr) {
      // dinp[N, C] = dout[N, OC] w[OC, C]
      gemm(CUBLAS_OP_N, CUBLAS_OP_N, C, N, OC, w, C, dout, OC, 0.0f, dinp, C,
           "matmul_backward (input)");
    }
    // dw[OC, C] += dout^T[OC, N] inp[N, C]
    gemm(CUBLAS_OP_N, CUBLAS_OP_T, C, OC, N, inp, C, dout, OC, 1.0f, dw, C,
         "matmul_backward (weight)");
    if (dbias != nullptr) bias_gradient(dbias, dout, N, OC);
  }
  // A backward's output gradient in fp32, bf16 or both (Bf16Inputs).
  static Operand gradient(const float* dout, const std::uint16_t* dout16) {
    if (dout == nullptr && dout16 == nullptr) {
      throw std::invalid_argument("matmul_backward: no output gradient, in fp32 or in bf16");
    }
    Operand d = dout;
    d.bf16 = as_bf16(dout16);
    return d;
  }
  // d after a GEMM that read it as its B operand: in bf16 as it was, or as
  // that GEMM rounded it into scratch slot 1 (B's), for the weight
  // gradient's GEMM to read as it is.
  Operand rounded_in_slot_1(Operand d, int N, int OC) {
    if (d.bf16 == nullptr && bf16_ && N > 0 && OC > 0) {
      d.bf16 = bf16_buffer(std::int64_t{N} * OC, 1);
    }
    return d;
  }
  // dbias += column sums of dout: of its fp32 values where it has them.
  void bias_gradient(float* dbias, Operand dout, int N, int OC) {
    if (dout.f32 != nullptr) {
      column_sums<kReduceRows>(dbias, dout.f32, N, OC);
    } else {
      column_sums<kReduceRows>(dbias, dout.bf16, N, OC);
    }
  }
  // One cuBLASLt GEMM: out = residual + inp w^T + bias, the residual as its
  // C (no copy into out first); else the copy and an accumulating GEMM.
  void residual_gemm(float* out, const float* residual, Operand inp, const float* w,
                     const float* bias, int N, int C, int OC) {
    if (lt_matmul(CUBLAS_OP_T, CUBLAS_OP_N, OC, N, C, w, C, inp, C, residual, out, OC,
                  bias != nullptr ? CUBLASLT_EPILOGUE_BIAS : CUBLASLT_EPILOGUE_DEFAULT, bias,
                  nullptr, 0, "matmul_residual_forward")) {
      return;
    }
    if (out != residual) copy(out, residual, std::int64_t{N} * OC);
    forward_gemm(out, inp, w, bias, N, C, OC, true);
  }
  // The input gradient's GEMM with GELU's gradient (from pre) in its
  // epilogue, and the weight and bias gradients as matmul_backward's; else
  // matmul_backward and gelu_backward in place.
  void backward_gelu_gemms(float* dpre, float* dw, float* dbias, const float* dout, Operand inp,
                           const float* w, const float* pre, int N, int C, int OC) {
    if (C % 8 == 0 && lt_matmul(CUBLAS_OP_N, CUBLAS_OP_N, C, N, OC, w, C, dout, OC, nullptr, dpre,
                                C, CUBLASLT_EPILOGUE_DGELU, nullptr, const_cast<float*>(pre), C,
                                "matmul_backward_gelu (input)")) {
      // With bf16, lt_matmul left dout's bf16 copy in scratch slot 1 (its B
      // operand's): the weight gradient's GEMM reads it as it is.
      Operand d = dout;
      if (bf16_) d.bf16 = bf16_buffer(std::int64_t{N} * OC, 1);
      backward_gemms(nullptr, dw, dbias, d, inp, w, N, C, OC);
      return;
    }
    backward_gemms(dpre, dw, dbias, dout, inp, w, N, C, OC);
    gelu_backward(dpre, pre, dpre, std::int64_t{N} * C);
  }

  // Which attention kernels a shape runs, the same for forward and backward
  // (backward reads the forward's log-sum-exp): the tiled ones take head
  // dimensions up to 128 and one grid row per (sequence, head), at most
  // 65535 of them, on tensor cores with bf16 matmuls; warp-per-row kernels
  // the rest.
  enum class AttentionKernels { kTensorCores64, kTensorCores128, kTiled64, kTiled128, kPerRow };
  AttentionKernels attention_kernels(int B, int NH, int NKV, int HD) const {
    const bool fits = std::int64_t{B} * NH <= 65535 && std::int64_t{B} * NKV <= 65535;
    if (!fits || HD > 128) return AttentionKernels::kPerRow;
    if (bf16_)
      return HD <= 64 ? AttentionKernels::kTensorCores64 : AttentionKernels::kTensorCores128;
    return HD <= 64 ? AttentionKernels::kTiled64 : AttentionKernels::kTiled128;
  }
  // The tensor-core kernels take qkv in fp32 or bf16, the others in fp32.
  template <typename In>
  AttentionKernels attention_kernels_for(const In*, int B, int NH, int NKV, int HD) const {
    const AttentionKernels k = attention_kernels(B, NH, NKV, HD);
    if constexpr (!std::is_same_v<In, float>) {
      if (k != AttentionKernels::kTensorCores64 && k != AttentionKernels::kTensorCores128) {
        throw std::logic_error("CUDA attention: qkv in bf16 needs the tensor-core kernels");
      }
    }
    return k;
  }

  static unsigned tiles(int rows, int per_tile) {
    return static_cast<unsigned>((rows + per_tile - 1) / per_tile);
  }
  template <int kMaxHD>
  void flash_forward(float* out, float* lse, const float* qkv, int B, int seq, int NH, int NKV,
                     int HD, float scale) {
    launch("attention_forward", flash_forward_kernel<kMaxHD>,
           dim3(tiles(seq, kFlashRows), static_cast<unsigned>(B * NH)),
           kFlashRows * RowSplit<kMaxHD, kForwardCols>::kSplit, out, lse, qkv, seq, NH, NKV, HD,
           scale);
  }
  template <int kMaxHD>
  void flash_backward(float* dqkv, const float* dout, const float* qkv, const float* lse,
                      const float* delta, int B, int seq, int NH, int NKV, int HD, float scale) {
    launch("attention_backward (dq)", flash_dq_kernel<kMaxHD>,
           dim3(tiles(seq, kFlashRows), static_cast<unsigned>(B * NH)),
           kFlashRows * RowSplit<kMaxHD, kDqCols>::kSplit, dqkv, dout, qkv, lse, delta, seq, NH,
           NKV, HD, scale);
    using Kv = FlashKv<kMaxHD>;
    launch("attention_backward (dk, dv)", flash_dkv_kernel<kMaxHD>,
           dim3(tiles(seq, Kv::kKeys), static_cast<unsigned>(B * NKV)), Kv::kBlock, dqkv, dout, qkv,
           lse, delta, seq, NH, NKV, HD, scale);
  }

  template <int kHD, typename In>
  void tc_forward(float* out, __nv_bfloat16* out16, float* lse, const In* qkv, int B, int seq,
                  int NH, int NKV, int HD, float scale) {
    using T = tc::Shape<kHD>;
    launch("attention_forward (tensor cores)", tc::forward_kernel<kHD, In>,
           dim3(tiles(seq, T::kRows), static_cast<unsigned>(B * NH)), T::kRows * 2, out, out16, lse,
           qkv, seq, NH, NKV, HD, scale);
  }
  template <int kHD, typename In, typename Out, typename D>
  void tc_backward(Out* dqkv, const D* dout, const In* qkv, const float* lse, const float* delta,
                   int B, int seq, int NH, int NKV, int HD, float scale, tc::RopeTables rope) {
    using T = tc::Shape<kHD>;
    launch("attention_backward (dq, tensor cores)", tc::dq_kernel<kHD, In, Out, D>,
           dim3(tiles(seq, T::kDqRows), static_cast<unsigned>(B * NH)), T::kDqRows * 2, dqkv, dout,
           qkv, lse, delta, seq, NH, NKV, HD, scale, rope);
    launch("attention_backward (dk, dv, tensor cores)", tc::dkv_kernel<kHD, In, Out, D>,
           dim3(tiles(seq, T::kKeyRows), static_cast<unsigned>(B * NKV)), T::kKeyRows * 2, dqkv,
           dout, qkv, lse, delta, seq, NH, NKV, HD, scale, rope);
  }

  static void check_head_dim(int HD) {
    if (HD > kWarp * kMaxPerLane) {
      throw std::invalid_argument("CUDA attention: head dimension " + std::to_string(HD) +
                                  " is over the supported " + std::to_string(kWarp * kMaxPerLane));
    }
  }

  // At least `floats` floats of device scratch (the reductions' partial sums).
  float* scratch(std::int64_t floats) {
    return static_cast<float*>(scratch_.get(
        static_cast<std::size_t>(std::max<std::int64_t>(floats, 1)) * 4, "the backend's scratch"));
  }

  // A bf16 copy of count floats in bf16 scratch `slot` (0 or 1: a GEMM's two
  // operands).
  const __nv_bfloat16* bf16_copy(const float* x, std::int64_t count, int slot) {
    __nv_bfloat16* out = bf16_buffer(count, slot);
    bf16_copy_into(out, x, count);
    return out;
  }
  // out = x rounded to bf16, count values.
  void bf16_copy_into(__nv_bfloat16* out, const float* x, std::int64_t count) {
    if (count == 0) return;
    const Span span = Span::of(count, {{out, 2}, {x, 4}});
    launch("bf16 copy", to_bf16_kernel, span.blocks(), kThreads, out, x, span);
  }
  // Scratch slot `slot` for `count` bf16 values (where bf16_copy puts them).
  __nv_bfloat16* bf16_buffer(std::int64_t count, int slot) {
    return static_cast<__nv_bfloat16*>(bf16_scratch_[slot].get(
        static_cast<std::size_t>(count) * 2, "the bf16 copies of matmul operands"));
  }

  // cublasSgemm's contract (column-major C[m, n] = alpha op(A) op(B) + beta
  // C), in fp32 or, with bf16, on bf16 copies of A and B with fp32
  // accumulation and an fp32 C (cublasGemmEx, CUBLAS_COMPUTE_32F).
  void gemm(cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k, Operand A, int lda,
            Operand B, int ldb, float beta, float* C, int ldc, const char* what) {
    const float one = 1.0f;
    if (!bf16_ || k == 0) {
      // (k = 0: C = beta C, nothing to round or read; bf16 operands come
      // only with bf16 matmuls.)
      check_blas(cublasSgemm(blas_, ta, tb, m, n, k, &one, A.f32, lda, B.f32, ldb, &beta, C, ldc),
                 what);
      return;
    }
    if (m == 0 || n == 0) return;
    gemm_bf16(ta, tb, m, n, k, rounded(A, operand_extent(ta, m, k, lda), 0), lda,
              rounded(B, operand_extent(tb, k, n, ldb), 1), ldb, beta, C, ldc, what);
  }
  // An operand in bf16: as it is, from the weights' copy, or rounded into
  // bf16 scratch `slot`.
  const __nv_bfloat16* rounded(Operand x, std::int64_t count, int slot) {
    x = with_weight_copy(x, count);
    return x.bf16 != nullptr ? x.bf16 : bf16_copy(x.f32, count, slot);
  }
  // x with its bf16 form from use_weight_copy's copy where it has one there
  // (count values from x inside the weights).
  Operand with_weight_copy(Operand x, std::int64_t count) const {
    if (x.bf16 != nullptr || x.f32 == nullptr || weights_ == nullptr) return x;
    // (Compared as addresses: x need not point into the weights.)
    const auto at = reinterpret_cast<std::uintptr_t>(x.f32);
    const auto begin = reinterpret_cast<std::uintptr_t>(weights_);
    if (at >= begin && count <= weight_count_ &&
        (at - begin) / sizeof(float) <= static_cast<std::uintptr_t>(weight_count_ - count)) {
      x.bf16 = weight_copy_ + (x.f32 - weights_);
    }
    return x;
  }
  // The same on operands already in bf16 (fp32 accumulation and C).
  void gemm_bf16(cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                 const __nv_bfloat16* A, int lda, const __nv_bfloat16* B, int ldb, float beta,
                 float* C, int ldc, const char* what) {
    const float one = 1.0f;
    check_blas(cublasGemmEx(blas_, ta, tb, m, n, k, &one, A, CUDA_R_16BF, lda, B, CUDA_R_16BF, ldb,
                            &beta, C, CUDA_R_32F, ldc, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
               what);
  }

  // D[m, n] = op(A) op(B) (+ Cin when not null, of D's shape and leading
  // dimension; it may be D), then `epilogue` (column-major; fp32 D and
  // accumulation), through cuBLASLt: A and B are fp32 (fp32 arithmetic) or,
  // with bf16, in bf16 (rounded to copies first, as gemm() does, unless
  // they are bf16 already). `bias` has m
  // values; `aux` (m x n, ld ldaux, of D's type) is GELU's input, written by
  // GELU_AUX and read by DGELU. False, having written nothing, when cuBLASLt offers
  // no algorithm for the problem: the caller then runs gemm() and kernels.
  // The heuristic's answer is kept per problem (shapes, epilogue and the
  // operands' alignments, which it is told: tensors inside the flat
  // parameter buffer are not aligned as cudaMalloc's are).
  // D is fp32, or bf16 with d_type CUDA_R_16BF (no Cin then: the epilogue
  // computes in fp32 and rounds as it stores).
  bool lt_matmul(cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k, Operand A,
                 int lda, Operand B, int ldb, const float* Cin, void* D, int ldd,
                 cublasLtEpilogue_t epilogue, const float* bias, void* aux, std::int64_t ldaux,
                 const char* what, cudaDataType d_type = CUDA_R_32F) {
    if (m <= 0 || n <= 0 || k <= 0) return false;
    if (d_type != CUDA_R_32F && Cin != nullptr) {
      throw std::logic_error("lt_matmul: a C input needs an fp32 output");
    }
    // The epilogue's vectors and buffers are read and written without being
    // described to the heuristic: only 16-byte aligned ones go to it.
    if ((bias != nullptr && alignment(bias) < 16) || (aux != nullptr && alignment(aux) < 16)) {
      return false;
    }
    if (lt_ == nullptr) check_blas(cublasLtCreate(&lt_), "cublasLtCreate");
    // With bf16, fp32 operands are multiplied from the bf16 scratch buffers:
    // their addresses are known (and told to the heuristic) before the
    // copies are made, which happens only once cuBLASLt is to run.
    const std::int64_t a_count = operand_extent(ta, m, k, lda);
    const std::int64_t b_count = operand_extent(tb, k, n, ldb);
    if (bf16_) {
      A = with_weight_copy(A, a_count);
      B = with_weight_copy(B, b_count);
    }
    const auto where = [&](Operand x, std::int64_t count, int slot) -> const void* {
      if (!bf16_) return x.f32;
      return x.bf16 != nullptr ? x.bf16 : bf16_buffer(count, slot);
    };
    const void* a = where(A, a_count, 0);
    const void* b = where(B, b_count, 1);
    const void* c = Cin != nullptr ? Cin : D;
    LtProblem problem{ta,
                      tb,
                      m,
                      n,
                      k,
                      lda,
                      ldb,
                      ldd,
                      ldaux,
                      epilogue,
                      bias != nullptr,
                      aux != nullptr,
                      Cin != nullptr,
                      d_type,
                      {}};
    problem.align = {alignment(a), alignment(b), alignment(c), alignment(D)};
    struct Objects {
      cublasLtMatmulDesc_t desc = nullptr;
      cublasLtMatrixLayout_t a = nullptr, b = nullptr, d = nullptr;
      cublasLtMatmulPreference_t pref = nullptr;
      ~Objects() {
        if (pref != nullptr) cublasLtMatmulPreferenceDestroy(pref);
        if (d != nullptr) cublasLtMatrixLayoutDestroy(d);
        if (b != nullptr) cublasLtMatrixLayoutDestroy(b);
        if (a != nullptr) cublasLtMatrixLayoutDestroy(a);
        if (desc != nullptr) cublasLtMatmulDescDestroy(desc);
      }
    } o;
    const cudaDataType type = bf16_ ? CUDA_R_16BF : CUDA_R_32F;
    check_blas(cublasLtMatmulDescCreate(&o.desc, CUBLAS_COMPUTE_32F, CUDA_R_32F), what);
    const auto set = [&](cublasLtMatmulDescAttributes_t attribute, const auto& value) {
      check_blas(cublasLtMatmulDescSetAttribute(o.desc, attribute, &value, sizeof(value)), what);
    };
    set(CUBLASLT_MATMUL_DESC_TRANSA, ta);
    set(CUBLASLT_MATMUL_DESC_TRANSB, tb);
    set(CUBLASLT_MATMUL_DESC_EPILOGUE, epilogue);
    if (bias != nullptr) {
      set(CUBLASLT_MATMUL_DESC_BIAS_POINTER, bias);
      // fp32 whatever D's type (cuBLASLt takes D's type by default).
      set(CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, std::int32_t{CUDA_R_32F});
    }
    if (aux != nullptr) {
      set(CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, aux);
      set(CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, ldaux);
    }
    check_blas(cublasLtMatrixLayoutCreate(&o.a, type, ta == CUBLAS_OP_N ? m : k,
                                          ta == CUBLAS_OP_N ? k : m, lda),
               what);
    check_blas(cublasLtMatrixLayoutCreate(&o.b, type, tb == CUBLAS_OP_N ? k : n,
                                          tb == CUBLAS_OP_N ? n : k, ldb),
               what);
    check_blas(cublasLtMatrixLayoutCreate(&o.d, d_type, m, n, ldd), what);
    auto known = lt_algos_.find(problem);
    if (known == lt_algos_.end()) {
      check_blas(cublasLtMatmulPreferenceCreate(&o.pref), what);
      // Each value has cublasLt.h's type: uint64_t, or uint32_t for alignments.
      const auto prefer = [&](cublasLtMatmulPreferenceAttributes_t attribute, auto value) {
        check_blas(cublasLtMatmulPreferenceSetAttribute(o.pref, attribute, &value, sizeof(value)),
                   what);
      };
      prefer(CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, std::uint64_t{kLtWorkspace});
      prefer(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, problem.align[0]);
      prefer(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, problem.align[1]);
      prefer(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, problem.align[2]);
      prefer(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, problem.align[3]);
      cublasLtMatmulHeuristicResult_t best{};
      int found = 0;
      const cublasStatus_t asked =
          cublasLtMatmulAlgoGetHeuristic(lt_, o.desc, o.a, o.b, o.d, o.d, o.pref, 1, &best, &found);
      std::optional<cublasLtMatmulAlgo_t> algo;
      if (asked == CUBLAS_STATUS_SUCCESS && found > 0) algo = best.algo;
      known = lt_algos_.emplace(problem, algo).first;
    }
    if (!known->second) return false;
    if (bf16_) {
      rounded(A, a_count, 0);
      rounded(B, b_count, 1);
    }
    const float one = 1.0f, beta = Cin != nullptr ? 1.0f : 0.0f;
    const cublasStatus_t ran = cublasLtMatmul(
        lt_, o.desc, &one, a, o.a, b, o.b, &beta, c, o.d, D, o.d, &*known->second,
        lt_workspace_.get(kLtWorkspace, "the cuBLASLt workspace"), kLtWorkspace, nullptr);
    if (ran == CUBLAS_STATUS_NOT_SUPPORTED) {  // refused before writing: the old path, from now on
      known->second.reset();
      return false;
    }
    check_blas(ran, what);
    return true;
  }

  template <int kRows, typename I>
  void column_sums(float* out, const I* x, int N, int C) {
    if (N == 0) return;
    const int blocks = (N + kRows - 1) / kRows;
    float* partial = scratch(std::int64_t{blocks} * C);
    launch("column sums", column_partial_kernel<kRows, I>, dim3(blocks_for(C), row_blocks(blocks)),
           kThreads, partial, x, N, C);
    launch("column sums (finish)", column_finish_kernel, blocks_for(C), kThreads, out, partial,
           blocks, C);
  }

  void norm_weight_grads(float* dw, float* db, const float* dout, const float* inp,
                         const float* mean, const float* rstd, int N, int C) {
    if (N == 0) return;
    const int blocks = (N + kNormRows - 1) / kNormRows;
    float* pdw = scratch(2 * std::int64_t{blocks} * C);
    float* pdb = db != nullptr ? pdw + std::int64_t{blocks} * C : nullptr;
    launch("norm weight gradients", norm_weight_partial_kernel,
           dim3(blocks_for(C), row_blocks(blocks)), kThreads, pdw, pdb, dout, inp, mean, rstd, N,
           C);
    launch("norm weight gradients (finish)", column_finish_kernel, blocks_for(C), kThreads, dw, pdw,
           blocks, C);
    if (db != nullptr) {
      launch("norm bias gradients (finish)", column_finish_kernel, blocks_for(C), kThreads, db, pdb,
             blocks, C);
    }
  }

  // The CPU backend's angle table (cpu::rope_table, computed in double),
  // copied to the device once per shape and grown as positions grow. out:
  // qkv (in place) or a bf16 copy.
  template <typename O>
  void rope(const float* qkv, O* out, int rows, int seq, int pos0, int NH, int NKV, int HD,
            float theta, float sign) {
    rope_tables(pos0 + seq, HD, theta);
    const std::int64_t count = std::int64_t{rows} * (NH + NKV) * (HD / 2);
    if (count == 0) return;
    launch("rope", rope_kernel<O>, blocks_for(count), kThreads, qkv, out, rope_cos_, rope_sin_,
           rows, seq, pos0, NH, NKV, HD, sign);
  }
  // rope_cos_ and rope_sin_ for at least `positions` positions of head
  // dimension HD and this theta (made again where they are not).
  void rope_tables(int positions, int HD, float theta) {
    if (positions > rope_positions_ || HD != rope_head_dim_ || theta != rope_theta_) {
      const int grown = (positions + 255) / 256 * 256;
      const std::size_t n = static_cast<std::size_t>(grown) * (HD / 2);
      std::vector<float> cos_t(n), sin_t(n);
      cpu::rope_table(cos_t.data(), sin_t.data(), grown, HD, theta);
      if (rope_cos_ != nullptr) check(cudaFree(rope_cos_), "cudaFree (rope)");
      if (rope_sin_ != nullptr) check(cudaFree(rope_sin_), "cudaFree (rope)");
      rope_cos_ = rope_sin_ = nullptr;
      rope_positions_ = 0;  // no tables, should an allocation below fail
      rope_cos_ = static_cast<float*>(device_malloc(n * sizeof(float), "a RoPE table"));
      rope_sin_ = static_cast<float*>(device_malloc(n * sizeof(float), "a RoPE table"));
      check(cudaMemcpy(rope_cos_, cos_t.data(), n * sizeof(float), cudaMemcpyHostToDevice),
            "rope table");
      check(cudaMemcpy(rope_sin_, sin_t.data(), n * sizeof(float), cudaMemcpyHostToDevice),
            "rope table");
      rope_positions_ = grown;
      rope_head_dim_ = HD;
      rope_theta_ = theta;
    }
  }

  // cuBLASLt's workspace: what its heuristics may use for the GEMMs here.
  static constexpr std::size_t kLtWorkspace = std::size_t{32} << 20;

  int device_;
  bool bf16_;
  cublasHandle_t blas_ = nullptr;
  cublasLtHandle_t lt_ = nullptr;  // made at the first cuBLASLt GEMM
  Scratch lt_workspace_;
  // A cuBLASLt problem: what its heuristic's answer depends on.
  struct LtProblem {
    cublasOperation_t ta, tb;
    int m, n, k, lda, ldb, ldd;
    std::int64_t ldaux;
    cublasLtEpilogue_t epilogue;
    bool bias, aux, c;
    cudaDataType d_type;
    std::array<std::uint32_t, 4> align;  // of A, B, C and D, in bytes
    auto key() const {
      return std::tie(ta, tb, m, n, k, lda, ldb, ldd, ldaux, epilogue, bias, aux, c, d_type, align);
    }
    bool operator<(const LtProblem& o) const { return key() < o.key(); }
  };
  // The heuristic's algorithm per problem (none: cuBLASLt has none).
  std::map<LtProblem, std::optional<cublasLtMatmulAlgo_t>> lt_algos_;
  Scratch scratch_;
  Scratch bf16_scratch_[2];
  Scratch rope_scratch_;  // attention_rope_backward's fp32 gradient, where not fused
  // use_weight_copy's: operands inside [weights_, weights_ + weight_count_)
  // are read from weight_copy_.
  const float* weights_ = nullptr;
  const __nv_bfloat16* weight_copy_ = nullptr;
  std::int64_t weight_count_ = 0;
  float* rope_cos_ = nullptr;
  float* rope_sin_ = nullptr;
  int rope_positions_ = 0, rope_head_dim_ = 0;
  float rope_theta_ = 0.0f;
};

}  // namespace

std::string cuda_unavailable_reason() {
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) {
    cudaGetLastError();  // clear the sticky error for later calls
    return std::string("no usable CUDA device: ") + cudaGetErrorString(err);
  }
  if (count == 0) return "no CUDA device present";
  return "";
}

std::unique_ptr<Backend<float>> make_cuda_backend(int device, Precision precision) {
  return std::make_unique<CudaBackend>(device, precision);
}

namespace {

__global__ void fill_bf16_kernel(__nv_bfloat16* x, std::int64_t count) {
  for (std::int64_t i = first_index(); i < count; i += index_stride()) {
    x[i] = __float2bfloat16(static_cast<float>(i % 13) * 0.01f);
  }
}

}  // namespace

double cuda_bf16_gemm_gflops(int M, int N, int K, int device) {
  check(cudaSetDevice(device), "cudaSetDevice");
  const std::int64_t a = std::int64_t{M} * K, b = std::int64_t{K} * N;
  __nv_bfloat16 *A = nullptr, *B = nullptr;
  float* C = nullptr;
  cublasHandle_t blas = nullptr;
  cudaEvent_t start = nullptr, stop = nullptr;
  double best_ms = 1e30;
  try {
    check(cudaMalloc(&A, static_cast<std::size_t>(a) * sizeof(__nv_bfloat16)), "cudaMalloc");
    check(cudaMalloc(&B, static_cast<std::size_t>(b) * sizeof(__nv_bfloat16)), "cudaMalloc");
    check(cudaMalloc(&C, static_cast<std::size_t>(M) * N * sizeof(float)), "cudaMalloc");
    launch("bf16 fill", fill_bf16_kernel, blocks_for(a), kThreads, A, a);
    launch("bf16 fill", fill_bf16_kernel, blocks_for(b), kThreads, B, b);
    check_blas(cublasCreate(&blas), "cublasCreate");
    check(cudaEventCreate(&start), "cudaEventCreate");
    check(cudaEventCreate(&stop), "cudaEventCreate");
    const float one = 1.0f, zero = 0.0f;
    for (int rep = 0; rep < 12; ++rep) {
      check(cudaEventRecord(start), "cudaEventRecord");
      // Column-major C^T[N, M] = B^T[N, K] A^T[K, M]: row-major C = A B.
      check_blas(cublasGemmEx(blas, CUBLAS_OP_N, CUBLAS_OP_N, N, M, K, &one, B, CUDA_R_16BF, N, A,
                              CUDA_R_16BF, K, &zero, C, CUDA_R_32F, N, CUBLAS_COMPUTE_32F,
                              CUBLAS_GEMM_DEFAULT),
                 "bf16 GEMM");
      check(cudaEventRecord(stop), "cudaEventRecord");
      check(cudaEventSynchronize(stop), "cudaEventSynchronize");
      float ms = 0;
      check(cudaEventElapsedTime(&ms, start, stop), "cudaEventElapsedTime");
      if (rep >= 2) best_ms = std::min(best_ms, static_cast<double>(ms));  // after warm-up
    }
  } catch (...) {
    cudaFree(A);
    cudaFree(B);
    cudaFree(C);
    if (blas != nullptr) cublasDestroy(blas);
    if (start != nullptr) cudaEventDestroy(start);
    if (stop != nullptr) cudaEventDestroy(stop);
    throw;
  }
  cudaFree(A);
  cudaFree(B);
  cudaFree(C);
  cublasDestroy(blas);
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  return 2.0 * M * N * K / (best_ms * 1e-3) * 1e-9;
}

}  // namespace BOREALIS_CUDA_NAMESPACE
