// Measurements of a Communicator shared by `borealis doctor --dist` and
// bench/allreduce_bench: allreduce bandwidth over message sizes (in host
// memory, or a GPU's over NCCL) and a
// per-rank report (host, pid, start-up and compute time) that shows the
// slowest rank.
#pragma once

#include <cstddef>
#include <string>
#include <vector>

#include "dist/communicator.h"
#include "kernels/backend.h"

namespace borealis {

struct BandwidthPoint {
  std::size_t bytes = 0;  // message size (float32 elements * 4)
  int iterations = 0;     // timed allreduces
  double seconds = 0;     // per allreduce, slowest rank
  double algbw = 0;       // bytes / seconds, in bytes per second
  double busbw = 0;       // algbw * 2 (n - 1) / n: what each link carries
};

// Times float32 sum allreduces of min_bytes, 4 * min_bytes, ... up to
// max_bytes with the communicator's reduce algorithm. Iteration counts depend
// only on the size, so every rank runs the same collectives. Collective: all
// ranks must call it with the same arguments.
std::vector<BandwidthPoint> allreduce_bandwidth(Communicator& comm, std::size_t min_bytes,
                                                std::size_t max_bytes);
// The same on buffers of `memory` (a GPU's, for NCCL between the ranks'
// GPUs: dist/nccl_communicator.h); `host`, over the same ranks, agrees on
// the timing. Collective over both.
std::vector<BandwidthPoint> allreduce_bandwidth(Communicator& comm, BackendMemory& memory,
                                                Communicator& host, std::size_t min_bytes,
                                                std::size_t max_bytes);

// Times sendrecv exchanges (pipeline stages' traffic) of the same sizes
// between ranks 2k and 2k + 1, both directions at once; a last rank of an
// odd world only takes part in the timing's agreement. algbw and busbw are
// the bytes one direction carries per second. Collective.
std::vector<BandwidthPoint> sendrecv_bandwidth(Communicator& comm, std::size_t min_bytes,
                                               std::size_t max_bytes);

// The table printed by doctor --dist and the benchmark, one row per size.
std::string format_bandwidth_table(const std::vector<BandwidthPoint>& points);

struct RankReport {
  int rank = 0;
  std::string host;
  long pid = 0;
  double init_seconds = 0;     // creating the communicator (MPI start-up)
  double compute_seconds = 0;  // a fixed single-threaded floating-point workload
};

// Runs the compute workload on every rank and gathers each rank's report
// (collective). `init_seconds` is this rank's measured start-up time.
std::vector<RankReport> gather_rank_reports(Communicator& comm, double init_seconds);

// Lines: one per rank, then the slowest rank by compute time.
std::string format_rank_reports(const std::vector<RankReport>& reports);

}  // namespace borealis
