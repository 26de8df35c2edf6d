// The CPU backend with memory the host may not touch, as a GPU's: every
// allocation is its own mapping, readable and writable only while an op,
// an upload or a download runs (mprotect). Code that reads or writes backend
// memory from the host directly, which works on the CPU backend but not on
// a GPU's, crashes here with SIGSEGV, so the paths a GPU run takes (host
// data uploaded, results downloaded) are tested without a GPU. The ops are
// the CPU backend's, so results must equal a plain CPU run bit for bit.
#pragma once

#include <sys/mman.h>
#include <unistd.h>

#include <cstring>
#include <map>
#include <memory>
#include <new>
#include <stdexcept>

#include "kernels/backend.h"
#include "kernels/timed_backend.h"

namespace borealis::test {

class GuardedBackend final : public TimedBackend<float> {
 public:
  GuardedBackend() : GuardedBackend(make_cpu_backend<float>()) {}
  ~GuardedBackend() override {
    for (const auto& [p, size] : maps_) munmap(p, size);
  }

  std::string name() const override { return "guarded cpu"; }
  bool host_memory() const override { return false; }

  void* allocate(std::size_t bytes) override {
    const std::size_t page = static_cast<std::size_t>(sysconf(_SC_PAGESIZE));
    const std::size_t size = (std::max<std::size_t>(bytes, 1) + page - 1) / page * page;
    void* p = mmap(nullptr, size, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);  // zeroed
    if (p == MAP_FAILED) throw std::bad_alloc();
    maps_[p] = size;
    if (open_) protect(p, size, true);
    return p;
  }
  void release(void* ptr) noexcept override {
    const auto it = maps_.find(ptr);
    if (it == maps_.end()) return;
    munmap(it->first, it->second);
    maps_.erase(it);
  }
  void upload(void* dst, const void* host, std::size_t bytes) override {
    open_all(true);
    std::memcpy(dst, host, bytes);
    open_all(false);
  }
  void download(void* host, const void* src, std::size_t bytes) override {
    open_all(true);
    std::memcpy(host, src, bytes);
    open_all(false);
  }

 protected:
  void before_op() override { open_all(true); }
  void after_op() override { open_all(false); }

 private:
  explicit GuardedBackend(std::unique_ptr<Backend<float>> cpu)
      : TimedBackend<float>(*cpu), cpu_(std::move(cpu)) {}

  static void protect(void* p, std::size_t size, bool open) {
    if (mprotect(p, size, open ? PROT_READ | PROT_WRITE : PROT_NONE) != 0) {
      throw std::runtime_error("GuardedBackend: mprotect failed");
    }
  }
  void open_all(bool open) {
    open_ = open;
    for (const auto& [p, size] : maps_) protect(p, size, open);
  }

  std::unique_ptr<Backend<float>> cpu_;  // the inner backend (TimedBackend holds a reference)
  std::map<void*, std::size_t> maps_;
  bool open_ = false;
};

}  // namespace borealis::test
