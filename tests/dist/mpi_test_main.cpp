// Tests of MpiCommunicator, and of the NCCL communicator over it on the
// CUDA emulator's NCCL (dist/nccl_communicator.h,
// kernels/cuda_emulator/emulated_nccl.h), run by ctest under `mpirun -np 2`
// (any count of two or more works; mpi_test_main checks it). Every rank
// runs every test; a failure on any rank fails the job.
// `--timeout-check [nccl|nccl-start]` runs the time-out scenario instead:
// the last rank sleeps past the time-out and rank 0 must report it by rank
// and host (in the message and in the CommTimeout's fields), in time,
// waiting in an MPI allreduce or, with `nccl`, in an NCCL one on emulated
// GPU memory, or with `nccl-start`, in the NCCL communicator's start-up; the
// job then ends non-zero (the communicator aborts it), and
// run_timeout_check.sh checks both.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "core/error.h"
#include "dist/comm_bench.h"
#include "dist/communicator.h"
#include "dist/mpi_gtest.h"
#include "kernels/backend.h"
#include "kernels/cuda_emulator/emulated_cuda_backend.h"
#include "kernels/cuda_emulator/emulated_nccl.h"

namespace borealis {
namespace {

Communicator* g_comm = nullptr;

// Data of rank r: values of very different magnitudes, so that the summation
// order changes the rounding.
template <typename T>
std::vector<T> rank_data(int rank, std::size_t n) {
  std::mt19937_64 rng(1000 + static_cast<unsigned>(rank));
  std::uniform_real_distribution<double> mantissa(-1.0, 1.0);
  std::uniform_int_distribution<int> exponent(-20, 20);
  std::vector<T> v(n);
  for (auto& x : v) x = static_cast<T>(std::ldexp(mantissa(rng), exponent(rng)));
  return v;
}

// The ordered result: ((x0 + x1) + x2) + ... per element.
template <typename T>
std::vector<T> rank_order_sum(int ranks, std::size_t n) {
  std::vector<T> sum = rank_data<T>(0, n);
  for (int r = 1; r < ranks; ++r) {
    const auto v = rank_data<T>(r, n);
    for (std::size_t i = 0; i < n; ++i) sum[i] += v[i];
  }
  return sum;
}

template <typename T>
bool same_bits(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0;
}

TEST(Mpi, WorldAndHosts) {
  Communicator& c = *g_comm;
  EXPECT_EQ(c.backend(), "mpi");
  EXPECT_GE(c.size(), 2);
  char name[256] = {};
  gethostname(name, sizeof(name) - 1);
  EXPECT_EQ(c.host(c.rank()), name);
}

TEST(Mpi, OrderedAllreduceIsTheRankOrderSumBitForBit) {
  Communicator& c = *g_comm;
  c.set_reduce_algorithm(ReduceAlgorithm::Ordered);
  for (std::size_t n : {std::size_t{1}, std::size_t{3}, std::size_t{1001}, std::size_t{1} << 18}) {
    auto f = rank_data<float>(c.rank(), n);
    c.allreduce(std::span<float>(f), ReduceOp::Sum);
    EXPECT_TRUE(same_bits(f, rank_order_sum<float>(c.size(), n))) << n;
    auto d = rank_data<double>(c.rank(), n);
    c.allreduce(std::span<double>(d), ReduceOp::Sum);
    EXPECT_TRUE(same_bits(d, rank_order_sum<double>(c.size(), n))) << n;
    auto avg = rank_data<double>(c.rank(), n);
    c.allreduce(std::span<double>(avg), ReduceOp::Avg);
    auto expected = rank_order_sum<double>(c.size(), n);
    for (auto& x : expected) x /= c.size();
    EXPECT_TRUE(same_bits(avg, expected)) << n;
  }
  std::vector<float> m = {static_cast<float>(c.rank()), -static_cast<float>(c.rank())};
  c.allreduce(std::span<float>(m), ReduceOp::Max);
  EXPECT_EQ(m[0], c.size() - 1);
  EXPECT_EQ(m[1], 0.0F);
  std::vector<float> lo = {static_cast<float>(c.rank())};
  c.allreduce(std::span<float>(lo), ReduceOp::Min);
  EXPECT_EQ(lo[0], 0.0F);
}

TEST(Mpi, NativeAllreduceAgreesOnEveryRank) {
  Communicator& c = *g_comm;
  c.set_reduce_algorithm(ReduceAlgorithm::Native);
  const std::size_t n = 10'000;
  auto f = rank_data<float>(c.rank(), n);
  c.allreduce(std::span<float>(f), ReduceOp::Avg);
  const auto expected = rank_order_sum<float>(c.size(), n);
  for (std::size_t i = 0; i < n; ++i) {
    EXPECT_NEAR(f[i], expected[i] / c.size(), 1e-5 * std::abs(expected[i]) + 1e-30) << i;
  }
  // Every rank holds the same bits: gather them all and compare with rank 0's.
  std::vector<float> all(n * static_cast<std::size_t>(c.size()));
  c.all_gather(std::span<const float>(f), std::span<float>(all));
  for (int r = 1; r < c.size(); ++r) {
    EXPECT_EQ(
        std::memcmp(all.data(), all.data() + n * static_cast<std::size_t>(r), n * sizeof(float)),
        0);
  }
  c.set_reduce_algorithm(ReduceAlgorithm::Ordered);
}

TEST(Mpi, ReduceScatterAllGatherBroadcast) {
  Communicator& c = *g_comm;
  const auto n = static_cast<std::size_t>(c.size());
  for (ReduceAlgorithm a : {ReduceAlgorithm::Ordered, ReduceAlgorithm::Native}) {
    c.set_reduce_algorithm(a);
    const std::size_t block = 5;
    const auto in = rank_data<double>(c.rank(), block * n);
    std::vector<double> out(block);
    c.reduce_scatter(std::span<const double>(in), std::span<double>(out), ReduceOp::Sum);
    const auto sum = rank_order_sum<double>(c.size(), block * n);
    for (std::size_t i = 0; i < block; ++i) {
      const double want = sum[static_cast<std::size_t>(c.rank()) * block + i];
      if (a == ReduceAlgorithm::Ordered) {
        EXPECT_EQ(out[i], want);
      } else {
        EXPECT_NEAR(out[i], want, 1e-12 * std::abs(want));
      }
    }
  }
  c.set_reduce_algorithm(ReduceAlgorithm::Ordered);

  std::vector<float> mine = {static_cast<float>(c.rank()), 10.0F + static_cast<float>(c.rank())};
  std::vector<float> all(2 * n);
  c.all_gather(std::span<const float>(mine), std::span<float>(all));
  for (std::size_t r = 0; r < n; ++r) {
    EXPECT_EQ(all[2 * r], static_cast<float>(r));
    EXPECT_EQ(all[2 * r + 1], 10.0F + static_cast<float>(r));
  }
  // In place: this rank's block already sits in the output.
  std::vector<double> inplace(n, -1.0);
  inplace[static_cast<std::size_t>(c.rank())] = c.rank() * 2.0;
  c.all_gather(std::span<const double>(&inplace[static_cast<std::size_t>(c.rank())], 1),
               std::span<double>(inplace));
  for (std::size_t r = 0; r < n; ++r) EXPECT_EQ(inplace[r], r * 2.0);

  const int root = c.size() - 1;
  std::vector<double> b(4, c.rank() == root ? 7.5 : 0.0);
  c.broadcast(std::span<double>(b), root);
  EXPECT_EQ(b, std::vector<double>(4, 7.5));
  c.barrier();
}

TEST(Mpi, NonBlockingOperationsOverlapWithWork) {
  Communicator& c = *g_comm;
  const std::size_t n = 1 << 20;
  auto grads = rank_data<float>(c.rank(), n);
  std::vector<float> mine = {static_cast<float>(c.rank() + 1)};
  std::vector<float> gathered(static_cast<std::size_t>(c.size()));
  auto big = c.iallreduce(std::span<float>(grads), ReduceOp::Sum);
  auto small = c.iall_gather(std::span<const float>(mine), std::span<float>(gathered));
  // Work while the reduction runs, polling it as a training step would
  // (on a fast peer it may be complete at the first poll already).
  double work = 0;
  int polls = 0;
  do {
    for (int i = 0; i < 1000; ++i) work += std::sqrt(static_cast<double>(i + polls));
    ++polls;
  } while (!big->test());
  small->wait();
  EXPECT_GT(work, 0.0);
  EXPECT_TRUE(same_bits(grads, rank_order_sum<float>(c.size(), n)));
  for (int r = 0; r < c.size(); ++r) EXPECT_EQ(gathered[static_cast<std::size_t>(r)], r + 1.0F);
  // Ordered reductions do not depend on the timing: a second run is identical.
  auto again = rank_data<float>(c.rank(), n);
  c.allreduce(std::span<float>(again), ReduceOp::Sum);
  EXPECT_TRUE(same_bits(again, grads));
}

// Many ordered allreduces in flight at once, polled in a different order
// on each rank (the first stage completes at different times): every result
// is still the rank-order sum.
TEST(Mpi, ManyOrderedAllreducesInFlightPolledInAnyOrder) {
  Communicator& c = *g_comm;
  c.set_reduce_algorithm(ReduceAlgorithm::Ordered);
  const std::size_t buffers = 12;
  std::vector<std::vector<float>> data;
  std::vector<RequestPtr> requests;
  for (std::size_t k = 0; k < buffers; ++k) {
    data.push_back(rank_data<float>(c.rank() + static_cast<int>(k) * 17, 1000 + 3000 * k));
  }
  for (std::size_t k = 0; k < buffers; ++k) {
    requests.push_back(c.iallreduce(std::span<float>(data[k]), ReduceOp::Sum));
    if (c.rank() == 1) std::this_thread::sleep_for(std::chrono::microseconds(300));
  }
  std::vector<bool> done(buffers, false);
  std::size_t left = buffers;
  while (left > 0) {
    for (std::size_t i = 0; i < buffers; ++i) {
      const std::size_t k = c.rank() % 2 == 0 ? buffers - 1 - i : i;
      if (!done[k] && requests[k]->test()) done[k] = true, --left;
    }
  }
  for (std::size_t k = 0; k < buffers; ++k) {
    std::vector<float> want = rank_data<float>(static_cast<int>(k) * 17, 1000 + 3000 * k);
    for (int r = 1; r < c.size(); ++r) {
      const auto v = rank_data<float>(r + static_cast<int>(k) * 17, 1000 + 3000 * k);
      for (std::size_t i = 0; i < want.size(); ++i) want[i] += v[i];
    }
    EXPECT_TRUE(same_bits(data[k], want)) << k;
  }
}

// ---- the NCCL communicator over the emulated NCCL ----------------------------

// A rank's emulated GPU and its NCCL communicator over the world.
struct EmulatedGpu {
  EmulatedGpu() : backend(emulated::make_cuda_backend()) {
    nccl = emulated::make_nccl_communicator(*g_comm, 0);
  }
  // `host` in the GPU's memory, and back.
  template <typename T>
  BackendArray<T> put(const std::vector<T>& host) {
    BackendArray<T> a(*backend, static_cast<std::int64_t>(host.size()));
    backend->upload(a.data(), host.data(), host.size() * sizeof(T));
    return a;
  }
  template <typename T>
  std::vector<T> get(const BackendArray<T>& a) {
    std::vector<T> host(static_cast<std::size_t>(a.size()));
    backend->download(host.data(), a.data(), host.size() * sizeof(T));
    return host;
  }
  std::unique_ptr<Backend<float>> backend;
  std::unique_ptr<Communicator> nccl;
};

template <typename T>
std::vector<T> reduce_over_ranks(int ranks, std::size_t n, ReduceOp op) {
  std::vector<T> out = rank_data<T>(0, n);
  for (int r = 1; r < ranks; ++r) {
    const auto v = rank_data<T>(r, n);
    for (std::size_t i = 0; i < n; ++i) {
      out[i] = op == ReduceOp::Max   ? std::max(out[i], v[i])
               : op == ReduceOp::Min ? std::min(out[i], v[i])
                                     : out[i] + v[i];
    }
  }
  if (op == ReduceOp::Avg) {
    for (auto& x : out) x /= static_cast<T>(ranks);
  }
  return out;
}

// Two ranks add in either order with the same bits, so every result is
// exact; more ranks are compared within rounding.
template <typename T>
void expect_reduced(const std::vector<T>& got, const std::vector<T>& want, const char* what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  for (std::size_t i = 0; i < got.size(); ++i) {
    if (g_comm->size() == 2) {
      ASSERT_EQ(got[i], want[i]) << what << " element " << i;
    } else {
      ASSERT_NEAR(got[i], want[i], 1e-5 * std::abs(want[i])) << what << " element " << i;
    }
  }
}

TEST(NcclEmulated, AllreduceOfEveryOpAndType) {
  EmulatedGpu gpu;
  Communicator& c = *gpu.nccl;
  EXPECT_EQ(c.backend(), "nccl");
  EXPECT_EQ(c.size(), g_comm->size());
  EXPECT_EQ(c.rank(), g_comm->rank());
  EXPECT_EQ(c.host(c.rank()), g_comm->host(c.rank()));
  const std::size_t n = 3001;
  for (const ReduceOp op : {ReduceOp::Sum, ReduceOp::Avg, ReduceOp::Max, ReduceOp::Min}) {
    auto f = gpu.put(rank_data<float>(c.rank(), n));
    c.allreduce(std::span<float>(f.data(), n), op);
    expect_reduced(gpu.get(f), reduce_over_ranks<float>(c.size(), n, op), reduce_op_name(op));
    auto d = gpu.put(rank_data<double>(c.rank(), n));
    c.allreduce(std::span<double>(d.data(), n), op);
    expect_reduced(gpu.get(d), reduce_over_ranks<double>(c.size(), n, op), reduce_op_name(op));
  }
}

TEST(NcclEmulated, ReduceScatterAllGatherBroadcastSendrecvBarrier) {
  EmulatedGpu gpu;
  Communicator& c = *gpu.nccl;
  const int ranks = c.size(), me = c.rank();
  const std::size_t block = 517, n = block * static_cast<std::size_t>(ranks);
  // reduce_scatter: rank r gets the sums of block r.
  auto in = gpu.put(rank_data<float>(me, n));
  BackendArray<float> out(*gpu.backend, static_cast<std::int64_t>(block));
  c.reduce_scatter(std::span<const float>(in.data(), n), std::span<float>(out.data(), block),
                   ReduceOp::Sum);
  const auto sums = reduce_over_ranks<float>(ranks, n, ReduceOp::Sum);
  expect_reduced(gpu.get(out),
                 std::vector<float>(sums.begin() + static_cast<std::ptrdiff_t>(block * me),
                                    sums.begin() + static_cast<std::ptrdiff_t>(block * (me + 1))),
                 "reduce_scatter");
  // all_gather: every rank's block in rank order, from a separate buffer
  // and in place (NCCL's in-place form: the input is this rank's slot).
  std::vector<float> mine(block, static_cast<float>(me) + 0.5f), want;
  for (int r = 0; r < ranks; ++r) want.insert(want.end(), block, static_cast<float>(r) + 0.5f);
  auto piece = gpu.put(mine);
  BackendArray<float> all(*gpu.backend, static_cast<std::int64_t>(n));
  c.all_gather(std::span<const float>(piece.data(), block), std::span<float>(all.data(), n));
  EXPECT_EQ(gpu.get(all), want);
  gpu.backend->fill(all.data(), -1.0f, static_cast<std::int64_t>(n));
  gpu.backend->copy(all.data() + block * me, piece.data(), static_cast<std::int64_t>(block));
  c.all_gather(std::span<const float>(all.data() + block * me, block),
               std::span<float>(all.data(), n));
  EXPECT_EQ(gpu.get(all), want);
  // broadcast from the last rank.
  auto b = gpu.put(rank_data<float>(me, 100));
  c.broadcast(std::span<float>(b.data(), 100), ranks - 1);
  EXPECT_EQ(gpu.get(b), rank_data<float>(ranks - 1, 100));
  // sendrecv around the ring: each rank sends up and receives from below.
  auto send = gpu.put(rank_data<float>(me, 64));
  BackendArray<float> recv(*gpu.backend, 64);
  c.sendrecv(std::span<const float>(send.data(), 64), (me + 1) % ranks,
             std::span<float>(recv.data(), 64), (me + ranks - 1) % ranks);
  EXPECT_EQ(gpu.get(recv), rank_data<float>((me + ranks - 1) % ranks, 64));
  c.barrier();
}

TEST(NcclEmulated, NonBlockingCollectivesCompleteInAnyOrderOfPolling) {
  EmulatedGpu gpu;
  Communicator& c = *gpu.nccl;
  const std::size_t n = 2000;
  std::vector<BackendArray<float>> data;
  std::vector<RequestPtr> requests;
  for (int k = 0; k < 6; ++k) {
    data.push_back(gpu.put(rank_data<float>(c.rank() + 10 * k, n)));
    requests.push_back(c.iallreduce(std::span<float>(data.back().data(), n), ReduceOp::Sum));
  }
  const auto start = std::chrono::steady_clock::now();
  for (std::size_t k = requests.size(); k-- > 0;) {
    while (!requests[k]->test()) {
      ASSERT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(20));
    }
  }
  for (int k = 0; k < 6; ++k) {
    std::vector<float> want = rank_data<float>(10 * k, n);
    for (int r = 1; r < c.size(); ++r) {
      const auto v = rank_data<float>(r + 10 * k, n);
      for (std::size_t i = 0; i < n; ++i) want[i] += v[i];
    }
    expect_reduced(gpu.get(data[static_cast<std::size_t>(k)]), want, "iallreduce");
  }
}

TEST(NcclEmulated, SplitGroupsAndHostMemoryIsRefused) {
  EmulatedGpu gpu;
  // Groups in reverse rank order (key), one per world: ranks renumbered.
  const std::unique_ptr<Communicator> reversed = gpu.nccl->split(0, -g_comm->rank());
  EXPECT_EQ(reversed->backend(), "nccl");
  EXPECT_EQ(reversed->rank(), g_comm->size() - 1 - g_comm->rank());
  auto f = gpu.put(std::vector<float>(10, static_cast<float>(reversed->rank())));
  reversed->broadcast(std::span<float>(f.data(), 10), 0);
  EXPECT_EQ(gpu.get(f), std::vector<float>(10, 0.0f));
  // NCCL moves device memory only.
  std::vector<float> host(10, 1.0f);
  try {
    gpu.nccl->allreduce(std::span<float>(host), ReduceOp::Sum);
    ADD_FAILURE() << "an allreduce of host memory passed";
  } catch (const Error& e) {
    EXPECT_NE(e.message().find("NCCL: allreduce"), std::string::npos) << e.message();
    EXPECT_NE(e.message().find("invalid argument"), std::string::npos) << e.message();
  }
}

// A rank that cannot open its GPU makes every rank fail at the start,
// before NCCL's start-up (which would wait for it without a time-out).
TEST(NcclEmulated, ARankWithoutItsGpuFailsEveryRank) {
  const int last = g_comm->size() - 1;
  // The emulator has GPU 0 only.
  const int gpu = g_comm->rank() == last ? 1 : 0;
  try {
    emulated::make_nccl_communicator(*g_comm, gpu);
    ADD_FAILURE() << "rank " << g_comm->rank() << " made its communicator";
  } catch (const Error& e) {
    const std::string want = g_comm->rank() == last
                                 ? "cudaSetDevice: invalid device ordinal"
                                 : "another rank could not open its GPU (this is rank " +
                                       std::to_string(g_comm->rank()) + " on GPU 0)";
    EXPECT_NE(e.message().find(want), std::string::npos) << e.message();
  }
}

// doctor --dist --dist-device cuda's measurement, on the emulated GPUs.
TEST(NcclEmulated, AllreduceBandwidthOnGpuMemory) {
  EmulatedGpu gpu;
  const auto points = allreduce_bandwidth(*gpu.nccl, *gpu.backend, *g_comm, 4096, 65536);
  ASSERT_EQ(points.size(), 3u);
  for (std::size_t i = 0; i < points.size(); ++i) {
    EXPECT_EQ(points[i].bytes, std::size_t{4096} << (2 * i));
    EXPECT_GT(points[i].seconds, 0.0);
    EXPECT_NEAR(points[i].busbw, points[i].algbw * 2 * (g_comm->size() - 1) / g_comm->size(),
                1e-9 * points[i].algbw);
  }
  EXPECT_NE(format_bandwidth_table(points).find("64.0 KiB"), std::string::npos);
}

// Whether `e`, caught `s` seconds after rank 0 started waiting in operation
// `op` ("allreduce"), reports the sleeping rank as the time-out check wants;
// rank 0 prints the verdict.
bool reports_sleeper(Communicator& c, const CommTimeout& e, const std::string& op, double s) {
  const int sleeper = c.size() - 1;
  const std::string text = e.message();
  const std::string want = "rank " + std::to_string(sleeper) + " (" + c.host(sleeper) + ")";
  // The fields say the same as the message: the operation, this rank, and
  // the sleeper as the only rank that did not answer.
  const bool fields = e.operation().rfind(op + " #", 0) == 0 &&
                      text.rfind(e.operation() + " timed out", 0) == 0 && e.rank() == c.rank() &&
                      e.silent() == std::vector<int>{sleeper} && e.is_silent(sleeper) &&
                      e.first_answering() == 0;
  const bool ok = fields && text.find("timed out") != std::string::npos &&
                  text.find("no answer") != std::string::npos &&
                  text.find(want) != std::string::npos && s >= 1.0 && s < 4.0;
  if (c.rank() == 0) {
    std::printf("timeout check %s after %.2f s: %s\n", ok ? "passed" : "FAILED", s, text.c_str());
    std::fflush(stdout);
  }
  return ok;
}

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

// `mode` "": the sleeper sleeps before an MPI allreduce; "nccl": before an
// NCCL allreduce on emulated GPU memory; "nccl-start": inside the NCCL
// communicator's start-up (ncclCommInitRank), as a rank whose NCCL cannot
// reach the others.
int timeout_check(Communicator& c, const std::string& mode) {
  c.set_timeout(std::chrono::milliseconds(1000));
  const int sleeper = c.size() - 1;
  std::vector<float> host(1024, 1.0F);
  std::unique_ptr<Backend<float>> gpu;
  std::unique_ptr<Communicator> over_nccl;
  BackendArray<float> device;
  std::span<float> v(host);
  Communicator* use = &c;
  if (mode == "nccl-start") {
    gpu = emulated::make_cuda_backend();
    const auto start = std::chrono::steady_clock::now();
    if (c.rank() == sleeper) emulated::stall_next_nccl_start(std::chrono::seconds(8));
    try {
      over_nccl = emulated::make_nccl_communicator(c, 0);
    } catch (const CommTimeout& e) {
      if (c.rank() == sleeper) return 1;
      return reports_sleeper(c, e, "ncclCommInitRank", seconds_since(start)) ? 0 : 1;
    }
    std::printf("timeout check FAILED: rank %d started NCCL\n", c.rank());
    return 1;
  }
  if (mode == "nccl") {
    gpu = emulated::make_cuda_backend();
    over_nccl = emulated::make_nccl_communicator(c, 0);
    device = BackendArray<float>(*gpu, 1024);
    v = std::span<float>(device.data(), 1024);
    use = over_nccl.get();
  }
  if (c.rank() == sleeper) {
    std::this_thread::sleep_for(std::chrono::seconds(8));  // long past the time-out
    use->allreduce(v, ReduceOp::Sum);
    std::printf("timeout check FAILED: the sleeping rank was not stopped\n");
    return 1;
  }
  const auto start = std::chrono::steady_clock::now();
  try {
    use->allreduce(v, ReduceOp::Sum);
  } catch (const CommTimeout& e) {
    return reports_sleeper(c, e, "allreduce", seconds_since(start)) ? 0 : 1;
  }
  std::printf("timeout check FAILED: the allreduce completed\n");
  return 1;
}

}  // namespace
}  // namespace borealis

int main(int argc, char** argv) {
  // The timeout check's communicator fails and ends the job with MPI_Abort
  // when destroyed.
  return borealis::test::mpi_test_main(
      argc, argv, std::chrono::milliseconds(20'000), borealis::g_comm, borealis::test::RankRange{},
      [](borealis::Communicator& comm, int args, char** arg) {
        return borealis::timeout_check(comm, args > 2 ? std::string(arg[2]) : std::string());
      });
}
