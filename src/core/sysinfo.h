// What this machine offers: CPU and SIMD level, memory, disk space.
// Used by `borealis doctor` and to size thread pools and buffers.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>

namespace borealis {

struct CpuInfo {
  std::string model;                 // "AMD EPYC 7763 64-Core Processor"
  unsigned online = 0;               // logical CPUs online
  unsigned usable = 0;               // CPUs this process may run on (affinity mask)
  std::string simd_cpu;              // best SIMD level the CPU supports
  std::string simd_build;            // SIMD level this binary was compiled for
  bool simd_build_supported = true;  // the CPU can run this binary's instructions
};

struct MemoryInfo {
  std::uint64_t total = 0;         // physical memory
  std::uint64_t available = 0;     // MemAvailable: what can be used without swapping
  std::uint64_t cgroup_limit = 0;  // container limit, 0 when there is none
  // What a job can actually use: the smaller of available and the limit.
  std::uint64_t usable() const;
};

struct DiskInfo {
  std::filesystem::path path;
  std::uint64_t total = 0;
  std::uint64_t free = 0;  // available to unprivileged users
};

CpuInfo cpu_info();
MemoryInfo memory_info();
// Resident set size of this process (VmRSS in /proc/self/status), 0 if unknown.
std::uint64_t process_rss();
// Throws Error when the path does not exist.
DiskInfo disk_info(const std::filesystem::path& path);

}  // namespace borealis
