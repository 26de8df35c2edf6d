// The NCCL communicator (dist/nccl_communicator.h) on one rank, over a Self
// host communicator: on a GPU with the real NCCL ("cuda"; skipped where no
// GPU answers, failed then under BOREALIS_REQUIRE_CUDA, or where NCCL cannot
// be loaded, failed then under BOREALIS_REQUIRE_NCCL) and on the CUDA
// emulator's NCCL ("emulated").
// Two ranks are tested by mpi.collectives (dist/mpi_test_main.cpp) and
// mpi.train_dp (train/dp_mpi_test.cpp) on the emulated NCCL.
#include <gtest/gtest.h>
#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/lsan_interface.h>
#endif

#include <chrono>
#include <cstdlib>
#include <memory>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

#include "core/error.h"
#include "dist/communicator.h"
#include "kernels/cuda/cuda_backend.h"
#include "kernels/cuda_emulator/emulated_cuda_backend.h"
#include "kernels/cuda_emulator/emulated_nccl.h"
#include "kernels/cuda_test_util.h"
#ifdef BOREALIS_HAVE_NCCL
#include "dist/nccl_communicator.h"
#endif

namespace borealis {
namespace {

using test::DeviceBuffer;
using test::to_device;
using test::to_host;

class NcclOneRank : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    if (GetParam() == "emulated") {
      gpu = emulated::make_cuda_backend();
      comm = emulated::make_nccl_communicator(host, 0);
      return;
    }
#ifdef BOREALIS_HAVE_NCCL
    BOREALIS_SKIP_WITHOUT_CUDA();
    const std::string why = nccl_unavailable_reason();
    if (!why.empty()) {
      // NCCL is loaded at run time, and a GPU machine may lack it.
      if (std::getenv("BOREALIS_REQUIRE_NCCL") != nullptr) {
        GTEST_FAIL() << "BOREALIS_REQUIRE_NCCL is set, but " << why;
      }
      GTEST_SKIP() << why;
    }
    gpu = make_cuda_backend(0);
    comm = make_nccl_communicator(host, 0);
#else
    GTEST_SKIP() << "this build has no NCCL";
#endif
  }

  SelfCommunicator host;
  std::unique_ptr<Backend<float>> gpu;
  std::unique_ptr<Communicator> comm;
};

std::vector<float> ramp(std::size_t n, float scale) {
  std::vector<float> v(n);
  for (std::size_t i = 0; i < n; ++i) v[i] = scale * static_cast<float>(i % 1000) - 7.0f;
  return v;
}

TEST_P(NcclOneRank, CollectivesOfOneRankKeepOrCopyTheData) {
  EXPECT_EQ(comm->backend(), "nccl");
  EXPECT_EQ(comm->size(), 1);
  EXPECT_EQ(comm->rank(), 0);
  EXPECT_EQ(comm->host(0), host.host(0));
  const std::vector<float> v = ramp(4096, 0.25f);
  DeviceBuffer a = to_device(*gpu, v);
  for (const ReduceOp op : {ReduceOp::Sum, ReduceOp::Avg, ReduceOp::Max, ReduceOp::Min}) {
    comm->allreduce(std::span<float>(a.as<float>(), v.size()), op);
    EXPECT_EQ(to_host<float>(a), v) << reduce_op_name(op);
  }
  const std::vector<double> d = {1.5, -2.25, 1e300};
  DeviceBuffer b = to_device(*gpu, d);
  comm->allreduce(std::span<double>(b.as<double>(), d.size()), ReduceOp::Sum);
  EXPECT_EQ(to_host<double>(b), d);

  DeviceBuffer out(*gpu, v.size() * sizeof(float));
  comm->reduce_scatter(std::span<const float>(a.as<float>(), v.size()),
                       std::span<float>(out.as<float>(), v.size()), ReduceOp::Sum);
  EXPECT_EQ(to_host<float>(out), v);
  DeviceBuffer gathered(*gpu, v.size() * sizeof(float));
  comm->all_gather(std::span<const float>(a.as<float>(), v.size()),
                   std::span<float>(gathered.as<float>(), v.size()));
  EXPECT_EQ(to_host<float>(gathered), v);
  comm->broadcast(std::span<float>(a.as<float>(), v.size()), 0);
  EXPECT_EQ(to_host<float>(a), v);
  comm->barrier();
  EXPECT_THROW(comm->broadcast(std::span<float>(a.as<float>(), v.size()), 1), std::out_of_range);
  EXPECT_THROW(comm->send(std::span<const float>(a.as<float>(), 1), 0), std::out_of_range);
  // A group of its own: a new NCCL communicator.
  const std::unique_ptr<Communicator> alone = comm->split(5, 0);
  EXPECT_EQ(alone->backend(), "nccl");
  alone->all_gather(std::span<const float>(out.as<float>(), v.size()),
                    std::span<float>(gathered.as<float>(), v.size()));
  EXPECT_EQ(to_host<float>(gathered), v);
}

// A collective starts after the backend's ops queued before it, and the
// backend's ops after wait() see its result (64 MiB: long enough on a GPU
// for a collective that did not wait for the fill to read stale data).
TEST_P(NcclOneRank, CollectivesAreOrderedWithTheBackendsOps) {
  const std::int64_t n = GetParam() == "cuda" ? 16 << 20 : 1 << 14;
  DeviceBuffer a(*gpu, static_cast<std::size_t>(n) * sizeof(float));
  DeviceBuffer b(*gpu, static_cast<std::size_t>(n) * sizeof(float));
  gpu->fill(b.as<float>(), -1.0f, n);
  for (int round = 1; round <= 3; ++round) {
    gpu->fill(a.as<float>(), static_cast<float>(round), n);
    RequestPtr r = comm->ireduce_scatter(std::span<const float>(a.as<float>(), n),
                                         std::span<float>(b.as<float>(), n), ReduceOp::Sum);
    const auto start = std::chrono::steady_clock::now();
    while (!r->test()) {
      ASSERT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(30));
    }
    r->wait();
    gpu->scale(b.as<float>(), 2.0f, n);
    const std::vector<float> got = to_host<float>(b);
    const std::vector<float> want(got.size(), 2.0f * static_cast<float>(round));
    EXPECT_EQ(got, want) << "round " << round;
  }
}

// The NCCL communicator goes through NCCL's non-blocking start-up, set-up
// and finalization (the emulated NCCL's are NCCL's protocol: each returns
// ncclInProgress and settles some polls later, and a call issued before it
// settles is refused): it starts non-blocking, and ends finalized and
// destroyed, not aborted.
TEST(NcclEmulatedOneRank, StartsNonBlockingAndClosesWithoutAborting) {
  SelfCommunicator host;
  const std::unique_ptr<Backend<float>> gpu = emulated::make_cuda_backend();
  const emulated::NcclCounts before = emulated::nccl_counts();
  {
    const std::unique_ptr<Communicator> comm = emulated::make_nccl_communicator(host, 0);
    DeviceBuffer a(*gpu, 64 * sizeof(float));
    gpu->fill(a.as<float>(), 3.0f, 64);
    comm->allreduce(std::span<float>(a.as<float>(), 64), ReduceOp::Sum);  // in progress at first
    comm->barrier();
    EXPECT_EQ(to_host<float>(a), std::vector<float>(64, 3.0f));
  }
  const emulated::NcclCounts after = emulated::nccl_counts();
  EXPECT_EQ(after.nonblocking_starts - before.nonblocking_starts, 1);
  EXPECT_EQ(after.finalized - before.finalized, 1);
  EXPECT_EQ(after.destroyed - before.destroyed, 1);
  EXPECT_EQ(after.aborted, before.aborted);
}

// An operation whose set-up never ends times out as the host's waits do and
// aborts the communicator, which then refuses work, and fails the requests
// started before (ncclCommAbort freed what they would poll); a finalization
// that never ends is aborted after the time-out, and the destructor
// returns. (An aborted communicator leaves its stream and events, which
// kernels that never end may hold; in a sanitizer build that is no leak.)
TEST(NcclEmulatedOneRank, SetUpAndFinalizationThatNeverEndTimeOut) {
#if defined(__SANITIZE_ADDRESS__)
  const __lsan::ScopedDisabler left_after_abort;
#endif
  using Clock = std::chrono::steady_clock;
  SelfCommunicator host;
  host.set_timeout(std::chrono::milliseconds(200));
  const std::unique_ptr<Backend<float>> gpu = emulated::make_cuda_backend();
  DeviceBuffer a(*gpu, 64 * sizeof(float));
  const std::span<float> data(a.as<float>(), 64);
  const emulated::NcclCounts before = emulated::nccl_counts();
  {
    const std::unique_ptr<Communicator> comm = emulated::make_nccl_communicator(host, 0);
    const RequestPtr earlier = comm->iallreduce(data, ReduceOp::Sum);
    emulated::hold_next_nccl_progress();
    const auto start = Clock::now();
    EXPECT_THROW(comm->allreduce(data, ReduceOp::Sum), CommTimeout);
    EXPECT_GE(Clock::now() - start, std::chrono::milliseconds(200));
    EXPECT_EQ(emulated::nccl_counts().aborted - before.aborted, 1);
    EXPECT_THROW(earlier->test(), Error);
    EXPECT_THROW(earlier->wait(), Error);
    try {
      comm->allreduce(data, ReduceOp::Sum);
      ADD_FAILURE() << "an aborted communicator took an allreduce";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("failed before"), std::string::npos) << e.what();
    }
  }
  const emulated::NcclCounts middle = emulated::nccl_counts();
  EXPECT_EQ(middle.destroyed, before.destroyed);
  {
    std::unique_ptr<Communicator> comm = emulated::make_nccl_communicator(host, 0);
    comm->allreduce(data, ReduceOp::Sum);
    emulated::hold_next_nccl_progress();
    const auto start = Clock::now();
    comm.reset();
    EXPECT_GE(Clock::now() - start, std::chrono::milliseconds(200));
    EXPECT_LT(Clock::now() - start, std::chrono::seconds(10));
  }
  const emulated::NcclCounts after = emulated::nccl_counts();
  EXPECT_EQ(after.aborted - middle.aborted, 1);
  EXPECT_EQ(after.finalized, middle.finalized);
  EXPECT_EQ(after.destroyed, middle.destroyed);
}

INSTANTIATE_TEST_SUITE_P(Backends, NcclOneRank,
                         ::testing::ValuesIn(test::gpu_backends_under_test()),
                         [](const auto& param) { return param.param; });

}  // namespace
}  // namespace borealis
