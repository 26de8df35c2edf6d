// The CUDA backend compiled for the CUDA emulator (emulated_cuda_backend.h).
#define BOREALIS_CUDA_EMULATOR 1
#include "kernels/cuda/cuda_backend.cu"  // NOLINT(bugprone-suspicious-include)
