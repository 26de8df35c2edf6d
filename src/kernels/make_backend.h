// The backend a command runs on, by the name its --device option takes.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "dist/communicator.h"
#include "kernels/backend.h"

namespace borealis {

// The names --device accepts in this build: "cpu", and "cuda" where the
// CUDA backend is compiled in.
std::vector<std::string> backend_names();

// The float backend for `device` ("cpu" or "cuda"). Throws borealis::Error
// at `where` for an unknown name, a build without the CUDA backend, or no
// usable GPU, saying which. Precision::kBf16 (bf16 matmul operands) needs
// the CUDA backend: on "cpu" it is an error at `precision_where`. `gpu` is
// the CUDA device's index (data-parallel ranks on one node take one each).
std::unique_ptr<Backend<float>> make_backend(const std::string& device,
                                             const std::string& where = "--device",
                                             Precision precision = Precision::kFp32,
                                             const std::string& precision_where = "--precision",
                                             int gpu = 0);

// The CUDA device of this rank: its rank on its node, modulo the devices
// it sees (one each where the launcher hands out a GPU per rank); 0
// without devices.
int cuda_device_of_local_rank();

// The communicator between the GPUs of the ranks of `host` (NCCL:
// dist/nccl_communicator.h), on GPU `gpu`. Throws Error at `where` in a
// build without NCCL or where NCCL cannot be loaded, saying which.
std::unique_ptr<Communicator> make_gpu_communicator(Communicator& host, int gpu,
                                                    const std::string& where);

}  // namespace borealis
