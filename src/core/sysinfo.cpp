#include "core/sysinfo.h"

#include <sched.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <string_view>

#include "core/error.h"
#include "core/text.h"

namespace borealis {

namespace {

// Ranks SIMD levels so the build's level can be compared with the CPU's.
constexpr const char* kSimdLevels[] = {"baseline", "sse4.2", "avx", "avx2+fma", "avx512"};

int simd_rank(std::string_view level) {
  for (int i = 0; i < static_cast<int>(std::size(kSimdLevels)); ++i) {
    if (level == kSimdLevels[i]) return i;
  }
  return 0;
}

std::string cpu_simd_level() {
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl")) {
    return "avx512";
  }
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return "avx2+fma";
  if (__builtin_cpu_supports("avx")) return "avx";
  if (__builtin_cpu_supports("sse4.2")) return "sse4.2";
  return "baseline";
}

std::string build_simd_level() {
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
  return "avx512";
#elif defined(__AVX2__) && defined(__FMA__)
  return "avx2+fma";
#elif defined(__AVX__)
  return "avx";
#elif defined(__SSE4_2__)
  return "sse4.2";
#else
  return "baseline";
#endif
}

std::string cpu_model() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line)) {
    if (line.starts_with("model name")) {
      const auto colon = line.find(':');
      if (colon != std::string::npos)
        return std::string(trim(std::string_view(line).substr(colon + 1)));
    }
  }
  return "unknown";
}

// Value in bytes of a /proc/meminfo field ("MemTotal:  16384 kB").
std::uint64_t meminfo_field(const std::string& text, std::string_view field) {
  const auto pos = text.find(field);
  if (pos == std::string::npos) return 0;
  const char* p = text.c_str() + pos + field.size();
  return std::strtoull(p, nullptr, 10) * 1024;
}

std::string read_small_file(const char* path) {
  std::ifstream in(path);
  if (!in) return {};
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

std::uint64_t cgroup_memory_limit() {
  // cgroup v2 first, then v1. "max" or a huge v1 value means no limit.
  std::string v2 = std::string(trim(read_small_file("/sys/fs/cgroup/memory.max")));
  if (!v2.empty() && v2 != "max") return std::strtoull(v2.c_str(), nullptr, 10);
  std::string v1 =
      std::string(trim(read_small_file("/sys/fs/cgroup/memory/memory.limit_in_bytes")));
  if (!v1.empty()) {
    const std::uint64_t limit = std::strtoull(v1.c_str(), nullptr, 10);
    if (limit < (std::uint64_t{1} << 60)) return limit;
  }
  return 0;
}

}  // namespace

CpuInfo cpu_info() {
  CpuInfo info;
  info.model = cpu_model();
  info.online = static_cast<unsigned>(std::max(1L, ::sysconf(_SC_NPROCESSORS_ONLN)));
  cpu_set_t set;
  CPU_ZERO(&set);
  info.usable = ::sched_getaffinity(0, sizeof set, &set) == 0
                    ? static_cast<unsigned>(CPU_COUNT(&set))
                    : info.online;
  info.simd_cpu = cpu_simd_level();
  info.simd_build = build_simd_level();
  info.simd_build_supported = simd_rank(info.simd_build) <= simd_rank(info.simd_cpu);
  return info;
}

std::uint64_t MemoryInfo::usable() const {
  return cgroup_limit == 0 ? available : std::min(available, cgroup_limit);
}

MemoryInfo memory_info() {
  MemoryInfo info;
  const std::string text = read_small_file("/proc/meminfo");
  info.total = meminfo_field(text, "MemTotal:");
  info.available = meminfo_field(text, "MemAvailable:");
  info.cgroup_limit = cgroup_memory_limit();
  return info;
}

std::uint64_t process_rss() {
  return meminfo_field(read_small_file("/proc/self/status"), "VmRSS:");
}

DiskInfo disk_info(const std::filesystem::path& path) {
  struct statvfs st {};
  if (::statvfs(path.c_str(), &st) != 0)
    throw_errno("cannot check disk space", path.string(), errno);
  DiskInfo info;
  info.path = path;
  info.total = static_cast<std::uint64_t>(st.f_blocks) * st.f_frsize;
  info.free = static_cast<std::uint64_t>(st.f_bavail) * st.f_frsize;
  return info;
}

}  // namespace borealis
