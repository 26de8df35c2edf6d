#include "kernels/cuda/device_info.h"

#include <fmt/format.h>

#include <filesystem>
#include <system_error>

#ifdef BOREALIS_HAVE_CUDA
#include <cuda_runtime_api.h>
#endif

namespace borealis {

namespace {

// GPUs the NVIDIA kernel driver knows about, whatever this binary was built with.
[[maybe_unused]] std::size_t nvidia_gpus_in_proc() {
  std::error_code ec;
  std::size_t n = 0;
  for (std::filesystem::directory_iterator it("/proc/driver/nvidia/gpus", ec), end;
       !ec && it != end; it.increment(ec)) {
    ++n;
  }
  return n;
}

[[maybe_unused]] std::string version_text(int v) {
  return fmt::format("{}.{}", v / 1000, (v % 1000) / 10);
}

}  // namespace

CudaInfo cuda_info() {
  CudaInfo info;
#ifdef BOREALIS_HAVE_CUDA
  info.compiled = true;
  int runtime = 0;
  if (cudaRuntimeGetVersion(&runtime) == cudaSuccess) info.runtime_version = version_text(runtime);
  int driver = 0;
  if (cudaDriverGetVersion(&driver) == cudaSuccess && driver > 0) {
    info.driver_version = version_text(driver);
  }
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) {
    info.status = info.driver_version.empty()
                      ? fmt::format("no NVIDIA driver found ({})", cudaGetErrorString(err))
                      : cudaGetErrorString(err);
    return info;
  }
  for (int i = 0; i < count; ++i) {
    cudaDeviceProp prop{};
    if (cudaGetDeviceProperties(&prop, i) != cudaSuccess) continue;
    info.devices.push_back({i, prop.name, static_cast<std::uint64_t>(prop.totalGlobalMem),
                            prop.major, prop.minor, prop.multiProcessorCount});
  }
  if (info.devices.empty()) info.status = "no CUDA devices";
#else
  const std::size_t gpus = nvidia_gpus_in_proc();
  info.status = gpus == 0 ? "not compiled in; no NVIDIA driver or GPU found"
                          : fmt::format(
                                "not compiled in, but the NVIDIA driver lists {} GPU(s): "
                                "rebuild with the CUDA toolkit installed",
                                gpus);
#endif
  return info;
}

}  // namespace borealis
