// Helpers of the CUDA tests: whether they can run here, and device memory
// of the backend under test.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

#include "kernels/backend.h"
#include "kernels/cuda/cuda_backend.h"

namespace borealis::test {

// Returns from the calling test (or fixture SetUp) where no CUDA device can
// be used: skipped, with the reason printed, or, with BOREALIS_REQUIRE_CUDA
// set (scripts/device-check.sh sets it on the GPU machine), failed, so that a
// check meant to run on a GPU cannot pass by skipping. (A fatal failure: a
// non-fatal one beside a skip would let gtest run the test body.)
#define BOREALIS_SKIP_WITHOUT_CUDA()                                         \
  do {                                                                       \
    const std::string why_no_cuda = ::borealis::cuda_unavailable_reason();   \
    if (!why_no_cuda.empty()) {                                              \
      if (std::getenv("BOREALIS_REQUIRE_CUDA") != nullptr) {                 \
        GTEST_FAIL() << "BOREALIS_REQUIRE_CUDA is set, but " << why_no_cuda; \
      }                                                                      \
      GTEST_SKIP() << "CUDA tests need a GPU: " << why_no_cuda;              \
    }                                                                        \
  } while (false)

// The CUDA backends the CUDA tests run on: "cuda" (the GPU; skipped where
// none answers) in builds with the CUDA backend, and "emulated" (its source
// on the CUDA emulator, tests/kernels/cuda_emulator/) everywhere.
inline std::vector<std::string> gpu_backends_under_test() {
  std::vector<std::string> names = {"emulated"};
#ifdef BOREALIS_HAVE_CUDA_KERNELS
  names.insert(names.begin(), "cuda");
#endif
  return names;
}

// ||got - want|| / ||want|| over n values (||got - want|| where want is all
// zeros): how far a GPU's result is from the CPU's, in norm.
inline double relative_norm(const float* got, const float* want, std::int64_t n) {
  double diff = 0, ref = 0;
  for (std::int64_t i = 0; i < n; ++i) {
    diff += (static_cast<double>(got[i]) - want[i]) * (static_cast<double>(got[i]) - want[i]);
    ref += static_cast<double>(want[i]) * want[i];
  }
  return ref == 0 ? std::sqrt(diff) : std::sqrt(diff / ref);
}

// Bytes of a backend's memory (a BackendArray) with typed views and copies,
// for the tests' inputs and outputs.
class DeviceBuffer {
 public:
  DeviceBuffer(Backend<float>& backend, std::size_t bytes)
      : backend_(&backend), mem_(backend, static_cast<std::int64_t>(bytes)) {}
  template <typename T>
  T* as() {
    return reinterpret_cast<T*>(mem_.data());
  }
  std::size_t bytes() const { return static_cast<std::size_t>(mem_.size()); }
  void upload(const void* host, std::size_t bytes) { backend_->upload(mem_.data(), host, bytes); }
  void download(void* host, std::size_t bytes) const {
    backend_->download(host, mem_.data(), bytes);
  }

 private:
  Backend<float>* backend_;
  BackendArray<std::byte> mem_;
};

// A backend copy of a host vector, and back.
template <typename T>
DeviceBuffer to_device(Backend<float>& backend, const std::vector<T>& host) {
  DeviceBuffer buf(backend, host.size() * sizeof(T));
  buf.upload(host.data(), host.size() * sizeof(T));
  return buf;
}
template <typename T>
std::vector<T> to_host(const DeviceBuffer& buf) {
  std::vector<T> host(buf.bytes() / sizeof(T));
  buf.download(host.data(), host.size() * sizeof(T));
  return host;
}

}  // namespace borealis::test
