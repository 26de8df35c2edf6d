#include "kernels/make_backend.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <stdexcept>

#include "core/error.h"
#include "dist/launch_env.h"
#include "kernels/cuda/device_info.h"

#ifdef BOREALIS_HAVE_CUDA_KERNELS
#include "kernels/cuda/cuda_backend.h"
#endif
#ifdef BOREALIS_HAVE_NCCL
#include "dist/nccl_communicator.h"
#endif

namespace borealis {

std::vector<std::string> backend_names() {
#ifdef BOREALIS_HAVE_CUDA_KERNELS
  return {"cpu", "cuda"};
#else
  return {"cpu"};
#endif
}

std::string precision_name(Precision precision) {
  return precision == Precision::kBf16 ? "bf16" : "fp32";
}

Precision parse_precision(const std::string& name) {
  if (name == "fp32") return Precision::kFp32;
  if (name == "bf16") return Precision::kBf16;
  throw std::invalid_argument(fmt::format("unknown precision '{}' (fp32 or bf16)", name));
}

std::unique_ptr<Backend<float>> make_backend(const std::string& device, const std::string& where,
                                             Precision precision,
                                             const std::string& precision_where, int gpu) {
  if (device == "cpu") {
    if (precision != Precision::kFp32) {
      throw Error(fmt::format("precision '{}' runs on the CUDA backend (device 'cuda'); the CPU "
                              "backend computes in fp32",
                              precision_name(precision)),
                  precision_where);
    }
    return make_cpu_backend<float>();
  }
  if (device == "cuda") {
#ifdef BOREALIS_HAVE_CUDA_KERNELS
    const std::string why = cuda_unavailable_reason();
    if (!why.empty()) throw Error(fmt::format("device 'cuda': {}", why), where);
    return make_cuda_backend(gpu, precision);
#else
    (void)gpu;
    throw Error(
        "device 'cuda': this build has no CUDA backend (the CUDA toolkit was not found "
        "when it was configured, or BOREALIS_CUDA_KERNELS was OFF)",
        where);
#endif
  }
  throw Error(fmt::format("unknown device '{}' (this build has: {})", device,
                          fmt::join(backend_names(), ", ")),
              where);
}

int cuda_device_of_local_rank() {
  const auto devices = static_cast<int>(cuda_info().devices.size());
  return devices > 0 ? detect_launch_env().local_rank % devices : 0;
}

std::unique_ptr<Communicator> make_gpu_communicator(Communicator& host, int gpu,
                                                    const std::string& where) {
#ifdef BOREALIS_HAVE_NCCL
  const std::string why = nccl_unavailable_reason();
  if (!why.empty()) throw Error(fmt::format("collectives between GPUs need NCCL: {}", why), where);
  return make_nccl_communicator(host, gpu);
#else
  (void)host;
  (void)gpu;
  throw Error(
      "collectives between GPUs need NCCL, and this build has none (its header, nccl.h, was not "
      "found when it was configured)",
      where);
#endif
}

}  // namespace borealis
