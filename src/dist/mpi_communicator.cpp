// MpiCommunicator: the Communicator over MPI_COMM_WORLD with standard MPI-3
// calls only (non-blocking collectives, point-to-point), so that Open MPI,
// MPICH and Cray MPICH all work.
//
// Threading: MPI_THREAD_FUNNELED. Only the thread that initialised MPI (the
// main thread, which drives the training loop) calls MPI; OpenMP compute
// threads never do. That is the cheapest level every MPI library provides;
// SERIALIZED or MULTIPLE would only be needed for a communication thread.
//
// Guarded waits: wait() polls MPI_Test until a deadline (for the first second
// without pause, since most MPI libraries progress only inside MPI calls,
// yielding the CPU only on an oversubscribed node; then every 200 us). While it waits it
// also answers "where are you?" probes from other ranks on a separate
// communicator (dist/mpi_probe.h). When the deadline passes it probes every
// other rank and throws a CommTimeout naming the ranks that did not answer
// or wait elsewhere, and their hosts. After such a failure MPI state is
// unusable, so the destructor ends the whole job with MPI_Abort instead of
// finalising.
//
// Several operations may be in flight at once. MPI matches collectives on a
// communicator by the order in which each rank starts them, so the second
// stage of an ordered allreduce, which a rank starts when it sees the first
// stage complete (a matter of timing), runs on a communicator of its own,
// and those second stages start in the order their allreduces started:
// testing any request first advances the older multi-stage ones.
#include <fmt/format.h>
#include <mpi.h>
#include <sched.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <deque>
#include <functional>
#include <thread>
#include <vector>

#include "core/error.h"
#include "core/text.h"
#include "dist/communicator.h"
#include "dist/launch_env.h"
#include "dist/mpi_probe.h"

namespace borealis {

namespace {

using Clock = std::chrono::steady_clock;
using mpi_detail::check;

constexpr std::size_t kHostBytes = 256;

MPI_Datatype mpi_type(DataType t) {
  switch (t) {
    case DataType::F32:
      return MPI_FLOAT;
    case DataType::F64:
      return MPI_DOUBLE;
    case DataType::Bytes:
      return MPI_BYTE;
  }
  return MPI_BYTE;
}

std::size_t type_size(DataType t) {
  return t == DataType::F32 ? sizeof(float) : t == DataType::F64 ? sizeof(double) : 1;
}

MPI_Op mpi_op(ReduceOp op) {
  switch (op) {
    case ReduceOp::Sum:
    case ReduceOp::Avg:
      return MPI_SUM;
    case ReduceOp::Max:
      return MPI_MAX;
    case ReduceOp::Min:
      return MPI_MIN;
  }
  return MPI_SUM;
}

int as_int(std::size_t n, const char* what) {
  if (n > static_cast<std::size_t>(INT_MAX)) {
    throw Error(fmt::format("{} of {} elements exceeds the MPI count limit of {}; split the buffer",
                            what, n, INT_MAX),
                what);
  }
  return static_cast<int>(n);
}

// dst = op(dst, src) elementwise; the order of the operands is fixed.
template <typename T>
void combine(T* dst, const T* src, std::size_t n, ReduceOp op) {
  const auto count = static_cast<std::ptrdiff_t>(n);
  switch (op) {
    case ReduceOp::Sum:
    case ReduceOp::Avg:
#pragma omp parallel for simd if (count > (1 << 16)) schedule(static)
      for (std::ptrdiff_t i = 0; i < count; ++i) dst[i] += src[i];
      break;
    case ReduceOp::Max:
      for (std::ptrdiff_t i = 0; i < count; ++i) dst[i] = std::max(dst[i], src[i]);
      break;
    case ReduceOp::Min:
      for (std::ptrdiff_t i = 0; i < count; ++i) dst[i] = std::min(dst[i], src[i]);
      break;
  }
}

// Divides n elements by the rank count (the last step of an average).
template <typename T>
void divide(T* p, std::size_t n, int ranks) {
  const T divisor = static_cast<T>(ranks);
  for (std::size_t i = 0; i < n; ++i) p[i] /= divisor;
}

void divide(DataType t, void* p, std::size_t n, int ranks) {
  if (t == DataType::F32) {
    divide(static_cast<float*>(p), n, ranks);
  } else {
    divide(static_cast<double*>(p), n, ranks);
  }
}

// Reduces `ranks` blocks of n elements laid out one after another in `blocks`
// into `out`, in rank order; Avg divides by the rank count.
template <typename T>
void reduce_blocks(T* out, const T* blocks, std::size_t n, int ranks, ReduceOp op) {
  if (n == 0) return;  // a rank owns no element when the buffer has fewer than ranks
  if (out != blocks) std::memcpy(out, blocks, n * sizeof(T));
  for (int r = 1; r < ranks; ++r) combine(out, blocks + static_cast<std::size_t>(r) * n, n, op);
  if (op == ReduceOp::Avg) divide(out, n, ranks);
}

void reduce_blocks(DataType t, void* out, const void* blocks, std::size_t n, int ranks,
                   ReduceOp op) {
  if (t == DataType::F32) {
    reduce_blocks(static_cast<float*>(out), static_cast<const float*>(blocks), n, ranks, op);
  } else {
    reduce_blocks(static_cast<double*>(out), static_cast<const double*>(blocks), n, ranks, op);
  }
}

class MpiCommunicator;

// A non-blocking operation in one or more MPI stages: when the current MPI
// request completes, `next` runs (local work) and either starts the next
// stage (returns false) or finishes (returns true).
class MpiRequest final : public Request {
 public:
  MpiRequest(MpiCommunicator* comm, std::string what, std::uint64_t seq)
      : comm_(comm), what_(std::move(what)), seq_(seq) {}
  ~MpiRequest() override;

  bool test() override;
  void wait(std::chrono::milliseconds timeout) override;
  void wait() override;

  MPI_Request request = MPI_REQUEST_NULL;
  std::function<bool(MpiRequest&)> next;
  std::vector<unsigned char> scratch;
  // Whether the request waits in the communicator's queue of second stages.
  bool queued = false;

 private:
  MpiCommunicator* comm_;
  std::string what_;
  std::uint64_t seq_;
  bool done_ = false;
};

class MpiCommunicator final : public Communicator {
 public:
  // Over MPI_COMM_WORLD (initialising MPI), or over a copy of `group`.
  explicit MpiCommunicator(MPI_Comm group = MPI_COMM_NULL);
  ~MpiCommunicator() override;

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  const std::string& host(int rank) const override { return hosts_.at(static_cast<size_t>(rank)); }
  std::string backend() const override { return "mpi"; }
  RequestPtr ibarrier() override;
  std::unique_ptr<Communicator> split(int color, int key) override;

  MPI_Comm comm() const { return comm_; }
  MPI_Comm stage2_comm() const { return stage2_; }
  bool failed() const { return failed_; }

  // Multi-stage operations whose next stage is still to start, oldest first.
  void enqueue_stage(MpiRequest* r) {
    r->queued = true;
    staged_.push_back(r);
  }
  void forget_stage(MpiRequest* r) { std::erase(staged_, r); }
  // Starts the next stage of the oldest queued operations whose current
  // stage is complete, in queue order, stopping at the first that is not.
  void advance_stages();

  // Answers pending probes from other ranks; called while waiting.
  void serve_probes() { probes_.serve(started_, waiting_); }
  void answer_probes() override;
  // Called when a wait passes its deadline: finds the unresponsive ranks and
  // throws CommTimeout. Marks the communicator failed.
  [[noreturn]] void time_out(const std::string& what, std::uint64_t seq, double waited_s);
  // Polls done() until it returns true, as waiting in operation `seq`
  // (named `what`); time_out() once `timeout` has passed.
  void poll(const std::string& what, std::uint64_t seq, std::chrono::milliseconds timeout,
            const std::function<bool()>& done);
  void wait_until(const std::string& what, const std::function<bool()>& done,
                  std::chrono::milliseconds timeout) override;

 protected:
  RequestPtr start_allreduce(void* data, std::size_t count, DataType type, ReduceOp op) override;
  RequestPtr start_reduce_scatter(const void* in, void* out, std::size_t block, DataType type,
                                  ReduceOp op) override;
  RequestPtr start_all_gather(const void* in, void* out, std::size_t block_bytes) override;
  RequestPtr start_broadcast(void* data, std::size_t bytes, int root) override;
  RequestPtr start_send(const void* data, std::size_t bytes, int peer) override;
  RequestPtr start_recv(void* data, std::size_t bytes, int peer) override;

 private:
  void check_peer(int peer, const char* what) const {
    if (peer < 0 || peer >= size_ || peer == rank_) {
      throw std::out_of_range(
          fmt::format("{} rank {} from rank {} of a group of {}", what, peer, rank_, size_));
    }
  }

  // `what` names the operation, `detail` its size and type.
  std::unique_ptr<MpiRequest> make_request(const char* what, const std::string& detail = "") {
    ++started_;
    return std::make_unique<MpiRequest>(this, fmt::format("{} #{}{}", what, started_, detail),
                                        started_);
  }

  MPI_Comm comm_ = MPI_COMM_NULL;    // collectives
  MPI_Comm stage2_ = MPI_COMM_NULL;  // second stages of ordered allreduces
  std::deque<MpiRequest*> staged_;
  mpi_detail::MpiProbes probes_;  // probes and replies, on a communicator of their own
  bool failed_ = false;
  // Waits poll without pause, as MPI libraries do, unless this node runs
  // more ranks than it has CPUs: then a waiting rank yields its CPU to the
  // ranks it waits for.
  bool yield_ = false;
  int rank_ = 0;
  int size_ = 1;
  std::vector<std::string> hosts_;
  // For time-out messages: each rank's host and, in a group split from the
  // world, its world rank ("node17, world rank 5").
  std::vector<std::string> labels_;
  std::uint64_t started_ = 0;  // operations started
  std::uint64_t waiting_ = 0;  // operation being waited for, 0 when none
};

MpiRequest::~MpiRequest() {
  if (queued) comm_->forget_stage(this);
  if (done_ || comm_->failed()) return;  // after a failure the job aborts
  try {
    wait();
  } catch (const std::exception& e) {
    spdlog::error("{}", e.what());
  }
}

bool MpiRequest::test() {
  if (done_) return true;
  if (queued) {
    comm_->advance_stages();
    if (queued) return false;
  }
  int flag = 0;
  check(MPI_Test(&request, &flag, MPI_STATUS_IGNORE), "MPI_Test");
  if (!flag) return false;
  if (!next || next(*this)) {
    done_ = true;
    scratch.clear();
    scratch.shrink_to_fit();
  }
  return done_;
}

void MpiRequest::wait() {
  wait(comm_->timeout());
}

void MpiRequest::wait(std::chrono::milliseconds timeout) {
  if (done_) return;
  comm_->poll(what_, seq_, timeout, [this] { return test(); });
}

// Communicators alive in this process, and whether one of them initialised
// MPI: the last one to go finalises it.
int g_live = 0;
bool g_we_initialized = false;

MpiCommunicator::MpiCommunicator(MPI_Comm group) {
  int initialized = 0;
  int finalized = 0;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  if (finalized) throw Error("MPI was already finalised in this process", "MPI_Init_thread");
  const auto start = Clock::now();
  if (!initialized) {
    int provided = 0;
    check(MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided), "MPI_Init_thread");
    g_we_initialized = true;
    if (provided < MPI_THREAD_FUNNELED) {
      throw Error("the MPI library does not provide MPI_THREAD_FUNNELED", "MPI_Init_thread");
    }
  }
  yield_ = detect_launch_env().local_size > static_cast<int>(::sysconf(_SC_NPROCESSORS_ONLN));
  ++g_live;
  const MPI_Comm base = group == MPI_COMM_NULL ? MPI_COMM_WORLD : group;
  check(MPI_Comm_dup(base, &comm_), "MPI_Comm_dup");
  probes_.open(base);
  check(MPI_Comm_dup(base, &stage2_), "MPI_Comm_dup");
  MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN);
  MPI_Comm_set_errhandler(stage2_, MPI_ERRORS_RETURN);
  MPI_Comm_rank(comm_, &rank_);
  MPI_Comm_size(comm_, &size_);

  std::vector<char> names(kHostBytes * static_cast<std::size_t>(size_), '\0');
  const std::string me = local_host_name();
  std::memcpy(names.data() + kHostBytes * static_cast<std::size_t>(rank_), me.data(),
              std::min(me.size(), kHostBytes - 1));
  auto request = make_request("host exchange");
  check(MPI_Iallgather(MPI_IN_PLACE, 0, MPI_BYTE, names.data(), static_cast<int>(kHostBytes),
                       MPI_BYTE, comm_, &request->request),
        "MPI_Iallgather");
  hosts_.assign(static_cast<std::size_t>(size_), "?");  // for messages until the exchange ends
  hosts_[static_cast<std::size_t>(rank_)] = me;
  request->wait();
  for (int r = 0; r < size_; ++r)
    hosts_[static_cast<std::size_t>(r)] = names.data() + kHostBytes * r;
  labels_ = hosts_;
  if (group != MPI_COMM_NULL) {
    // A group's ranks are not the world's: time-outs name both.
    MPI_Group mine = MPI_GROUP_NULL, world = MPI_GROUP_NULL;
    MPI_Comm_group(comm_, &mine);
    MPI_Comm_group(MPI_COMM_WORLD, &world);
    std::vector<int> ranks(static_cast<std::size_t>(size_)), in_world(ranks.size());
    for (int r = 0; r < size_; ++r) ranks[static_cast<std::size_t>(r)] = r;
    MPI_Group_translate_ranks(mine, size_, ranks.data(), world, in_world.data());
    MPI_Group_free(&mine);
    MPI_Group_free(&world);
    for (std::size_t r = 0; r < labels_.size(); ++r) {
      labels_[r] = fmt::format("{}, world rank {}", hosts_[r], in_world[r]);
    }
  }
  spdlog::debug("MPI rank {} of {} on {} ready in {:.3f} s", rank_, size_, me,
                std::chrono::duration<double>(Clock::now() - start).count());
}

MpiCommunicator::~MpiCommunicator() {
  if (failed_) {
    std::fflush(stdout);
    std::fflush(stderr);
    MPI_Abort(MPI_COMM_WORLD, 1);
    return;
  }
  probes_.close();
  MPI_Comm_free(&stage2_);
  MPI_Comm_free(&comm_);
  if (--g_live == 0 && g_we_initialized) MPI_Finalize();
}

void MpiCommunicator::advance_stages() {
  while (!staged_.empty()) {
    MpiRequest* r = staged_.front();
    int flag = 0;
    check(MPI_Test(&r->request, &flag, MPI_STATUS_IGNORE), "MPI_Test");
    if (!flag) return;
    staged_.pop_front();
    r->queued = false;
    r->next(*r);  // starts the next stage
  }
}

void MpiCommunicator::poll(const std::string& what, std::uint64_t seq,
                           std::chrono::milliseconds timeout, const std::function<bool()>& done) {
  waiting_ = seq;
  const auto start = Clock::now();
  const auto deadline = start + timeout;
  // Progress in most MPI libraries happens inside MPI calls, so poll without
  // sleeping at first; a wait longer than a second is waiting for a slow
  // peer, not for bandwidth, and polls gently.
  const auto patient = start + std::chrono::seconds(1);
  while (!done()) {
    serve_probes();
    const auto now = Clock::now();
    if (now >= deadline) time_out(what, seq, std::chrono::duration<double>(now - start).count());
    if (now < patient) {
      if (yield_) sched_yield();
    } else {
      std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
  }
  waiting_ = 0;
}

void MpiCommunicator::wait_until(const std::string& what, const std::function<bool()>& done,
                                 std::chrono::milliseconds timeout) {
  ++started_;
  // "allreduce of ..." is "allreduce #7 of ..." in messages.
  const std::size_t space = std::min(what.find(' '), what.size());
  poll(fmt::format("{} #{}{}", what.substr(0, space), started_, what.substr(space)), started_,
       timeout, done);
}

void MpiCommunicator::answer_probes() {
  try {
    serve_probes();
  } catch (const std::exception& e) {
    spdlog::debug("answering probes: {}", e.what());
  }
}

void MpiCommunicator::time_out(const std::string& what, std::uint64_t seq, double waited_s) {
  failed_ = true;
  // Ask every other rank where it is; give them a grace period to answer.
  const auto grace = mpi_detail::probe_grace(timeout());
  const mpi_detail::ProbeAnswers answers = probes_.ask_all(seq, started_, grace);
  mpi_detail::throw_time_out(what, waited_s, rank_, labels_, grace, answers);
}

std::unique_ptr<Communicator> MpiCommunicator::split(int color, int key) {
  MPI_Comm group = MPI_COMM_NULL;
  check(MPI_Comm_split(comm_, color, key, &group), "MPI_Comm_split");
  auto made = std::make_unique<MpiCommunicator>(group);
  MPI_Comm_free(&group);
  made->set_timeout(timeout());
  made->set_reduce_algorithm(reduce_algorithm());
  return made;
}

RequestPtr MpiCommunicator::ibarrier() {
  auto r = make_request("barrier");
  check(MPI_Ibarrier(comm_, &r->request), "MPI_Ibarrier");
  return r;
}

RequestPtr MpiCommunicator::start_allreduce(void* data, std::size_t count, DataType type,
                                            ReduceOp op) {
  const std::size_t esize = type_size(type);
  auto r = make_request("allreduce", describe_operation(count * esize, type, reduce_op_name(op)));
  const int n = size_;
  if (reduce_algorithm() == ReduceAlgorithm::Native) {
    check(MPI_Iallreduce(MPI_IN_PLACE, data, as_int(count, "allreduce"), mpi_type(type), mpi_op(op),
                         comm_, &r->request),
          "MPI_Iallreduce");
    if (op == ReduceOp::Avg) {
      r->next = [data, count, type, n](MpiRequest&) {
        divide(type, data, count, n);
        return true;
      };
    }
    return r;
  }
  // Ordered: rank k owns elements [offset[k], offset[k+1]). Every rank sends
  // block k to rank k (all-to-all), rank k reduces the blocks it received in
  // rank order, then every rank gathers every reduced block.
  auto counts = std::make_shared<std::vector<int>>(static_cast<std::size_t>(n));
  auto offsets = std::make_shared<std::vector<int>>(static_cast<std::size_t>(n) + 1);
  as_int(count, "allreduce");
  for (int k = 0; k <= n; ++k) {
    (*offsets)[static_cast<std::size_t>(k)] =
        static_cast<int>(count * static_cast<std::size_t>(k) / static_cast<std::size_t>(n));
  }
  for (int k = 0; k < n; ++k) {
    (*counts)[static_cast<std::size_t>(k)] =
        (*offsets)[static_cast<std::size_t>(k) + 1] - (*offsets)[static_cast<std::size_t>(k)];
  }
  const int mine = (*counts)[static_cast<std::size_t>(rank_)];
  auto recv_counts = std::make_shared<std::vector<int>>(static_cast<std::size_t>(n), mine);
  auto recv_offsets = std::make_shared<std::vector<int>>(static_cast<std::size_t>(n));
  for (int k = 0; k < n; ++k) (*recv_offsets)[static_cast<std::size_t>(k)] = k * mine;
  r->scratch.resize(static_cast<std::size_t>(mine) * static_cast<std::size_t>(n) * esize);
  const MPI_Datatype t = mpi_type(type);
  check(MPI_Ialltoallv(data, counts->data(), offsets->data(), t, r->scratch.data(),
                       recv_counts->data(), recv_offsets->data(), t, comm_, &r->request),
        "MPI_Ialltoallv");
  MPI_Comm comm = stage2_;
  const int me = rank_;
  r->next = [=, stage = 0](MpiRequest& req) mutable {
    if (stage == 1) return true;
    stage = 1;
    void* own = static_cast<unsigned char*>(data) +
                static_cast<std::size_t>((*offsets)[static_cast<std::size_t>(me)]) * esize;
    reduce_blocks(type, own, req.scratch.data(), static_cast<std::size_t>(mine), n, op);
    check(MPI_Iallgatherv(MPI_IN_PLACE, 0, t, data, counts->data(), offsets->data(), t, comm,
                          &req.request),
          "MPI_Iallgatherv");
    return false;
  };
  enqueue_stage(r.get());
  return r;
}

RequestPtr MpiCommunicator::start_reduce_scatter(const void* in, void* out, std::size_t block,
                                                 DataType type, ReduceOp op) {
  const std::size_t esize = type_size(type);
  auto r = make_request("reduce_scatter",
                        describe_operation(block * esize * static_cast<std::size_t>(size_), type,
                                           reduce_op_name(op)));
  const int count = as_int(block, "reduce_scatter");
  const int n = size_;
  if (reduce_algorithm() == ReduceAlgorithm::Native) {
    check(MPI_Ireduce_scatter_block(in, out, count, mpi_type(type), mpi_op(op), comm_, &r->request),
          "MPI_Ireduce_scatter_block");
    if (op == ReduceOp::Avg) {
      r->next = [out, block, type, n](MpiRequest&) {
        divide(type, out, block, n);
        return true;
      };
    }
    return r;
  }
  r->scratch.resize(block * static_cast<std::size_t>(n) * esize);
  check(MPI_Ialltoall(in, count, mpi_type(type), r->scratch.data(), count, mpi_type(type), comm_,
                      &r->request),
        "MPI_Ialltoall");
  r->next = [out, block, type, n, op](MpiRequest& req) {
    reduce_blocks(type, out, req.scratch.data(), block, n, op);
    return true;
  };
  return r;
}

RequestPtr MpiCommunicator::start_all_gather(const void* in, void* out, std::size_t block_bytes) {
  auto r = make_request(
      "all_gather",
      describe_operation(block_bytes * static_cast<std::size_t>(size_), DataType::Bytes, ""));
  const int bytes = as_int(block_bytes, "all_gather");
  const void* own =
      static_cast<unsigned char*>(out) + block_bytes * static_cast<std::size_t>(rank_);
  check(MPI_Iallgather(in == own ? MPI_IN_PLACE : in, bytes, MPI_BYTE, out, bytes, MPI_BYTE, comm_,
                       &r->request),
        "MPI_Iallgather");
  return r;
}

RequestPtr MpiCommunicator::start_broadcast(void* data, std::size_t bytes, int root) {
  if (root < 0 || root >= size_) {
    throw std::out_of_range(fmt::format("broadcast root {} of a world of {}", root, size_));
  }
  auto r = make_request("broadcast", describe_operation(bytes, DataType::Bytes, ""));
  check(MPI_Ibcast(data, as_int(bytes, "broadcast"), MPI_BYTE, root, comm_, &r->request),
        "MPI_Ibcast");
  return r;
}

// Point-to-point messages use the collectives' communicator (MPI keeps the
// two apart) with one tag, so that they arrive in the order sent.
constexpr int kPeerTag = 7;

RequestPtr MpiCommunicator::start_send(const void* data, std::size_t bytes, int peer) {
  check_peer(peer, "send to");
  auto r = make_request(
      "send", fmt::format(" to rank {} ({}){}", peer, labels_[static_cast<std::size_t>(peer)],
                          describe_operation(bytes, DataType::Bytes, "")));
  check(MPI_Isend(data, as_int(bytes, "send"), MPI_BYTE, peer, kPeerTag, comm_, &r->request),
        "MPI_Isend");
  return r;
}

RequestPtr MpiCommunicator::start_recv(void* data, std::size_t bytes, int peer) {
  check_peer(peer, "receive from");
  auto r = make_request(
      "receive", fmt::format(" from rank {} ({}){}", peer, labels_[static_cast<std::size_t>(peer)],
                             describe_operation(bytes, DataType::Bytes, "")));
  check(MPI_Irecv(data, as_int(bytes, "receive"), MPI_BYTE, peer, kPeerTag, comm_, &r->request),
        "MPI_Irecv");
  return r;
}

}  // namespace

std::unique_ptr<Communicator> make_mpi_communicator() {
  return std::make_unique<MpiCommunicator>();
}

}  // namespace borealis
