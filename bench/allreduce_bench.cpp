// Allreduce bus bandwidth over message sizes, for both reduce algorithms.
//
//   mpirun -np 2 build/release/bench/allreduce_bench [--min-size 4K]
//       [--max-size 64M] [--algorithm ordered|native|both] [--timeout 60]
//
// For each size: iterations, time per float32 average allreduce on the
// slowest rank, algorithm bandwidth (bytes / time) and bus bandwidth
// (2 (n - 1) / n * bytes / time, comparable across rank counts, as
// nccl-tests reports it). "ordered" is the default bit-reproducible
// reduction, "native" is MPI_Iallreduce. Figures only, no pass/fail.
#include <fmt/format.h>

#include <cstdio>
#include <string>
#include <vector>

#include "bench_util.h"
#include "core/text.h"
#include "dist/comm_bench.h"
#include "dist/communicator.h"

int main(int argc, char** argv) {
  using namespace borealis;
  return bench::main_with_errors(
      [&] {
        std::string min_size = "4K";
        std::string max_size = "64M";
        std::string algorithm = "both";
        double timeout = 60;
        for (int i = 1; i + 1 < argc; i += 2) {
          const std::string flag = argv[i];
          if (flag == "--min-size") {
            min_size = argv[i + 1];
          } else if (flag == "--max-size") {
            max_size = argv[i + 1];
          } else if (flag == "--algorithm") {
            algorithm = argv[i + 1];
          } else if (flag == "--timeout") {
            timeout = std::stod(argv[i + 1]);
          } else {
            throw Error("unknown flag " + flag, flag);
          }
        }
        CommOptions options;
        options.timeout = std::chrono::milliseconds(static_cast<long>(timeout * 1000));
        auto comm = make_communicator(options);
        const bool root = comm->rank() == 0;
        std::vector<ReduceAlgorithm> algorithms;
        if (algorithm == "ordered" || algorithm == "both") {
          algorithms.push_back(ReduceAlgorithm::Ordered);
        }
        if (algorithm == "native" || algorithm == "both") {
          algorithms.push_back(ReduceAlgorithm::Native);
        }
        if (algorithms.empty())
          throw Error("--algorithm is ordered, native or both", "--algorithm");
        if (root) {
          std::printf("allreduce_bench: %d ranks (%s backend), hosts:", comm->size(),
                      comm->backend().c_str());
          for (int r = 0; r < comm->size(); ++r) std::printf(" %s", comm->host(r).c_str());
          std::printf("\n");
        }
        for (ReduceAlgorithm a : algorithms) {
          comm->set_reduce_algorithm(a);
          const auto points = allreduce_bandwidth(*comm, parse_bytes(min_size, "--min-size"),
                                                  parse_bytes(max_size, "--max-size"));
          if (root) {
            std::printf("\n%s reduction:\n%s", reduce_algorithm_name(a),
                        format_bandwidth_table(points).c_str());
            std::fflush(stdout);
          }
        }
        return 0;
      },
      "run it under mpirun, e.g. mpirun -np 2 build/release/bench/allreduce_bench");
}
