#include "dist/comm_bench.h"

#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>

#include "core/stopwatch.h"
#include "core/text.h"

namespace borealis {

namespace {

using Clock = std::chrono::steady_clock;

// The same on every rank: about 256 MiB moved per size, 5 to 1000 times.
int iterations_for(std::size_t bytes) {
  const std::size_t n = (std::size_t{256} << 20) / std::max<std::size_t>(bytes, 1);
  return static_cast<int>(std::clamp<std::size_t>(n, 5, 1000));
}

std::string rate(double bytes_per_second) {
  return fmt::format("{:.2f} GB/s", bytes_per_second / 1e9);
}

std::string duration(double s) {
  if (s < 1e-3) return fmt::format("{:.1f} us", s * 1e6);
  if (s < 1) return fmt::format("{:.2f} ms", s * 1e3);
  return fmt::format("{:.2f} s", s);
}

}  // namespace

std::vector<BandwidthPoint> allreduce_bandwidth(Communicator& comm, std::size_t min_bytes,
                                                std::size_t max_bytes) {
  // Host memory: the CPU backend's.
  const auto cpu = make_cpu_backend<float>();
  return allreduce_bandwidth(comm, *cpu, comm, min_bytes, max_bytes);
}

std::vector<BandwidthPoint> allreduce_bandwidth(Communicator& comm, BackendMemory& memory,
                                                Communicator& host, std::size_t min_bytes,
                                                std::size_t max_bytes) {
  std::vector<BandwidthPoint> points;
  const double n = comm.size();
  const std::size_t elems = std::max<std::size_t>(max_bytes / sizeof(float), 1);
  BackendArray<float> buffer(memory, static_cast<std::int64_t>(elems));
  memory.upload(buffer.data(), std::vector<float>(elems, 1.0F).data(), elems * sizeof(float));
  for (std::size_t bytes = std::max<std::size_t>(min_bytes, sizeof(float)); bytes <= max_bytes;
       bytes *= 4) {
    std::span<float> data(buffer.data(), bytes / sizeof(float));
    const int iterations = iterations_for(bytes);
    comm.allreduce(data, ReduceOp::Avg);  // warm-up: connections, buffers
    host.barrier();
    const auto start = Clock::now();
    for (int i = 0; i < iterations; ++i) comm.allreduce(data, ReduceOp::Avg);
    double elapsed = seconds_since(start) / iterations;
    host.allreduce(std::span<double>(&elapsed, 1), ReduceOp::Max);
    BandwidthPoint p;
    p.bytes = bytes;
    p.iterations = iterations;
    p.seconds = elapsed;
    p.algbw = static_cast<double>(bytes) / elapsed;
    p.busbw = p.algbw * 2 * (n - 1) / n;
    points.push_back(p);
  }
  return points;
}

std::vector<BandwidthPoint> sendrecv_bandwidth(Communicator& comm, std::size_t min_bytes,
                                               std::size_t max_bytes) {
  std::vector<BandwidthPoint> points;
  const int me = comm.rank();
  const int peer = me % 2 == 0 ? me + 1 : me - 1;
  const bool paired = peer < comm.size();
  const std::size_t elems = std::max<std::size_t>(max_bytes / sizeof(float), 1);
  std::vector<float> out(elems, 1.0F), in(elems);
  for (std::size_t bytes = std::max<std::size_t>(min_bytes, sizeof(float)); bytes <= max_bytes;
       bytes *= 4) {
    const std::size_t n = bytes / sizeof(float);
    const auto exchange = [&] {
      comm.sendrecv(std::span<const float>(out.data(), n), peer, std::span<float>(in.data(), n),
                    peer);
    };
    const int iterations = iterations_for(bytes);
    if (paired) exchange();  // warm-up
    comm.barrier();
    const auto start = Clock::now();
    for (int i = 0; paired && i < iterations; ++i) exchange();
    double elapsed = paired ? seconds_since(start) / iterations : 0.0;
    comm.allreduce(std::span<double>(&elapsed, 1), ReduceOp::Max);
    BandwidthPoint p;
    p.bytes = bytes;
    p.iterations = iterations;
    p.seconds = elapsed;
    p.algbw = p.busbw = static_cast<double>(bytes) / elapsed;
    points.push_back(p);
  }
  return points;
}

std::string format_bandwidth_table(const std::vector<BandwidthPoint>& points) {
  std::string out = fmt::format("{:>10}  {:>6}  {:>10}  {:>11}  {:>11}\n", "size", "iters",
                                "time/op", "algbw", "busbw");
  for (const auto& p : points) {
    out += fmt::format("{:>10}  {:>6}  {:>10}  {:>11}  {:>11}\n", format_bytes(p.bytes),
                       p.iterations, duration(p.seconds), rate(p.algbw), rate(p.busbw));
  }
  return out;
}

std::vector<RankReport> gather_rank_reports(Communicator& comm, double init_seconds) {
  // A fixed dependent chain of square roots: the same work on every rank, so
  // a rank that takes longer runs on a slower or busier core.
  const auto start = Clock::now();
  double x = 1.0;
  for (int i = 0; i < 5'000'000; ++i) x = std::sqrt(x + 1.0);
  const double compute = seconds_since(start) + (x < 0 ? 1.0 : 0.0);

  const int n = comm.size();
  std::vector<double> mine = {static_cast<double>(::getpid()), init_seconds, compute};
  std::vector<double> all(mine.size() * static_cast<std::size_t>(n));
  comm.all_gather(std::span<const double>(mine), std::span<double>(all));
  std::vector<RankReport> reports;
  for (int r = 0; r < n; ++r) {
    const double* v = all.data() + mine.size() * static_cast<std::size_t>(r);
    reports.push_back({r, comm.host(r), static_cast<long>(v[0]), v[1], v[2]});
  }
  return reports;
}

std::string format_rank_reports(const std::vector<RankReport>& reports) {
  std::string out;
  for (const auto& r : reports) {
    out += fmt::format("rank {:<4} host {:<20} pid {:<8} init {:<10} compute {}\n", r.rank, r.host,
                       r.pid, duration(r.init_seconds), duration(r.compute_seconds));
  }
  if (reports.empty()) return out;
  const auto slow = std::max_element(reports.begin(), reports.end(), [](auto& a, auto& b) {
    return a.compute_seconds < b.compute_seconds;
  });
  const auto fast = std::min_element(reports.begin(), reports.end(), [](auto& a, auto& b) {
    return a.compute_seconds < b.compute_seconds;
  });
  const auto late = std::max_element(reports.begin(), reports.end(), [](auto& a, auto& b) {
    return a.init_seconds < b.init_seconds;
  });
  out += fmt::format("slowest rank: {} ({}), compute {} ({:.2f}x the fastest, rank {})\n",
                     slow->rank, slow->host, duration(slow->compute_seconds),
                     slow->compute_seconds / fast->compute_seconds, fast->rank);
  out += fmt::format("slowest start: rank {} ({}), init {}\n", late->rank, late->host,
                     duration(late->init_seconds));
  return out;
}

}  // namespace borealis
