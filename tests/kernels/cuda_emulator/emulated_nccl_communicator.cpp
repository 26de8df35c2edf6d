// The NCCL communicator compiled for the CUDA emulator (emulated_nccl.h).
#define BOREALIS_CUDA_EMULATOR 1
#include "dist/nccl_communicator.cpp"  // NOLINT(bugprone-suspicious-include)
