// CUDA devices visible to this process, for `borealis doctor` and for picking
// a device per rank. Works in builds without CUDA too: it then reports that
// the backend is not compiled in, and whether NVIDIA GPUs are present anyway.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace borealis {

struct CudaDevice {
  int index = 0;
  std::string name;
  std::uint64_t memory = 0;
  int compute_major = 0;
  int compute_minor = 0;
  int multiprocessors = 0;
};

struct CudaInfo {
  bool compiled = false;        // this binary was built with the CUDA runtime
  std::string runtime_version;  // "12.4" when compiled
  std::string driver_version;   // "12.4" when a driver answers
  std::vector<CudaDevice> devices;
  std::string status;  // why there are no devices, or "" when there are
};

CudaInfo cuda_info();

}  // namespace borealis
