// The CUDA backend (fp32) and the device memory it works on.
//
// CudaBackend implements every op of kernels/backend.h on one NVIDIA GPU:
// GEMMs through cuBLAS (fp32, no TF32), the rest as CUDA kernels in
// cuda_backend.cu. Pointers passed to its ops are device pointers (a
// DeviceBuffer's data()). Reductions run in a fixed order without atomics,
// so a call repeats bit for bit on the same GPU; where the CPU backend sums
// in a fixed order too (embedding and bias gradients, the norms' weight
// gradients), the GPU sums in that same order.
//
// This header needs no CUDA headers: code built by the host compiler (the
// tests, the trainer) includes it. It exists only in builds with the CUDA
// kernels (BOREALIS_HAVE_CUDA_KERNELS).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "kernels/backend.h"

namespace borealis {

// Why no CUDA device can be used, or "" when device 0 can.
std::string cuda_unavailable_reason();

// The backend on device `device`. Throws std::runtime_error ("CUDA: ...")
// when the device cannot be opened.
std::unique_ptr<Backend<float>> make_cuda_backend(int device = 0);

// Device memory, freed with the object. Copies are synchronous (they wait for
// the device's work on the current stream to finish first).
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(std::size_t bytes);
  ~DeviceBuffer();
  DeviceBuffer(DeviceBuffer&& other) noexcept;
  DeviceBuffer& operator=(DeviceBuffer&& other) noexcept;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  void* data() { return ptr_; }
  const void* data() const { return ptr_; }
  std::size_t bytes() const { return bytes_; }
  template <typename T>
  T* as() {
    return static_cast<T*>(ptr_);
  }

  void upload(const void* host, std::size_t bytes, std::size_t offset = 0);
  void download(void* host, std::size_t bytes, std::size_t offset = 0) const;

 private:
  void* ptr_ = nullptr;
  std::size_t bytes_ = 0;
};

// A device copy of a host vector, and back.
template <typename T>
DeviceBuffer to_device(const std::vector<T>& host) {
  DeviceBuffer buf(host.size() * sizeof(T));
  buf.upload(host.data(), host.size() * sizeof(T));
  return buf;
}
template <typename T>
std::vector<T> to_host(const DeviceBuffer& buf) {
  std::vector<T> host(buf.bytes() / sizeof(T));
  buf.download(host.data(), host.size() * sizeof(T));
  return host;
}

}  // namespace borealis
