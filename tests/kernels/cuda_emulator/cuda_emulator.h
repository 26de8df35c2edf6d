// The CUDA runtime and cuBLAS, as far as the CUDA backend uses them, run on
// the CPU, so that the backend's own source (src/kernels/cuda/
// cuda_backend.cu) is compiled by the host compiler and its kernels execute
// in the tests on machines without a GPU (tests/kernels/cuda_emulator/
// emulated_cuda_backend.cpp). It checks what a GPU would not forgive, with
// an error that names the kernel:
//
//  - every thread of a block is a fiber of its own; blocks run one after
//    another, not in index order (a block that reads what another block of
//    the same launch writes sees it early or late). __syncthreads() waits
//    for every thread of the block that has not returned, a warp shuffle
//    for all 32 lanes of the warp (full masks only). A thread that can
//    never get past one (a barrier in a branch that not all threads take,
//    a shuffle after some lanes returned) is an error, not a hang;
//  - between barriers, threads run in a shuffled (fixed) order, not in index
//    order, so that a shared-memory read that is missing its barrier sees
//    another thread's write early or late and the result goes wrong. In
//    two blocks of every three, one warp at a time runs as far as it can
//    (through its shuffles and wmma calls, to the next __syncthreads)
//    before the next warp starts, the warps in a shuffled order and its
//    reverse in turn: a missing __syncthreads between one warp's writes
//    and another's reads shows even where warp-level synchronization sits
//    between them (interleaved, every thread reaches its next shuffle
//    before any warp's shuffle completes, which hides it); wmma
//    loads and stores move each lane's share of a tile as the lane gets
//    there, so a missing __syncwarp() around them shows the same way;
//    each block's shared arrays start as NaNs (fresh_shared below), so a
//    read of shared memory the block has not written shows;
//  - device memory is host memory in mappings of its own that end at an
//    inaccessible page: a kernel that reads or writes past the end of an
//    allocation stops with a message naming the kernel, its block and its
//    thread. New allocations hold NaNs (all bits set), so memory read
//    before it is written shows up in results;
//  - a kernel's pointer arguments must point into device memory, copies
//    must go in the direction they say, and launch configurations must be
//    ones CUDA accepts (1..1024 threads a block, grid limits);
//  - cublasSgemm and cublasGemmEx follow cuBLAS's column-major contract and
//    reject a leading dimension or an operand extent that cuBLAS would not
//    accept or would read past.
//
// It is not a timing model and says nothing of speed; results are computed
// in fp32 as on a GPU but in another order, so the tests compare them with
// the CPU backend at the CUDA tests' tolerances. What only a GPU shows
// (memory ordering across blocks, the real cuBLAS, the compiler for sm_90)
// still needs one: scripts/device-check.sh.
#pragma once

#include <array>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

// ---- CUDA's built-in vocabulary ---------------------------------------------

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __align__(n) __attribute__((aligned(n)))
#define __shared__ static  // one block runs at a time: a static is the block's shared memory

struct uint3 {
  unsigned x, y, z;
};

struct dim3 {
  unsigned x, y, z;
  dim3(unsigned vx = 1, unsigned vy = 1, unsigned vz = 1) : x(vx), y(vy), z(vz) {}  // NOLINT
};

namespace borealis::cuda_emulator {
const uint3& thread_index();
const uint3& block_index();
const dim3& block_dim();
const dim3& grid_dim();
void syncthreads();
// A full-warp exchange: this lane offers `value` (bytes <= 8) and receives
// what lane `src` offered (its own value when src is outside the warp).
std::uint64_t exchange(unsigned mask, std::uint64_t value, std::size_t bytes, int src);
int lane();
int warp();  // the running thread's warp in its block
// Stops the running kernel with an error naming it, its block and `why`
// (a use of a device function that CUDA does not define).
[[noreturn]] void kernel_error(const std::string& why);
// A block's shared memory holds, on a GPU, whatever was there before the
// block. Kernels name their shared arrays first thing (the backend's
// fresh_shared()); here the block's first thread to name one fills it with
// NaNs (all bits set), so that a read of a value the block has not written
// shows in the results (a static keeps the last block's values otherwise).
void fresh_shared_array(void* array, std::size_t bytes);
template <typename... T>
void fresh_shared(T&... arrays) {
  (fresh_shared_array(static_cast<void*>(&arrays), sizeof(arrays)), ...);
}
}  // namespace borealis::cuda_emulator

#define threadIdx (::borealis::cuda_emulator::thread_index())
#define blockIdx (::borealis::cuda_emulator::block_index())
#define blockDim (::borealis::cuda_emulator::block_dim())
#define gridDim (::borealis::cuda_emulator::grid_dim())

inline void __syncthreads() {
  borealis::cuda_emulator::syncthreads();
}

namespace borealis::cuda_emulator {
template <typename T>
T shuffle(unsigned mask, T value, int src) {
  static_assert(std::is_trivially_copyable_v<T> && sizeof(T) <= 8, "shuffles move up to 8 bytes");
  std::uint64_t bits = 0;
  std::memcpy(&bits, &value, sizeof(T));
  bits = exchange(mask, bits, sizeof(T), src);
  T out;
  std::memcpy(&out, &bits, sizeof(T));
  return out;
}
}  // namespace borealis::cuda_emulator

template <typename T>
T __shfl_xor_sync(unsigned mask, T value, int lane_mask, int width = 32) {
  const int lane = borealis::cuda_emulator::lane();
  const int src = (lane ^ lane_mask) < (lane / width + 1) * width ? lane ^ lane_mask : lane;
  return borealis::cuda_emulator::shuffle(mask, value, src);
}
template <typename T>
T __shfl_sync(unsigned mask, T value, int src_lane, int width = 32) {
  const int lane = borealis::cuda_emulator::lane();
  return borealis::cuda_emulator::shuffle(mask, value, lane / width * width + src_lane % width);
}
template <typename T>
T __shfl_down_sync(unsigned mask, T value, unsigned delta, int width = 32) {
  const int lane = borealis::cuda_emulator::lane();
  const int src =
      lane % width + static_cast<int>(delta) < width ? lane + static_cast<int>(delta) : lane;
  return borealis::cuda_emulator::shuffle(mask, value, src);
}

inline float rsqrtf(float x) {
  return 1.0f / std::sqrt(x);
}
inline int min(int a, int b) {
  return a < b ? a : b;
}
inline int max(int a, int b) {
  return a > b ? a : b;
}

// bf16 storage with round-to-nearest-even conversion, as cuda_bf16.h's.
struct __nv_bfloat16 {
  std::uint16_t bits;
};
inline __nv_bfloat16 __float2bfloat16(float f) {
  std::uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return {static_cast<std::uint16_t>((u >> 16) | 0x40u)};
  u += 0x7fffu + ((u >> 16) & 1u);
  return {static_cast<std::uint16_t>(u >> 16)};
}
inline float __bfloat162float(__nv_bfloat16 h) {
  const std::uint32_t u = static_cast<std::uint32_t>(h.bits) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// ---- warp matrix multiply-accumulate (mma.h's nvcuda::wmma) -------------------
//
// The tile shape 16 x 16 x 16 with bf16 inputs and fp32 accumulators. Which
// elements a lane holds is unspecified in CUDA: code may apply the same
// operation to every element of x, or one that depends on what the same
// fragment type loaded from a matrix (each element's row, say), but may not
// assume an order. Here every lane holds the whole tile, an accumulator's
// in column-major order (x[c * 16 + r] is row r, column c), so that code
// that takes x[e] for row e / 16 (row-major order) goes wrong.
// The _sync calls are warp-collective, as in CUDA: all 32 lanes must make
// them (a shuffle checks). A matrix in memory must be laid out as CUDA
// requires (a 256-bit aligned pointer, a leading dimension of a multiple of
// 16 bytes), or the kernel stops with an error.
//
// Memory is read and written as a GPU's lanes do, each its own share of the
// tile (8 of the 256 values: here rows lane / 4 and lane / 4 + 8, columns
// 2 * (lane % 4) + {0, 1} and those + 8, sm_80's accumulator layout): a
// load reads each lane's share as the lane arrives, before the others have
// (then every lane has the whole tile); a store writes each lane's share as
// the lane goes on. Lanes that pass values through memory to a load, or
// read values of a store's other lanes, therefore need __syncwarp()
// between, as CUDA's memory model requires (the guide says a load waits for
// every lane to arrive, not that their writes are seen). fill_fragment
// (not a _sync call) waits for no other lane.
namespace nvcuda::wmma {
struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

template <typename Use, int M, int N, int K, typename T, typename Layout = void>
struct fragment {
  static_assert(M == 16 && N == 16 && K == 16, "the emulator has the 16 x 16 x 16 shape only");
  static constexpr int num_elements = 256;  // a 16 x 16 tile, row-major
  T x[num_elements];
};

namespace detail {
inline void converged() {
  borealis::cuda_emulator::exchange(0xffffffffu, 0, 1, borealis::cuda_emulator::lane());
}
inline float value(float v) {
  return v;
}
inline float value(__nv_bfloat16 v) {
  return __bfloat162float(v);
}
// What CUDA requires of a matrix in memory: a 256-bit aligned pointer and a
// leading dimension of a multiple of 16 bytes (8 bf16 values, 4 floats).
template <typename T>
void check_matrix(const char* what, const T* p, unsigned ldm) {
  if (reinterpret_cast<std::uintptr_t>(p) % 32 != 0) {
    borealis::cuda_emulator::kernel_error(std::string("wmma::") + what +
                                          ": the matrix pointer is not 256-bit aligned");
  }
  if (ldm * sizeof(T) % 16 != 0) {
    borealis::cuda_emulator::kernel_error(std::string("wmma::") + what + ": ldm " +
                                          std::to_string(ldm) + " is not a multiple of 16 bytes");
  }
}
// f(r, c) for each value (row r, column c) of the running lane's share.
template <typename F>
void for_share(F f) {
  const auto lane = static_cast<unsigned>(borealis::cuda_emulator::lane());
  for (const unsigned r : {lane / 4, lane / 4 + 8}) {
    for (const unsigned c : {0u, 1u, 8u, 9u}) f(r, 2 * (lane % 4) + c);
  }
}
// fragment x = the tile at(r, c) reads from memory: each lane reads its
// share into its warp's staging tile as it arrives; once all have, each
// copies the whole tile (and none goes on until all have copied it).
template <typename T, typename At>
void load(T* x, At at) {
  static thread_local std::vector<std::array<T, 256>> staging;  // per warp of the block
  const auto w = static_cast<std::size_t>(borealis::cuda_emulator::warp());
  if (staging.size() <= w) staging.resize(w + 1);
  T* tile = staging[w].data();
  for_share([&](unsigned r, unsigned c) { tile[r * 16 + c] = at(r, c); });
  converged();
  std::memcpy(x, tile, 256 * sizeof(T));
  converged();
}
}  // namespace detail

template <typename Use, typename T, typename Layout, typename V>
void fill_fragment(fragment<Use, 16, 16, 16, T, Layout>& f, V v) {
  for (T& e : f.x) e = static_cast<T>(v);
}

template <typename Use, typename T, typename Layout>
void load_matrix_sync(fragment<Use, 16, 16, 16, T, Layout>& f, const T* p, unsigned ldm) {
  static_assert(!std::is_same_v<Use, accumulator>, "accumulators load with a layout");
  detail::check_matrix("load_matrix_sync", p, ldm);
  detail::load(f.x, [&](unsigned r, unsigned c) {
    return std::is_same_v<Layout, row_major> ? p[r * ldm + c] : p[c * ldm + r];
  });
}
namespace detail {
// Where an accumulator keeps row r, column c: column-major (see above).
constexpr unsigned slot(unsigned r, unsigned c) {
  return c * 16 + r;
}
}  // namespace detail
inline void load_matrix_sync(fragment<accumulator, 16, 16, 16, float>& f, const float* p,
                             unsigned ldm, layout_t layout) {
  detail::check_matrix("load_matrix_sync", p, ldm);
  float tile[256];
  detail::load(tile, [&](unsigned r, unsigned c) {
    return layout == mem_row_major ? p[r * ldm + c] : p[c * ldm + r];
  });
  for (unsigned r = 0; r < 16; ++r) {
    for (unsigned c = 0; c < 16; ++c) f.x[detail::slot(r, c)] = tile[r * 16 + c];
  }
}
inline void store_matrix_sync(float* p, const fragment<accumulator, 16, 16, 16, float>& f,
                              unsigned ldm, layout_t layout) {
  detail::converged();
  detail::check_matrix("store_matrix_sync", p, ldm);
  detail::for_share([&](unsigned r, unsigned c) {
    (layout == mem_row_major ? p[r * ldm + c] : p[c * ldm + r]) = f.x[detail::slot(r, c)];
  });
}
// d = a b + c, in fp32 (products of the bf16 inputs are exact in fp32).
// The lanes of a warp hold the same tiles, so the first lane computes the
// product and the others, finding the same inputs, take its result (each
// warp's last product is kept, per warp of the block).
template <typename TA, typename LA, typename TB, typename LB>
void mma_sync(fragment<accumulator, 16, 16, 16, float>& d,
              const fragment<matrix_a, 16, 16, 16, TA, LA>& a,
              const fragment<matrix_b, 16, 16, 16, TB, LB>& b,
              const fragment<accumulator, 16, 16, 16, float>& c) {
  detail::converged();
  struct Last {
    TA a[256];
    TB b[256];
    float c[256], d[256];
    bool valid = false;
  };
  static thread_local std::vector<Last> last;
  const auto w = static_cast<std::size_t>(borealis::cuda_emulator::warp());
  if (last.size() <= w) last.resize(w + 1);
  Last& e = last[w];
  if (e.valid && std::memcmp(e.a, a.x, sizeof e.a) == 0 && std::memcmp(e.b, b.x, sizeof e.b) == 0 &&
      std::memcmp(e.c, c.x, sizeof e.c) == 0) {
    std::memcpy(d.x, e.d, sizeof e.d);
    return;
  }
  std::memcpy(e.a, a.x, sizeof e.a);
  std::memcpy(e.b, b.x, sizeof e.b);
  std::memcpy(e.c, c.x, sizeof e.c);
  for (int r = 0; r < 16; ++r) {
    for (int n = 0; n < 16; ++n) {
      float s = e.c[detail::slot(r, n)];
      for (int k = 0; k < 16; ++k) {
        s += detail::value(e.a[r * 16 + k]) * detail::value(e.b[k * 16 + n]);
      }
      e.d[detail::slot(r, n)] = s;
    }
  }
  e.valid = true;
  std::memcpy(d.x, e.d, sizeof e.d);
}
}  // namespace nvcuda::wmma

inline void __syncwarp(unsigned mask = 0xffffffffu) {
  borealis::cuda_emulator::exchange(mask, 0, 1, borealis::cuda_emulator::lane());
}

// ---- the runtime API ----------------------------------------------------------

enum cudaError_t {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorMemoryAllocation = 2,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorInvalidDevice = 101,
  cudaErrorNotReady = 600,
};
enum cudaMemcpyKind {
  cudaMemcpyHostToHost = 0,
  cudaMemcpyHostToDevice = 1,
  cudaMemcpyDeviceToHost = 2,
  cudaMemcpyDeviceToDevice = 3,
};
struct CUstream_st;
using cudaStream_t = CUstream_st*;
struct CUevent_st;
using cudaEvent_t = CUevent_st*;

const char* cudaGetErrorString(cudaError_t err);
cudaError_t cudaGetLastError();
cudaError_t cudaGetDeviceCount(int* count);
cudaError_t cudaSetDevice(int device);
cudaError_t cudaGetDevice(int* device);
// The emulated device has 80 GiB, or the limit set by
// cuda_emulator::set_memory_limit; what is free is that less the bytes
// allocated.
cudaError_t cudaMemGetInfo(std::size_t* free, std::size_t* total);
cudaError_t cudaDeviceSynchronize();
cudaError_t cudaMalloc(void** ptr, std::size_t bytes);
template <typename T>
cudaError_t cudaMalloc(T** ptr, std::size_t bytes) {
  return cudaMalloc(reinterpret_cast<void**>(ptr), bytes);
}
cudaError_t cudaFree(void* ptr);
cudaError_t cudaMemset(void* ptr, int value, std::size_t bytes);
cudaError_t cudaMemcpy(void* dst, const void* src, std::size_t bytes, cudaMemcpyKind kind);
cudaError_t cudaMemcpyAsync(void* dst, const void* src, std::size_t bytes, cudaMemcpyKind kind,
                            cudaStream_t stream = nullptr);
// Streams: kernels and copies complete when they are called, on any
// stream; only work queued with cuda_emulator::enqueue (the emulated NCCL's
// collectives) is pending on a stream until it completes. An event
// recorded on a stream completes with the work pending there then.
constexpr unsigned cudaStreamNonBlocking = 1;
constexpr unsigned cudaEventDisableTiming = 2;
cudaError_t cudaStreamCreateWithFlags(cudaStream_t* stream, unsigned flags);
cudaError_t cudaStreamDestroy(cudaStream_t stream);
// Waits, on the host, for the event's work (later work on the stream starts
// when queued).
cudaError_t cudaStreamWaitEvent(cudaStream_t stream, cudaEvent_t event, unsigned flags);
cudaError_t cudaStreamSynchronize(cudaStream_t stream);
cudaError_t cudaEventCreate(cudaEvent_t* event);
cudaError_t cudaEventCreateWithFlags(cudaEvent_t* event, unsigned flags);
// cudaSuccess once the event's work is complete, else cudaErrorNotReady.
cudaError_t cudaEventQuery(cudaEvent_t event);
cudaError_t cudaEventDestroy(cudaEvent_t event);
cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t stream = nullptr);
cudaError_t cudaEventSynchronize(cudaEvent_t event);
cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t start, cudaEvent_t stop);

// ---- cuBLAS -------------------------------------------------------------------

enum cublasStatus_t {
  CUBLAS_STATUS_SUCCESS = 0,
  CUBLAS_STATUS_NOT_INITIALIZED = 1,
  CUBLAS_STATUS_ALLOC_FAILED = 3,
  CUBLAS_STATUS_INVALID_VALUE = 7,
  CUBLAS_STATUS_NOT_SUPPORTED = 15,
};
enum cublasOperation_t { CUBLAS_OP_N = 0, CUBLAS_OP_T = 1 };
enum cublasMath_t { CUBLAS_DEFAULT_MATH = 0 };
enum cublasAtomicsMode_t { CUBLAS_ATOMICS_NOT_ALLOWED = 0, CUBLAS_ATOMICS_ALLOWED = 1 };
enum cudaDataType { CUDA_R_32F = 0, CUDA_R_16BF = 14 };
enum cublasComputeType_t { CUBLAS_COMPUTE_32F = 68 };
enum cublasGemmAlgo_t { CUBLAS_GEMM_DEFAULT = -1 };
struct cublasContext;
using cublasHandle_t = cublasContext*;

cublasStatus_t cublasCreate(cublasHandle_t* handle);
cublasStatus_t cublasDestroy(cublasHandle_t handle);
const char* cublasGetStatusString(cublasStatus_t status);
cublasStatus_t cublasSetMathMode(cublasHandle_t handle, cublasMath_t mode);
cublasStatus_t cublasSetAtomicsMode(cublasHandle_t handle, cublasAtomicsMode_t mode);
cublasStatus_t cublasSgemm(cublasHandle_t handle, cublasOperation_t transa,
                           cublasOperation_t transb, int m, int n, int k, const float* alpha,
                           const float* A, int lda, const float* B, int ldb, const float* beta,
                           float* C, int ldc);
cublasStatus_t cublasGemmEx(cublasHandle_t handle, cublasOperation_t transa,
                            cublasOperation_t transb, int m, int n, int k, const void* alpha,
                            const void* A, cudaDataType Atype, int lda, const void* B,
                            cudaDataType Btype, int ldb, const void* beta, void* C,
                            cudaDataType Ctype, int ldc, cublasComputeType_t compute,
                            cublasGemmAlgo_t algo);

// ---- cuBLASLt -----------------------------------------------------------------
// The matmuls with epilogues the backend uses: bias, GELU (tanh form) with
// its input kept (aux), and GELU's gradient from that input; fp32 or bf16
// A and B, fp32 C = D, fp32 compute. The names and values are cublasLt.h's.

enum cublasLtEpilogue_t {
  CUBLASLT_EPILOGUE_DEFAULT = 1,
  CUBLASLT_EPILOGUE_BIAS = 4,
  CUBLASLT_EPILOGUE_GELU_AUX = 32 | 128,
  CUBLASLT_EPILOGUE_GELU_AUX_BIAS = 32 | 128 | 4,
  CUBLASLT_EPILOGUE_DGELU = 64 | 128,
};
enum cublasLtMatmulDescAttributes_t {
  CUBLASLT_MATMUL_DESC_TRANSA = 3,
  CUBLASLT_MATMUL_DESC_TRANSB = 4,
  CUBLASLT_MATMUL_DESC_EPILOGUE = 7,
  CUBLASLT_MATMUL_DESC_BIAS_POINTER = 8,
  CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER = 11,
  CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD = 12,
  CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE = 26,
};
enum cublasLtMatmulPreferenceAttributes_t {
  CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES = 1,
  CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES = 5,
  CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES = 6,
  CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES = 7,
  CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES = 8,
};
struct cublasLtContext;
using cublasLtHandle_t = cublasLtContext*;
struct cublasLtMatmulDescOpaque_t;
using cublasLtMatmulDesc_t = cublasLtMatmulDescOpaque_t*;
struct cublasLtMatrixLayoutOpaque_t;
using cublasLtMatrixLayout_t = cublasLtMatrixLayoutOpaque_t*;
struct cublasLtMatmulPreferenceOpaque_t;
using cublasLtMatmulPreference_t = cublasLtMatmulPreferenceOpaque_t*;
struct cublasLtMatmulAlgo_t {
  std::uint64_t data[8];
};
struct cublasLtMatmulHeuristicResult_t {
  cublasLtMatmulAlgo_t algo;
  std::size_t workspaceSize;
  cublasStatus_t state;
  float wavesCount;
  int reserved[4];
};

cublasStatus_t cublasLtCreate(cublasLtHandle_t* handle);
cublasStatus_t cublasLtDestroy(cublasLtHandle_t handle);
cublasStatus_t cublasLtMatmulDescCreate(cublasLtMatmulDesc_t* desc, cublasComputeType_t compute,
                                        cudaDataType scale);
cublasStatus_t cublasLtMatmulDescDestroy(cublasLtMatmulDesc_t desc);
cublasStatus_t cublasLtMatmulDescSetAttribute(cublasLtMatmulDesc_t desc,
                                              cublasLtMatmulDescAttributes_t attribute,
                                              const void* value, std::size_t bytes);
cublasStatus_t cublasLtMatrixLayoutCreate(cublasLtMatrixLayout_t* layout, cudaDataType type,
                                          std::uint64_t rows, std::uint64_t cols, std::int64_t ld);
cublasStatus_t cublasLtMatrixLayoutDestroy(cublasLtMatrixLayout_t layout);
cublasStatus_t cublasLtMatmulPreferenceCreate(cublasLtMatmulPreference_t* pref);
cublasStatus_t cublasLtMatmulPreferenceDestroy(cublasLtMatmulPreference_t pref);
cublasStatus_t cublasLtMatmulPreferenceSetAttribute(cublasLtMatmulPreference_t pref,
                                                    cublasLtMatmulPreferenceAttributes_t attribute,
                                                    const void* value, std::size_t bytes);
// One algorithm for every valid problem (none, and
// CUBLAS_STATUS_NOT_SUPPORTED, for an invalid one). As cuBLASLt's, it
// assumes 256-byte aligned operands unless the preference says less, and
// cublasLtMatmul stops on an operand less aligned than that.
cublasStatus_t cublasLtMatmulAlgoGetHeuristic(cublasLtHandle_t handle, cublasLtMatmulDesc_t desc,
                                              cublasLtMatrixLayout_t a, cublasLtMatrixLayout_t b,
                                              cublasLtMatrixLayout_t c, cublasLtMatrixLayout_t d,
                                              cublasLtMatmulPreference_t pref, int requested,
                                              cublasLtMatmulHeuristicResult_t* results,
                                              int* returned);
cublasStatus_t cublasLtMatmul(cublasLtHandle_t handle, cublasLtMatmulDesc_t desc, const void* alpha,
                              const void* A, cublasLtMatrixLayout_t a, const void* B,
                              cublasLtMatrixLayout_t b, const void* beta, const void* C,
                              cublasLtMatrixLayout_t c, void* D, cublasLtMatrixLayout_t d,
                              const cublasLtMatmulAlgo_t* algo, void* workspace,
                              std::size_t workspace_bytes, cudaStream_t stream);

// ---- launches -----------------------------------------------------------------

namespace borealis::cuda_emulator {

// Whether [ptr, ptr + bytes) lies inside one device allocation.
bool is_device(const void* ptr, std::size_t bytes = 0);
// Device allocations not yet freed (for the tests' leak checks).
std::size_t live_allocations();
// From now on cudaMalloc fails with cudaErrorMemoryAllocation where the
// bytes allocated would pass `bytes` (0: the emulated 80 GiB again), as a
// device of that size would (for the tests of running out of memory).
void set_memory_limit(std::size_t bytes);
// cublasLtMatmul calls so far (for the tests: which path a GEMM took).
std::uint64_t lt_matmuls();
// Kernel launches so far under the name `what` (launch()'s first argument).
std::uint64_t launches(std::string_view what);

// Queues work on `stream` (not the default stream) that is pending until
// poll() returns true; poll() is called until it does, and not after.
void enqueue(cudaStream_t stream, std::function<bool()> poll);

// Runs body once for every thread of the grid (throws std::runtime_error
// naming the kernel on a bad configuration, a deadlock or a bad shuffle).
void run_grid(const char* what, dim3 grid, dim3 block, const std::function<void()>& body);

// The emulated kernel<<<grid, block>>>(args...): arguments convert to the
// kernel's parameter types as in a launch, pointers must be device memory
// (or null), and the launch completes before it returns.
template <typename... Params, typename... Args>
void launch(const char* what, void (*kernel)(Params...), dim3 grid, dim3 block, Args&&... args) {
  static_assert(sizeof...(Params) == sizeof...(Args), "a launch passes every parameter");
  std::tuple<std::decay_t<Params>...> bound(static_cast<Params>(std::forward<Args>(args))...);
  int position = 0;
  std::apply(
      [&](const auto&... arg) {
        (
            [&](const auto& a) {
              ++position;
              if constexpr (std::is_pointer_v<std::decay_t<decltype(a)>>) {
                if (a != nullptr && !is_device(a)) {
                  throw std::runtime_error(std::string("emulated CUDA: kernel ") + what +
                                           ": argument " + std::to_string(position) +
                                           " is not device memory");
                }
              }
            }(arg),
            ...);
      },
      bound);
  run_grid(what, grid, block, [&] { std::apply(kernel, bound); });
}

}  // namespace borealis::cuda_emulator
