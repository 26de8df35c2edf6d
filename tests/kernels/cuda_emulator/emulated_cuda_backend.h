// The CUDA backend's own source (src/kernels/cuda/cuda_backend.cu) built by
// the host compiler against the CUDA emulator (cuda_emulator.h), so that its
// kernels and cuBLAS calls run in the tests on any machine: the same
// functions as kernels/cuda/cuda_backend.h, in namespace borealis::emulated.
#pragma once

#include <memory>
#include <string>

#include "kernels/backend.h"

namespace borealis::emulated {

std::string cuda_unavailable_reason();
std::unique_ptr<Backend<float>> make_cuda_backend(int device = 0,
                                                  Precision precision = Precision::kFp32);
double cuda_bf16_gemm_gflops(int M, int N, int K, int device = 0);

}  // namespace borealis::emulated
