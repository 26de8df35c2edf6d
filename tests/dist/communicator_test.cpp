#include "dist/communicator.h"

#include <gtest/gtest.h>
#include <mpi.h>

#include <vector>

#include "test_util.h"

namespace borealis {
namespace {

TEST(SelfCommunicator, CollectivesOnOneRank) {
  SelfCommunicator comm;
  EXPECT_EQ(comm.rank(), 0);
  EXPECT_EQ(comm.size(), 1);
  EXPECT_EQ(comm.backend(), "self");
  EXPECT_EQ(comm.host(0), local_host_name());

  std::vector<float> f = {1.5F, -2.0F, 3.25F};
  for (ReduceOp op : {ReduceOp::Sum, ReduceOp::Avg, ReduceOp::Max, ReduceOp::Min}) {
    comm.allreduce(std::span<float>(f), op);
    EXPECT_EQ(f, (std::vector<float>{1.5F, -2.0F, 3.25F})) << reduce_op_name(op);
  }
  std::vector<double> d = {1, 2, 3, 4};
  std::vector<double> out(4, 0.0);
  comm.reduce_scatter(std::span<const double>(d), std::span<double>(out), ReduceOp::Sum);
  EXPECT_EQ(out, d);
  std::vector<float> gathered(3, 0.0F);
  comm.all_gather(std::span<const float>(f), std::span<float>(gathered));
  EXPECT_EQ(gathered, f);
  comm.broadcast(std::span<double>(d), 0);
  comm.barrier();

  auto request = comm.iallreduce(std::span<float>(f), ReduceOp::Sum);
  EXPECT_TRUE(request->test());
  request->wait(std::chrono::milliseconds(1));

  EXPECT_THROW(comm.broadcast(std::span<double>(d), 1), std::out_of_range);
  std::vector<double> wrong(3);
  EXPECT_THROW(comm.all_gather(std::span<const float>(f), std::span<float>(f.data(), 2)),
               std::invalid_argument);
}

TEST(SelfCommunicator, MadeWithoutMpiWhenStartedDirectly) {
  // No launcher variables here: "auto" must not initialise MPI.
  CommOptions options;
  options.timeout = std::chrono::milliseconds(1234);
  auto comm = make_communicator(options);
  EXPECT_EQ(comm->backend(), "self");
  EXPECT_EQ(comm->timeout(), std::chrono::milliseconds(1234));
  int initialized = 1;
  MPI_Initialized(&initialized);
  EXPECT_EQ(initialized, 0);

  options.backend = "nccl";
  EXPECT_EQ(test::error_line([&] { make_communicator(options); }),
            "error: unknown communication backend 'nccl' (auto, self, mpi) (backend)");
}

// The writer after a time-out is the lowest rank that answered: this one
// unless a lower rank did.
TEST(CommTimeout, FirstAnsweringRank) {
  const CommTimeout e("allreduce #3 timed out", "rank 3", "allreduce #3", 3, {0, 2});
  EXPECT_EQ(e.message(), "allreduce #3 timed out");
  EXPECT_EQ(e.operation(), "allreduce #3");
  EXPECT_EQ(e.rank(), 3);
  EXPECT_TRUE(e.is_silent(0));
  EXPECT_FALSE(e.is_silent(1));
  EXPECT_EQ(e.first_answering(), 1);
  EXPECT_EQ(CommTimeout("m", "w", "op", 2, {0, 1}).first_answering(), 2);
  EXPECT_EQ(CommTimeout("m", "w", "op", 2, {1}).first_answering(), 0);
  EXPECT_EQ(CommTimeout("m", "w", "op", 0, {}).first_answering(), 0);
  // An Error like any other for the CLI.
  try {
    throw CommTimeout("m", "rank 0", "op", 0, {1});
  } catch (const Error& caught) {
    EXPECT_EQ(caught.line(), "error: m (rank 0)");
  }
}

}  // namespace
}  // namespace borealis
