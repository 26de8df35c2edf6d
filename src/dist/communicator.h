// Collective communication between the ranks of a distributed run.
//
// A Communicator connects the processes of one run: allreduce (sum, average,
// max, min of float and double buffers, in place), reduce-scatter, all-gather,
// broadcast and barrier, each in a blocking and a non-blocking form. The
// non-blocking forms return a Request whose wait() is guarded by a time-out:
// a rank that stops answering makes the others fail with a CommTimeout (a
// borealis::Error) naming the operation, the unresponsive ranks and their
// hosts, instead of hanging. Two implementations:
//   SelfCommunicator  world size 1; makes no MPI call at all.
//   MpiCommunicator   standard MPI calls only (Open MPI, MPICH, Cray MPICH).
// make_communicator() chooses from the launch environment. Every rank must
// start the same collectives in the same order with the same sizes.
#pragma once

#include <chrono>
#include <cstddef>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <type_traits>
#include <vector>

#include "core/error.h"

namespace borealis {

enum class ReduceOp { Sum, Avg, Max, Min };
enum class DataType { F32, F64, Bytes };

const char* reduce_op_name(ReduceOp op);

// How reductions are computed.
//   Ordered: every element is summed in rank order, ((x0 + x1) + x2) + ...,
//     by the rank that owns its block (exchange blocks, add, gather). The
//     result is bit-identical on every rank and for every MPI library,
//     algorithm and network, for a given world size.
//   Native: the MPI library's own reduction (MPI_Iallreduce). Usually the
//     fastest on large machines; identical on all ranks in the libraries we
//     know, but its summation order depends on the library's algorithm choice.
enum class ReduceAlgorithm { Ordered, Native };

const char* reduce_algorithm_name(ReduceAlgorithm a);

// A pending non-blocking operation. The buffers it uses must stay alive and
// untouched until test() returns true or wait() returns, and the request must
// not outlive its communicator. Destroying an unfinished request waits for it.
class Request {
 public:
  virtual ~Request() = default;
  // Makes progress; true once the operation is complete (its results are in
  // the output buffer).
  virtual bool test() = 0;
  // Blocks until complete, or throws Error after `timeout`.
  virtual void wait(std::chrono::milliseconds timeout) = 0;
  // Blocks with the communicator's time-out.
  virtual void wait() = 0;
};

using RequestPtr = std::unique_ptr<Request>;

// The error of a wait that passed its time-out. what() is the whole message
// ("allreduce #3 ... timed out after 1.0 s on rank 0 (node17): no answer
// within 0.2 s from rank 1 (node18)"); the fields say the same for programs:
// the operation ("allreduce #3 of 4.00 KiB (f32 sum)"), the rank that timed
// out, and the ranks that did not answer its probe, in rank order (empty
// when every rank answered).
class CommTimeout : public Error {
 public:
  CommTimeout(std::string what, std::string where, std::string operation, int rank,
              std::vector<int> silent);

  const std::string& operation() const { return operation_; }
  int rank() const { return rank_; }
  const std::vector<int>& silent() const { return silent_; }
  bool is_silent(int rank) const;
  // The lowest-numbered rank that answered: this one, unless a lower one did.
  int first_answering() const;

 private:
  std::string operation_;
  int rank_ = 0;
  std::vector<int> silent_;
};

class Communicator {
 public:
  virtual ~Communicator() = default;

  virtual int rank() const = 0;
  virtual int size() const = 0;
  // Host name of a rank (gathered once at start-up).
  virtual const std::string& host(int rank) const = 0;
  // "self" or "mpi".
  virtual std::string backend() const = 0;

  // Time-out of wait() and of the blocking forms (default 300 s).
  void set_timeout(std::chrono::milliseconds t) { timeout_ = t; }
  std::chrono::milliseconds timeout() const { return timeout_; }

  // After a time-out, other ranks may still time out and probe this one:
  // work done outside communication (such as writing a checkpoint) calls
  // this regularly, so that they see this rank alive. Answers pending probes
  // and returns at once; never throws. Self: nothing to do.
  virtual void answer_probes() {}

  // Waits until done() returns true as this communicator's own waits do:
  // polling, answering other ranks' probes meanwhile, and once `timeout`
  // has passed throwing the CommTimeout of operation `what` ("allreduce #3
  // of 4.00 KiB (f32 sum)", without the number: it is this communicator's
  // count of operations) that names the ranks that did not answer. For the
  // operations of another library over the same ranks, such as NCCL's
  // (dist/nccl_communicator.h): every rank must wait for the same ones in
  // the same order. done() may throw; then so does this.
  virtual void wait_until(const std::string& what, const std::function<bool()>& done,
                          std::chrono::milliseconds timeout) = 0;

  void set_reduce_algorithm(ReduceAlgorithm a) { algorithm_ = a; }
  ReduceAlgorithm reduce_algorithm() const { return algorithm_; }

  // Non-blocking forms. reduce_scatter: `in` holds size() equal blocks, rank
  // r receives the reduction of block r in `out` (out.size() * size() ==
  // in.size()). all_gather: `out` receives every rank's `in`, in rank order.
  template <typename T>
  RequestPtr iallreduce(std::span<T> data, ReduceOp op) {
    return start_allreduce(data.data(), data.size(), type_of<T>(), op);
  }
  template <typename T>
  RequestPtr ireduce_scatter(std::span<const T> in, std::span<T> out, ReduceOp op) {
    check_blocks(in.size(), out.size(), "reduce_scatter");
    return start_reduce_scatter(in.data(), out.data(), out.size(), type_of<T>(), op);
  }
  template <typename T>
  RequestPtr iall_gather(std::span<const T> in, std::span<T> out) {
    check_blocks(out.size(), in.size(), "all_gather");
    return start_all_gather(in.data(), out.data(), in.size() * sizeof(T));
  }
  template <typename T>
  RequestPtr ibroadcast(std::span<T> data, int root) {
    return start_broadcast(data.data(), data.size_bytes(), root);
  }
  virtual RequestPtr ibarrier() = 0;

  // Point to point (pipeline parallelism): `data` to or from rank `peer` of
  // this communicator. Messages from one rank to another arrive in the
  // order they were sent, and a receive names the size of its message.
  // A send may wait until its receive starts: ranks that exchange with
  // each other at once use sendrecv.
  template <typename T>
  RequestPtr isend(std::span<const T> data, int peer) {
    return start_send(data.data(), data.size_bytes(), peer);
  }
  template <typename T>
  RequestPtr irecv(std::span<T> data, int peer) {
    return start_recv(data.data(), data.size_bytes(), peer);
  }

  // A communicator over the ranks that pass the same color (every rank must
  // call it, in the same order as the collectives), ranked by key, then by
  // rank here. It keeps this one's time-out and reduction algorithm; its
  // hosts and rank numbers are those of the group. Parallel groups (tensor,
  // data) are made this way.
  virtual std::unique_ptr<Communicator> split(int color, int key) = 0;

  // Blocking forms: start, then wait() with the time-out.
  template <typename T>
  void allreduce(std::span<T> data, ReduceOp op) {
    iallreduce(data, op)->wait();
  }
  template <typename T>
  void reduce_scatter(std::span<const T> in, std::span<T> out, ReduceOp op) {
    ireduce_scatter(in, out, op)->wait();
  }
  template <typename T>
  void all_gather(std::span<const T> in, std::span<T> out) {
    iall_gather(in, out)->wait();
  }
  template <typename T>
  void broadcast(std::span<T> data, int root) {
    ibroadcast(data, root)->wait();
  }
  void barrier() { ibarrier()->wait(); }
  template <typename T>
  void send(std::span<const T> data, int peer) {
    isend(data, peer)->wait();
  }
  template <typename T>
  void recv(std::span<T> data, int peer) {
    irecv(data, peer)->wait();
  }
  // Sends `out` to `to` and receives `in` from `from`, both at once.
  template <typename T>
  void sendrecv(std::span<const T> out, int to, std::span<T> in, int from) {
    start_sendrecv(out.data(), out.size_bytes(), to, in.data(), in.size_bytes(), from)->wait();
  }

 protected:
  virtual RequestPtr start_allreduce(void* data, std::size_t count, DataType type, ReduceOp op) = 0;
  virtual RequestPtr start_reduce_scatter(const void* in, void* out, std::size_t block,
                                          DataType type, ReduceOp op) = 0;
  virtual RequestPtr start_all_gather(const void* in, void* out, std::size_t block_bytes) = 0;
  virtual RequestPtr start_broadcast(void* data, std::size_t bytes, int root) = 0;
  virtual RequestPtr start_send(const void* data, std::size_t bytes, int peer) = 0;
  virtual RequestPtr start_recv(void* data, std::size_t bytes, int peer) = 0;
  // The receive and the send at once: by default both started, the send
  // waited for first.
  virtual RequestPtr start_sendrecv(const void* out, std::size_t out_bytes, int to, void* in,
                                    std::size_t in_bytes, int from);

  void check_blocks(std::size_t whole, std::size_t block, const char* what) const;

 private:
  template <typename T>
  static constexpr DataType type_of() {
    static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>,
                  "collectives take float or double buffers");
    return std::is_same_v<T, float> ? DataType::F32 : DataType::F64;
  }

  std::chrono::milliseconds timeout_{300'000};
  ReduceAlgorithm algorithm_ = ReduceAlgorithm::Ordered;
};

// World size 1: every collective completes at once (allreduce leaves the
// data as it is, reduce-scatter and all-gather copy, broadcast needs root 0).
class SelfCommunicator final : public Communicator {
 public:
  SelfCommunicator();
  int rank() const override { return 0; }
  int size() const override { return 1; }
  const std::string& host(int rank) const override;
  std::string backend() const override { return "self"; }
  RequestPtr ibarrier() override;
  std::unique_ptr<Communicator> split(int color, int key) override;
  // Polls; after the time-out, a CommTimeout of rank 0 with no silent rank.
  void wait_until(const std::string& what, const std::function<bool()>& done,
                  std::chrono::milliseconds timeout) override;

 protected:
  RequestPtr start_allreduce(void* data, std::size_t count, DataType type, ReduceOp op) override;
  RequestPtr start_reduce_scatter(const void* in, void* out, std::size_t block, DataType type,
                                  ReduceOp op) override;
  RequestPtr start_all_gather(const void* in, void* out, std::size_t block_bytes) override;
  RequestPtr start_broadcast(void* data, std::size_t bytes, int root) override;
  // A rank has no peer in a world of one: both throw std::out_of_range.
  RequestPtr start_send(const void* data, std::size_t bytes, int peer) override;
  RequestPtr start_recv(void* data, std::size_t bytes, int peer) override;

 private:
  std::string host_;
};

struct CommOptions {
  std::string backend = "auto";  // auto, self, mpi
  std::chrono::milliseconds timeout{300'000};
  ReduceAlgorithm algorithm = ReduceAlgorithm::Ordered;
};

// "auto": MPI when the launch environment (detect_launch_env) says the world
// size is above 1, else Self, without touching MPI. "mpi" initialises MPI
// even for one rank. Throws Error for an unknown backend or an MPI failure.
std::unique_ptr<Communicator> make_communicator(const CommOptions& options = {});

// An MpiCommunicator over all processes of the MPI job (MPI_COMM_WORLD),
// initialising MPI (MPI_THREAD_FUNNELED) unless it already is; the last
// communicator destroyed finalises MPI if one of them initialised it (MPI
// cannot start twice in a process). After a time-out the destructor ends the
// job with MPI_Abort instead.
std::unique_ptr<Communicator> make_mpi_communicator();

// The host name of this machine (gethostname).
std::string local_host_name();

// " of 4.00 MiB (f32 sum)": what an operation moves, for messages (`op` may
// be "").
std::string describe_operation(std::size_t bytes, DataType type, const char* op);

}  // namespace borealis
