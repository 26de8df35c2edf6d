// Health probes between the ranks of an MPI job (part of MpiCommunicator;
// internal to src/dist).
//
// Every rank keeps a receive for "where are you?" probes posted on a
// communicator of its own, and answers them while it waits in a collective
// with the number of operations it has started and the one it waits for
// (0: none). When a wait passes its deadline, the rank probes every other
// rank and waits a short grace period for the answers (answering probes
// meanwhile): a rank that does not answer is busy outside communication,
// hung or dead; one that answers with another operation number waits in a
// different collective. throw_time_out() turns that into a CommTimeout
// naming them and their hosts.
#pragma once

#include <mpi.h>

#include <array>
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace borealis::mpi_detail {

// Throws Error("<call> failed: <MPI's text>", call) unless rc is MPI_SUCCESS.
void check(int rc, const char* call);

// What the other ranks answered about an operation.
struct ProbeAnswers {
  std::vector<int> silent;  // no answer within the grace period
  // Answered while waiting in another operation (0: in none).
  std::vector<std::pair<int, std::int64_t>> elsewhere;
};

class MpiProbes {
 public:
  MpiProbes() = default;
  MpiProbes(const MpiProbes&) = delete;
  MpiProbes& operator=(const MpiProbes&) = delete;

  // Duplicates `world` for the probes (errors return codes) and posts the
  // first receive. Collective over `world`.
  void open(MPI_Comm world);
  // Cancels the posted receive, completes the answers sent and frees the
  // communicator. Not after a time-out: the job is aborted then, and the
  // buffers of messages still in flight stay alive with this object.
  void close();

  // Answers pending probes: `started` operations, waiting in `waiting`.
  void serve(std::uint64_t started, std::uint64_t waiting);
  // Probes every other rank about operation `seq` and waits up to `grace`
  // for the answers, serving probes (as waiting in `seq`) meanwhile.
  ProbeAnswers ask_all(std::uint64_t seq, std::uint64_t started, std::chrono::milliseconds grace);

 private:
  void post_receive();

  MPI_Comm comm_ = MPI_COMM_NULL;
  int rank_ = 0;
  int size_ = 1;
  MPI_Request probe_request_ = MPI_REQUEST_NULL;
  std::int64_t probe_buffer_ = 0;
  std::vector<std::pair<MPI_Request, std::unique_ptr<std::array<std::int64_t, 2>>>> replies_;
  // The last diagnosis: its messages may still be in flight when the job
  // aborts, so their buffers live as long as this object.
  std::int64_t question_ = 0;
  std::vector<std::array<std::int64_t, 2>> answers_;
  std::vector<MPI_Request> diagnosis_;
};

// The grace period for the answers to a time-out's probes: a quarter of the
// time-out, 0.2 to 10 s.
std::chrono::milliseconds probe_grace(std::chrono::milliseconds timeout);

// Logs and throws the CommTimeout of operation `what` on `rank` after
// waiting `waited_s`, from the answers to its probes.
[[noreturn]] void throw_time_out(const std::string& what, double waited_s, int rank,
                                 const std::vector<std::string>& hosts,
                                 std::chrono::milliseconds grace, const ProbeAnswers& answers);

}  // namespace borealis::mpi_detail
