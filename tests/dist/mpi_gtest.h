// Running gtest under mpirun: every rank runs every test; rank 0 prints the
// usual progress, the other ranks print only their failures (with the rank,
// so that a failure on one rank is never silent), and every rank leaves with
// the same status.
#pragma once

#include <gtest/gtest.h>

#include <chrono>
#include <cstdio>
#include <span>
#include <string>

#include "dist/communicator.h"

namespace borealis::test {

class RankFailurePrinter final : public ::testing::EmptyTestEventListener {
 public:
  explicit RankFailurePrinter(int rank) : rank_(rank) {}
  void OnTestStart(const ::testing::TestInfo& test) override {
    test_ = std::string(test.test_suite_name()) + "." + test.name();
  }
  void OnTestPartResult(const ::testing::TestPartResult& r) override {
    if (!r.failed()) return;
    std::fprintf(stderr, "rank %d: %s failed at %s:%d\n%s\n", rank_, test_.c_str(),
                 r.file_name() != nullptr ? r.file_name() : "?", r.line_number(), r.summary());
  }

 private:
  int rank_;
  std::string test_;
};

// RUN_ALL_TESTS() on every rank; returns 1 on all ranks if any rank failed.
// The final agreement uses the communicator's time-out as it was before the
// tests (a test may have shortened it).
inline int run_all_tests_on_every_rank(Communicator& comm) {
  if (comm.rank() != 0) {
    auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
    listeners.Append(new RankFailurePrinter(comm.rank()));
  }
  const std::chrono::milliseconds timeout = comm.timeout();
  double any = RUN_ALL_TESTS();
  comm.set_timeout(timeout);
  comm.allreduce(std::span<double>(&any, 1), ReduceOp::Max);
  return any > 0 ? 1 : 0;
}

// The main() of an MPI test program: gtest's flags, then an MPI communicator
// with `timeout`, published in `global` for the tests. With `--timeout-check`
// as the first argument it returns timeout_check(comm, argc, argv) (the
// arguments without gtest's flags) instead of running the tests.
template <class TimeoutCheck>
int mpi_test_main(int argc, char** argv, std::chrono::milliseconds timeout, Communicator*& global,
                  TimeoutCheck&& timeout_check) {
  ::testing::InitGoogleTest(&argc, argv);
  CommOptions options;
  options.backend = "mpi";
  options.timeout = timeout;
  auto comm = make_communicator(options);
  global = comm.get();
  if (argc > 1 && std::string(argv[1]) == "--timeout-check")
    return timeout_check(*comm, argc, argv);
  return run_all_tests_on_every_rank(*comm);
}

}  // namespace borealis::test
