// The CUDA emulator (cuda_emulator.h) itself: that it runs kernels as CUDA
// defines them (thread and block indices, shared memory, barriers, warp
// shuffles, cuBLAS's column-major GEMM), and that it stops, naming the
// kernel, on what a GPU would not forgive.
#include "kernels/cuda_emulator/cuda_emulator.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <string>
#include <vector>

namespace {

using borealis::cuda_emulator::launch;

// Device memory of n values, freed with the object.
template <typename T>
class Device {
 public:
  explicit Device(std::size_t n) : n_(n) { EXPECT_EQ(cudaMalloc(&p_, n * sizeof(T)), cudaSuccess); }
  explicit Device(const std::vector<T>& host) : Device(host.size()) {
    EXPECT_EQ(cudaMemcpy(p_, host.data(), n_ * sizeof(T), cudaMemcpyHostToDevice), cudaSuccess);
  }
  ~Device() { cudaFree(p_); }
  Device(const Device&) = delete;
  Device& operator=(const Device&) = delete;
  T* get() { return p_; }
  std::vector<T> host() const {
    std::vector<T> h(n_);
    EXPECT_EQ(cudaMemcpy(h.data(), p_, n_ * sizeof(T), cudaMemcpyDeviceToHost), cudaSuccess);
    return h;
  }

 private:
  std::size_t n_;
  T* p_ = nullptr;
};

void expect_error(const std::function<void()>& f, const std::string& part) {
  try {
    f();
    ADD_FAILURE() << "no error; expected one containing '" << part << "'";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find(part), std::string::npos) << e.what();
  }
}

__global__ void index_kernel(int* out, int width) {
  const int x = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x);
  const int y = static_cast<int>(blockIdx.y * blockDim.y + threadIdx.y);
  out[y * width + x] = y * 1000 + x + static_cast<int>(gridDim.x * 100000);
}

TEST(CudaEmulator, ThreadAndBlockIndices) {
  const dim3 grid(3, 2), block(4, 5);
  const int width = 12, height = 10;
  Device<int> out(width * height);
  launch("index", index_kernel, grid, block, out.get(), width);
  const std::vector<int> h = out.host();
  for (int y = 0; y < height; ++y) {
    for (int x = 0; x < width; ++x) ASSERT_EQ(h[y * width + x], y * 1000 + x + 300000);
  }
}

// A block-wide tree sum in shared memory, and every warp's xor-shuffle sum.
__global__ void reduce_kernel(float* block_sums, float* warp_sums, const float* in) {
  __shared__ float s[128];
  const unsigned t = threadIdx.x;
  const float v = in[blockIdx.x * 128 + t];
  s[t] = v;
  __syncthreads();
  for (unsigned half = 64; half > 0; half /= 2) {
    if (t < half) s[t] += s[t + half];
    __syncthreads();
  }
  if (t == 0) block_sums[blockIdx.x] = s[0];
  float w = v;
  for (int o = 16; o > 0; o /= 2) w += __shfl_xor_sync(0xffffffffu, w, o);
  warp_sums[blockIdx.x * 128 + t] = w;
}

TEST(CudaEmulator, SharedMemoryBarriersAndShuffles) {
  std::vector<float> in(256);
  std::iota(in.begin(), in.end(), 1.0f);
  Device<float> din(in), sums(2), warps(256);
  launch("reduce", reduce_kernel, 2, 128, sums.get(), warps.get(), din.get());
  const auto s = sums.host();
  EXPECT_EQ(s[0], 128.0f * 129.0f / 2.0f);
  EXPECT_EQ(s[1], (256.0f * 257.0f - 128.0f * 129.0f) / 2.0f);
  const auto w = warps.host();
  for (int i = 0; i < 256; ++i) {
    const int first = i / 32 * 32 + 1;
    ASSERT_EQ(w[i], 32.0f * first + 31.0f * 32.0f / 2.0f) << i;  // every lane has the warp's sum
  }
}

__global__ void shuffle_kernel(int* down, int* from) {
  const int lane = static_cast<int>(threadIdx.x % 32);
  down[threadIdx.x] = __shfl_down_sync(0xffffffffu, lane * 10, 3);
  from[threadIdx.x] = __shfl_sync(0xffffffffu, lane * 10, 7);
}

TEST(CudaEmulator, ShuffleDownAndBroadcast) {
  Device<int> down(64), from(64);
  launch("shuffle", shuffle_kernel, 1, 64, down.get(), from.get());
  const auto d = down.host(), f = from.host();
  for (int t = 0; t < 64; ++t) {
    const int lane = t % 32;
    EXPECT_EQ(d[t], lane + 3 < 32 ? (lane + 3) * 10 : lane * 10) << t;  // out of range: own value
    EXPECT_EQ(f[t], 70) << t;
  }
}

// Reads a neighbour's shared value with no barrier between the write and
// the read: correct only if the threads happen to run in index order.
__global__ void racy_kernel(int* out) {
  __shared__ int s[256];
  const unsigned t = threadIdx.x;
  s[t] = static_cast<int>(t) + 1;
  out[t] = s[(t + 1) % 256];  // missing __syncthreads()
  s[t] = 0;
}

TEST(CudaEmulator, MissingBarrierGivesWrongResults) {
  Device<int> out(256);
  launch("racy", racy_kernel, 1, 256, out.get());
  const auto h = out.host();
  int wrong = 0;
  for (int t = 0; t < 256; ++t) wrong += h[t] != (t + 1) % 256 + 1;
  EXPECT_GT(wrong, 10) << "threads ran in an order that hides the race";
}

// Each block reads its shared array before and after writing to it: sums[2 b]
// is what it held at the start (thread 0 reads it whole), sums[2 b + 1] what
// the block wrote.
__global__ void fresh_shared_kernel(float* sums) {
  __shared__ float s[64];
  borealis::cuda_emulator::fresh_shared(s);
  float before = 0.0f;
  if (threadIdx.x == 0) {
    for (const float v : s) before += v;
  }
  __syncthreads();
  s[threadIdx.x] = 1.0f;
  __syncthreads();
  if (threadIdx.x == 0) {
    float after = 0.0f;
    for (const float v : s) after += v;
    sums[2 * blockIdx.x] = before;
    sums[2 * blockIdx.x + 1] = after;
  }
}

TEST(CudaEmulator, SharedMemoryStartsAsNaNsInEveryBlock) {
  Device<float> sums(6);
  launch("fresh", fresh_shared_kernel, 3, 64, sums.get());
  const auto h = sums.host();
  for (int b = 0; b < 3; ++b) {
    EXPECT_TRUE(std::isnan(h[2 * b])) << "block " << b << " found " << h[2 * b];
    EXPECT_EQ(h[2 * b + 1], 64.0f) << "block " << b;
  }
}

// Block b's thread 0 records when it ran: seen[b] = the number of blocks
// that ran before it (blocks run one at a time on the emulator).
__global__ void block_order_kernel(int* seen, int* ran) {
  if (threadIdx.x != 0) return;
  const unsigned b = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
  seen[b] = ran[0]++;
}

TEST(CudaEmulator, BlocksRunInAnOrderThatIsNotTheirIndexOrder) {
  for (const dim3 grid : {dim3(2), dim3(7, 3), dim3(4, 2, 5)}) {
    const int count = static_cast<int>(grid.x * grid.y * grid.z);
    Device<int> seen(std::vector<int>(count, -1)), ran(std::vector<int>{0});
    launch("order", block_order_kernel, grid, 32, seen.get(), ran.get());
    auto order = seen.host();
    EXPECT_EQ(ran.host()[0], count);
    int in_place = 0;
    for (int b = 0; b < count; ++b) in_place += order[b] == b;
    EXPECT_LT(in_place, count) << "every block ran in index order";
    std::sort(order.begin(), order.end());
    for (int b = 0; b < count; ++b) ASSERT_EQ(order[b], b) << "each block runs once";
  }
}

// Each warp writes its half of a shared array, then reads the other warp's
// half: with __syncthreads() between (right), or with only __syncwarp()
// (a missing block barrier).
template <bool kBlockBarrier>
__global__ void halves_kernel(float* out) {
  __shared__ float s[64];
  borealis::cuda_emulator::fresh_shared(s);
  s[threadIdx.x] = static_cast<float>(threadIdx.x);
  if (kBlockBarrier) {
    __syncthreads();
  } else {
    __syncwarp();
  }
  out[blockIdx.x * 64 + threadIdx.x] = s[63 - threadIdx.x];
}

TEST(CudaEmulator, WarpsRunAheadOfEachOtherInTwoBlocksOfThree) {
  Device<float> out(3 * 64);
  launch("halves", halves_kernel<true>, 3, 64, out.get());
  auto h = out.host();
  for (int i = 0; i < 3 * 64; ++i) ASSERT_EQ(h[i], static_cast<float>(63 - i % 64)) << i;
  // Without the block barrier: the block run first (block 1) interleaves
  // its threads, and every write lands before the warps' __syncwarp()
  // completes; in the other two, one warp runs to its end before the other
  // starts and reads the other half unwritten, a different warp first in
  // each.
  launch("halves", halves_kernel<false>, 3, 64, out.get());
  h = out.host();
  std::vector<int> wrong_warp;
  for (int b = 0; b < 3; ++b) {
    int wrong[2] = {0, 0};
    for (int t = 0; t < 64; ++t) wrong[t / 32] += !(h[b * 64 + t] == static_cast<float>(63 - t));
    if (wrong[0] + wrong[1] == 0) continue;
    EXPECT_EQ(wrong[0] + wrong[1], 32) << "block " << b;
    wrong_warp.push_back(wrong[0] > 0 ? 0 : 1);
  }
  ASSERT_EQ(wrong_warp.size(), 2u) << "blocks where a warp read the other's half unwritten";
  EXPECT_NE(wrong_warp[0], wrong_warp[1]) << "the same warp ran first in both";
}

__global__ void divergent_barrier_kernel(int* out) {
  if (threadIdx.x < 16) __syncthreads();  // only half the block gets here
  out[threadIdx.x] = 1;
}

__global__ void exited_lanes_kernel(int* out) {
  if (threadIdx.x % 32 < 8) return;
  out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, 1, 1);
}

TEST(CudaEmulator, BarriersNotReachedByAllAreErrors) {
  Device<int> out(64);
  // Threads 16..63 return while 0..15 wait: allowed (returned threads no
  // longer count), as on current GPUs.
  launch("divergent", divergent_barrier_kernel, 1, 64, out.get());
  expect_error([&] { launch("exited lanes", exited_lanes_kernel, 1, 64, out.get()); },
               "kernel exited lanes, block (0, 0, 0): threads can never go on");
}

__global__ void write_kernel(float* out, int n) {
  const int i = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x);
  if (i < n) out[i] = 1.0f;
}

TEST(CudaEmulator, LaunchErrors) {
  Device<float> out(10);
  expect_error([&] { launch("zero grid", write_kernel, 0, 32, out.get(), 10); },
               "kernel zero grid: invalid launch configuration");
  expect_error([&] { launch("big block", write_kernel, 1, 2048, out.get(), 10); },
               "invalid launch configuration");
  std::vector<float> host(10);
  expect_error([&] { launch("host pointer", write_kernel, 1, 32, host.data(), 10); },
               "kernel host pointer: argument 1 is not device memory");
  launch("bounded", write_kernel, 1, 32, out.get(), 10);
  EXPECT_EQ(out.host(), std::vector<float>(10, 1.0f));
}

TEST(CudaEmulatorDeathTest, ReadPastTheEndNamesTheKernel) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_DEATH(
      {
        Device<float> out(10);
        launch("unbounded", write_kernel, 1, 64, out.get(), 64);
      },
      "emulated CUDA: kernel unbounded, block \\(0, 0\\), thread [0-9]+: invalid memory access");
}

TEST(CudaEmulator, MemoryIsNaNUntilWrittenAndCopiesCheckTheirDirection) {
  Device<float> d(4);
  for (const float v : d.host()) EXPECT_TRUE(std::isnan(v));
  std::vector<float> host(4, 2.0f);
  EXPECT_EQ(cudaMemcpy(d.get(), host.data(), 16, cudaMemcpyDeviceToHost), cudaErrorInvalidValue);
  EXPECT_EQ(cudaMemcpy(d.get(), host.data(), 20, cudaMemcpyHostToDevice), cudaErrorInvalidValue)
      << "past the end of the allocation";
  EXPECT_EQ(cudaMemcpy(d.get(), host.data(), 16, cudaMemcpyHostToDevice), cudaSuccess);
  EXPECT_EQ(d.host(), host);
  int* p = nullptr;
  EXPECT_EQ(cudaFree(host.data()), cudaErrorInvalidValue);
  const std::size_t live = borealis::cuda_emulator::live_allocations();
  EXPECT_EQ(cudaMalloc(&p, 8), cudaSuccess);
  EXPECT_EQ(borealis::cuda_emulator::live_allocations(), live + 1);
  EXPECT_EQ(cudaFree(p), cudaSuccess);
  EXPECT_EQ(borealis::cuda_emulator::live_allocations(), live);
}

// cuBLAS's contract: column-major C (m x n) = alpha op(A) op(B) + beta C.
TEST(CudaEmulator, SgemmIsColumnMajorAndChecksItsOperands) {
  const int m = 3, n = 2, k = 4;
  // A stored transposed (k x m, lda = k), B as is (k x n, ldb = k).
  std::vector<float> a(k * m), b(k * n), c(m * n, 100.0f);
  for (int i = 0; i < k * m; ++i) a[i] = static_cast<float>(i + 1);
  for (int i = 0; i < k * n; ++i) b[i] = static_cast<float>(2 * i - 3);
  Device<float> da(a), db(b), dc(c);
  cublasHandle_t h = nullptr;
  ASSERT_EQ(cublasCreate(&h), CUBLAS_STATUS_SUCCESS);
  const float alpha = 2.0f, beta = 0.5f;
  ASSERT_EQ(cublasSgemm(h, CUBLAS_OP_T, CUBLAS_OP_N, m, n, k, &alpha, da.get(), k, db.get(), k,
                        &beta, dc.get(), m),
            CUBLAS_STATUS_SUCCESS);
  const auto got = dc.host();
  for (int j = 0; j < n; ++j) {
    for (int i = 0; i < m; ++i) {
      float s = 0;
      for (int p = 0; p < k; ++p) s += a[p + i * k] * b[p + j * k];
      EXPECT_EQ(got[i + j * m], alpha * s + beta * 100.0f) << i << "," << j;
    }
  }
  // beta = 0 does not read C (NaN there is overwritten).
  Device<float> fresh(m * n);
  const float zero = 0.0f;
  ASSERT_EQ(cublasSgemm(h, CUBLAS_OP_T, CUBLAS_OP_N, m, n, k, &alpha, da.get(), k, db.get(), k,
                        &zero, fresh.get(), m),
            CUBLAS_STATUS_SUCCESS);
  for (const float v : fresh.host()) EXPECT_FALSE(std::isnan(v));
  // A leading dimension below the stored rows.
  EXPECT_EQ(cublasSgemm(h, CUBLAS_OP_T, CUBLAS_OP_N, m, n, k, &alpha, da.get(), k - 1, db.get(), k,
                        &beta, dc.get(), m),
            CUBLAS_STATUS_INVALID_VALUE);
  // An operand that reaches past its allocation.
  expect_error(
      [&] {
        cublasSgemm(h, CUBLAS_OP_T, CUBLAS_OP_N, m, n, k + 1, &alpha, da.get(), k + 1, db.get(),
                    k + 1, &beta, dc.get(), m);
      },
      "cublasSgemm: operand A (5 x 3, ld 5) does not lie inside one device allocation");
  EXPECT_EQ(cublasDestroy(h), CUBLAS_STATUS_SUCCESS);
}

// cuBLASLt: D = A B + C with a bias epilogue, C apart from D; the
// heuristic assumes 256-byte aligned operands unless told less, and the
// matmul stops on an operand less aligned than it was told; attributes of
// the wrong size and a GELU buffer of a bad leading dimension are refused.
TEST(CudaEmulator, CublasLtEpiloguesAndAlignments) {
  const int m = 8, n = 3, k = 5;
  std::vector<float> a(m * k), b(k * n), c(m * n), bias(m);
  for (int i = 0; i < m * k; ++i) a[i] = 0.25f * static_cast<float>(i % 7) - 0.5f;
  for (int i = 0; i < k * n; ++i) b[i] = static_cast<float>(i % 5) - 2.0f;
  for (int i = 0; i < m * n; ++i) c[i] = static_cast<float>(i);
  for (int i = 0; i < m; ++i) bias[i] = 10.0f * static_cast<float>(i);
  // D one float into its allocation: 4-byte aligned only.
  Device<float> da(a), db(b), dc(c), dbias(bias), dd(m * n + 1);
  float* d = dd.get() + 1;
  cublasLtHandle_t h = nullptr;
  ASSERT_EQ(cublasLtCreate(&h), CUBLAS_STATUS_SUCCESS);
  cublasLtMatmulDesc_t desc = nullptr;
  ASSERT_EQ(cublasLtMatmulDescCreate(&desc, CUBLAS_COMPUTE_32F, CUDA_R_32F), CUBLAS_STATUS_SUCCESS);
  const cublasLtEpilogue_t epilogue = CUBLASLT_EPILOGUE_BIAS;
  const float* bias_ptr = dbias.get();
  ASSERT_EQ(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue,
                                           sizeof(epilogue)),
            CUBLAS_STATUS_SUCCESS);
  ASSERT_EQ(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias_ptr,
                                           sizeof(bias_ptr)),
            CUBLAS_STATUS_SUCCESS);
  const std::int64_t wrong_size = 0;
  EXPECT_EQ(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &wrong_size,
                                           sizeof(wrong_size)),
            CUBLAS_STATUS_INVALID_VALUE);
  cublasLtMatrixLayout_t la = nullptr, lb = nullptr, lc = nullptr;
  ASSERT_EQ(cublasLtMatrixLayoutCreate(&la, CUDA_R_32F, m, k, m), CUBLAS_STATUS_SUCCESS);
  ASSERT_EQ(cublasLtMatrixLayoutCreate(&lb, CUDA_R_32F, k, n, k), CUBLAS_STATUS_SUCCESS);
  ASSERT_EQ(cublasLtMatrixLayoutCreate(&lc, CUDA_R_32F, m, n, m), CUBLAS_STATUS_SUCCESS);
  const auto heuristic = [&](std::uint32_t d_alignment) {
    cublasLtMatmulPreference_t pref = nullptr;
    EXPECT_EQ(cublasLtMatmulPreferenceCreate(&pref), CUBLAS_STATUS_SUCCESS);
    // A, B and C as the emulator allocates (16 bytes), D as given.
    const std::uint32_t alignments[4] = {16, 16, 16, d_alignment};
    for (int i = 0; i < 4; ++i) {
      const auto attribute = static_cast<cublasLtMatmulPreferenceAttributes_t>(
          CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES + i);
      EXPECT_EQ(cublasLtMatmulPreferenceSetAttribute(pref, attribute, &alignments[i],
                                                     sizeof(alignments[i])),
                CUBLAS_STATUS_SUCCESS);
    }
    cublasLtMatmulHeuristicResult_t r{};
    int found = 0;
    EXPECT_EQ(cublasLtMatmulAlgoGetHeuristic(h, desc, la, lb, lc, lc, pref, 1, &r, &found),
              CUBLAS_STATUS_SUCCESS);
    EXPECT_EQ(found, 1);
    cublasLtMatmulPreferenceDestroy(pref);
    return r.algo;
  };
  const float one = 1.0f;
  const cublasLtMatmulAlgo_t told_256 = heuristic(256);
  expect_error(
      [&] {
        cublasLtMatmul(h, desc, &one, da.get(), la, db.get(), lb, &one, dc.get(), lc, d, lc,
                       &told_256, nullptr, 0, nullptr);
      },
      "operand D is less aligned than the 256 bytes the heuristic was told");
  const cublasLtMatmulAlgo_t told_4 = heuristic(4);
  ASSERT_EQ(cublasLtMatmul(h, desc, &one, da.get(), la, db.get(), lb, &one, dc.get(), lc, d, lc,
                           &told_4, nullptr, 0, nullptr),
            CUBLAS_STATUS_SUCCESS);
  const auto got = dd.host();
  for (int j = 0; j < n; ++j) {
    for (int i = 0; i < m; ++i) {
      float s = 0;
      for (int p = 0; p < k; ++p) s += a[i + p * m] * b[p + j * k];
      EXPECT_EQ(got[1 + i + j * m], s + c[i + j * m] + bias[i]) << i << "," << j;
    }
  }
  EXPECT_EQ(dc.host(), c);  // C is read, not written
  // GELU's input buffer needs a leading dimension of at least m, divisible by 8.
  const cublasLtEpilogue_t gelu = CUBLASLT_EPILOGUE_GELU_AUX;
  float* aux = dc.get();
  const std::int64_t ld_aux = 6;
  ASSERT_EQ(
      cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &gelu, sizeof(gelu)),
      CUBLAS_STATUS_SUCCESS);
  ASSERT_EQ(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, &aux,
                                           sizeof(aux)),
            CUBLAS_STATUS_SUCCESS);
  ASSERT_EQ(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, &ld_aux,
                                           sizeof(ld_aux)),
            CUBLAS_STATUS_SUCCESS);
  cublasLtMatmulPreference_t pref = nullptr;
  ASSERT_EQ(cublasLtMatmulPreferenceCreate(&pref), CUBLAS_STATUS_SUCCESS);
  cublasLtMatmulHeuristicResult_t r{};
  int found = 1;
  EXPECT_EQ(cublasLtMatmulAlgoGetHeuristic(h, desc, la, lb, lc, lc, pref, 1, &r, &found),
            CUBLAS_STATUS_NOT_SUPPORTED);
  EXPECT_EQ(found, 0);
  cublasLtMatmulPreferenceDestroy(pref);
  cublasLtMatrixLayoutDestroy(lc);
  cublasLtMatrixLayoutDestroy(lb);
  cublasLtMatrixLayoutDestroy(la);
  cublasLtMatmulDescDestroy(desc);
  EXPECT_EQ(cublasLtDestroy(h), CUBLAS_STATUS_SUCCESS);
}

// d = a b + c on one 16 x 16 x 16 tile: a row-major, b column-major (as b^T
// row-major), c loaded column-major, d stored row-major.
__global__ void mma_kernel(float* d, const __nv_bfloat16* a, const __nv_bfloat16* bt,
                           const float* c) {
  namespace wmma = nvcuda::wmma;
  wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> fa;
  wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::col_major> fb;
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
  wmma::load_matrix_sync(fa, a, 16);
  wmma::load_matrix_sync(fb, bt, 16);
  wmma::load_matrix_sync(acc, c, 16, wmma::mem_col_major);
  wmma::mma_sync(acc, fa, fb, acc);
  wmma::store_matrix_sync(d, acc, 16, wmma::mem_row_major);
}

__global__ void divergent_mma_kernel(float* d) {
  namespace wmma = nvcuda::wmma;
  if (threadIdx.x % 32 < 16) return;
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
  wmma::fill_fragment(acc, 1.0f);
  wmma::store_matrix_sync(d, acc, 16, wmma::mem_row_major);
}

// A tile of a at `offset` values with leading dimension lda, stored to d
// with leading dimension ldd.
__global__ void strided_tile_kernel(float* d, const __nv_bfloat16* a, unsigned offset, unsigned lda,
                                    unsigned ldd) {
  namespace wmma = nvcuda::wmma;
  wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> fa;
  wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::col_major> fb;
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
  wmma::load_matrix_sync(fa, a + offset, lda);
  wmma::load_matrix_sync(fb, a + offset, lda);
  wmma::fill_fragment(acc, 0.0f);
  wmma::mma_sync(acc, fa, fb, acc);
  wmma::store_matrix_sync(d, acc, ldd, wmma::mem_row_major);
}

TEST(CudaEmulator, WarpMatrixMemoryIsAlignedAsCudaRequires) {
  Device<__nv_bfloat16> a(std::vector<__nv_bfloat16>(64 * 64, __float2bfloat16(1.0f)));
  Device<float> d(64 * 64);
  // A 256-bit aligned pointer, a leading dimension of 16 bytes' multiple.
  launch("aligned", strided_tile_kernel, 1, 32, d.get(), a.get(), 16u, 24u, 20u);
  EXPECT_EQ(d.host()[0], 16.0f);
  expect_error(
      [&] { launch("misaligned", strided_tile_kernel, 1, 32, d.get(), a.get(), 8u, 24u, 16u); },
      "kernel misaligned, block (0, 0, 0): wmma::load_matrix_sync: the matrix pointer is not "
      "256-bit aligned");
  expect_error([&] { launch("ldm", strided_tile_kernel, 1, 32, d.get(), a.get(), 0u, 20u, 16u); },
               "wmma::load_matrix_sync: ldm 20 is not a multiple of 16 bytes");
  expect_error([&] { launch("ldd", strided_tile_kernel, 1, 32, d.get(), a.get(), 0u, 16u, 18u); },
               "wmma::store_matrix_sync: ldm 18 is not a multiple of 16 bytes");
}

TEST(CudaEmulator, WarpMatrixMultiplyIsWarpCollective) {
  std::vector<__nv_bfloat16> a(256), bt(256);
  std::vector<float> c(256);
  for (int i = 0; i < 256; ++i) {
    a[i] = __float2bfloat16(static_cast<float>(i % 7) - 3.0f);
    bt[i] = __float2bfloat16(static_cast<float>(i % 5) * 0.5f);
    c[i] = static_cast<float>(i);
  }
  Device<__nv_bfloat16> da(a), dbt(bt);
  Device<float> dc(c), dd(256);
  launch("mma", mma_kernel, 1, 32, dd.get(), da.get(), dbt.get(), dc.get());
  const auto d = dd.host();
  for (int r = 0; r < 16; ++r) {
    for (int n = 0; n < 16; ++n) {
      float want = c[n * 16 + r];  // c was loaded column-major
      for (int k = 0; k < 16; ++k) {
        want += __bfloat162float(a[r * 16 + k]) * __bfloat162float(bt[n * 16 + k]);
      }
      ASSERT_EQ(d[r * 16 + n], want) << r << "," << n;
    }
  }
  expect_error([&] { launch("half a warp", divergent_mma_kernel, 1, 32, dd.get()); },
               "threads can never go on");
}

// Every lane stores its share of a tile of ones, then sums the whole tile
// (with or without __syncwarp() between): seen[lane] is what it found.
__global__ void tile_readback_kernel(float* seen, float* tile, bool sync) {
  namespace wmma = nvcuda::wmma;
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
  wmma::fill_fragment(acc, 1.0f);
  wmma::store_matrix_sync(tile, acc, 16, wmma::mem_row_major);
  if (sync) __syncwarp();
  float sum = 0.0f;
  for (int i = 0; i < 256; ++i) sum += tile[i];
  seen[threadIdx.x] = sum;
}

TEST(CudaEmulator, WarpMatrixStoreIsEachLanesShare) {
  for (const bool sync : {true, false}) {
    Device<float> tile(std::vector<float>(256, 0.0f)), seen(32);
    launch("readback", tile_readback_kernel, 1, 32, seen.get(), tile.get(), sync);
    EXPECT_EQ(tile.host(), std::vector<float>(256, 1.0f));
    const auto s = seen.host();
    if (sync) {
      EXPECT_EQ(s, std::vector<float>(32, 256.0f));
    } else {
      // The first lane to go on finds its own 8 values stored, no others.
      EXPECT_EQ(*std::min_element(s.begin(), s.end()), 8.0f);
    }
  }
}

// Lane l writes ones to values [8 l, 8 l + 8) of a zeroed 16 x 16 tile
// (with or without __syncwarp() after), then the warp loads it and
// multiplies it by ones: d's values sum to 16 times the ones it found.
__global__ void tile_handoff_kernel(float* d, __nv_bfloat16* tile, const __nv_bfloat16* ones,
                                    bool sync) {
  namespace wmma = nvcuda::wmma;
  for (int i = 0; i < 8; ++i) tile[threadIdx.x * 8 + i] = __float2bfloat16(1.0f);
  if (sync) __syncwarp();
  wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> fa;
  wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::row_major> fb;
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
  wmma::load_matrix_sync(fa, tile, 16);
  wmma::load_matrix_sync(fb, ones, 16);
  wmma::fill_fragment(acc, 0.0f);
  wmma::mma_sync(acc, fa, fb, acc);
  wmma::store_matrix_sync(d, acc, 16, wmma::mem_row_major);
}

TEST(CudaEmulator, WarpMatrixLoadReadsEachLanesShareAsItArrives) {
  for (const bool sync : {true, false}) {
    Device<__nv_bfloat16> tile(std::vector<__nv_bfloat16>(256, __float2bfloat16(0.0f)));
    Device<__nv_bfloat16> ones(std::vector<__nv_bfloat16>(256, __float2bfloat16(1.0f)));
    Device<float> d(256);
    launch("handoff", tile_handoff_kernel, 1, 32, d.get(), tile.get(), ones.get(), sync);
    const auto out = d.host();
    const float sum = std::accumulate(out.begin(), out.end(), 0.0f);
    if (sync) {
      EXPECT_EQ(sum, 256.0f * 16.0f);
    } else {
      EXPECT_LT(sum, 256.0f * 16.0f);  // some lanes read their share before it was written
    }
  }
}

TEST(CudaEmulator, Bfloat16RoundsToNearestEven) {
  EXPECT_EQ(__float2bfloat16(1.0f).bits, 0x3f80);
  EXPECT_EQ(__bfloat162float(__float2bfloat16(1.00390625f)), 1.0f);       // halfway: to even
  EXPECT_EQ(__bfloat162float(__float2bfloat16(1.01171875f)), 1.015625f);  // halfway: to even
  EXPECT_EQ(__bfloat162float(__float2bfloat16(-2.5f)), -2.5f);
  EXPECT_TRUE(std::isnan(__bfloat162float(__float2bfloat16(NAN))));
}

}  // namespace
