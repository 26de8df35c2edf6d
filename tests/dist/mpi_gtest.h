// Running gtest under mpirun: every rank runs every test; rank 0 prints the
// usual progress, the other ranks print only their failures (with the rank,
// so that a failure on one rank is never silent), and every rank leaves with
// the same status.
#pragma once

#include <gtest/gtest.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
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

// How many ranks a program's tests are written for.
struct RankRange {
  int min = 2;
  int max = 1 << 30;
};

// The main() of an MPI test program, started as `PROGRAM --ranks N [ARGS]`:
// gtest's flags, then an MPI communicator with `timeout`, published in
// `global` for the tests. The world must have the N ranks that ctest launched
// (an mpiexec of another MPI library starts N worlds of one rank each, whose
// tests could pass alone) and, to run the tests, `tests_need` ranks; else
// every rank ends with an error. With `--timeout-check`
// after --ranks N it returns timeout_check(comm, argc, argv) (the arguments
// without --ranks N and gtest's flags) instead of running the tests.
template <class TimeoutCheck>
int mpi_test_main(int argc, char** argv, std::chrono::milliseconds timeout, Communicator*& global,
                  RankRange tests_need, TimeoutCheck&& timeout_check) {
  ::testing::InitGoogleTest(&argc, argv);
  const char* program = argc > 0 ? argv[0] : "mpi test";
  if (argc < 3 || std::string(argv[1]) != "--ranks") {
    std::fprintf(stderr, "error: the rank count is missing (usage: %s --ranks N [ARGS])\n",
                 program);
    return 2;
  }
  const int launched = std::atoi(argv[2]);
  argv[2] = argv[0];  // drop "PROGRAM --ranks": the program's name moves up
  argc -= 2;
  argv += 2;
  CommOptions options;
  options.backend = "mpi";
  options.timeout = timeout;
  auto comm = make_communicator(options);
  global = comm.get();
  const bool check = argc > 1 && std::string(argv[1]) == "--timeout-check";
  const RankRange need = check ? RankRange{} : tests_need;  // a time-out needs a second rank
  std::string wrong;
  if (comm->size() != launched) {
    wrong = "the world has " + std::to_string(comm->size()) + " rank(s), not the " +
            std::to_string(launched) +
            " launched (an mpiexec of another MPI library starts worlds of one rank)";
  } else if (comm->size() < need.min || comm->size() > need.max) {
    const std::string count =
        need.min == need.max ? std::to_string(need.min) : "at least " + std::to_string(need.min);
    wrong = std::string(check ? "the time-out check needs " : "these tests need ") + count +
            " ranks, not " + std::to_string(comm->size());
  }
  if (!wrong.empty()) {
    std::fprintf(stderr, "error: %s (%s, rank %d)\n", wrong.c_str(), program, comm->rank());
    return 1;
  }
  if (check) return timeout_check(*comm, argc, argv);
  return run_all_tests_on_every_rank(*comm);
}

}  // namespace borealis::test
