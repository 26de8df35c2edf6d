// The CUDA backend (fp32).
//
// CudaBackend implements every op of kernels/backend.h on one NVIDIA GPU:
// GEMMs through cuBLAS (fp32, no TF32), the rest as CUDA kernels in
// cuda_backend.cu. Its memory (BackendMemory) is device memory: pointers
// passed to its ops come from its allocate() (BackendArray). Reductions run in a fixed order
// without atomics, so a call repeats bit for bit on the same GPU; where the CPU backend sums in a
// fixed order too (embedding and bias gradients, the norms' weight gradients), the GPU sums in that
// same order.
//
// This header needs no CUDA headers: code built by the host compiler (the
// tests, the trainer) includes it. It exists only in builds with the CUDA
// kernels (BOREALIS_HAVE_CUDA_KERNELS).
#pragma once

#include <memory>
#include <string>

#include "kernels/backend.h"

namespace borealis {

// Why no CUDA device can be used, or "" when device 0 can.
std::string cuda_unavailable_reason();

// The backend on device `device`, its training matmuls in `precision`
// (kernels/backend.h: with bf16, cublasGemmEx on bf16 copies of the
// operands, fp32 accumulation and results). Throws std::runtime_error
// ("CUDA: ...") when the device cannot be opened.
std::unique_ptr<Backend<float>> make_cuda_backend(int device = 0,
                                                  Precision precision = Precision::kFp32);

// The best rate, in GFLOP/s, of a bf16 GEMM C[M, N] = A[M, K] B[K, N] with
// fp32 accumulation (cublasGemmEx, CUBLAS_COMPUTE_32F) on device `device`,
// over repeated runs timed with CUDA events: the peak a bf16 run's MFU is
// measured against.
double cuda_bf16_gemm_gflops(int M, int N, int K, int device = 0);

}  // namespace borealis
