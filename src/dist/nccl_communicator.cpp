// NcclCommunicator (see nccl_communicator.h).
//
// NCCL's functions are called through a table filled by dlopen/dlsym, so
// that the binary does not depend on libnccl. The same source also builds
// against the CUDA emulator's NCCL (tests/kernels/cuda_emulator/), which
// runs the collectives over MPI in the tests: the table then holds the
// emulator's functions and what this file exports is in
// namespace borealis::emulated.
#if defined(BOREALIS_CUDA_EMULATOR)
#include "kernels/cuda_emulator/cuda_emulator.h"
#include "kernels/cuda_emulator/emulated_nccl.h"
#define BOREALIS_NCCL_NAMESPACE borealis::emulated
#else
#include <cuda_runtime.h>
#include <dlfcn.h>
#include <nccl.h>

#include "dist/nccl_communicator.h"
#define BOREALIS_NCCL_NAMESPACE borealis
#endif

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <chrono>
#include <cstring>
#include <functional>
#include <mutex>
#include <span>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>

#include "core/error.h"

namespace BOREALIS_NCCL_NAMESPACE {

namespace {

// The NCCL functions used here.
// clang-format off
#define BOREALIS_NCCL_FUNCTIONS(X) \
  X(ncclGetVersion)                \
  X(ncclGetErrorString)            \
  X(ncclGetUniqueId)               \
  X(ncclCommInitRankConfig)        \
  X(ncclCommFinalize)              \
  X(ncclCommDestroy)               \
  X(ncclCommAbort)                 \
  X(ncclCommGetAsyncError)         \
  X(ncclAllReduce)                 \
  X(ncclReduceScatter)             \
  X(ncclAllGather)                 \
  X(ncclBroadcast)                 \
  X(ncclSend)                      \
  X(ncclRecv)                      \
  X(ncclGroupStart)                \
  X(ncclGroupEnd)
// clang-format on

struct Nccl {
#define BOREALIS_NCCL_POINTER(f) decltype(&::f) f = nullptr;
  BOREALIS_NCCL_FUNCTIONS(BOREALIS_NCCL_POINTER)
#undef BOREALIS_NCCL_POINTER
  std::string unavailable;  // why the table is empty, or ""
  std::string library;      // the file loaded
  int version = 0;
};

#if defined(BOREALIS_CUDA_EMULATOR)
Nccl load_nccl() {
  Nccl n;
  n.library = "the CUDA emulator's";
#define BOREALIS_NCCL_TAKE(f) n.f = &::f;
  BOREALIS_NCCL_FUNCTIONS(BOREALIS_NCCL_TAKE)
#undef BOREALIS_NCCL_TAKE
  return n;
}
#else
Nccl load_nccl() {
  Nccl n;
  n.library = "libnccl.so.2";
  void* lib = dlopen(n.library.c_str(), RTLD_NOW | RTLD_LOCAL);
  std::string tried = n.library;
#ifdef BOREALIS_NCCL_LIBRARY
  if (lib == nullptr) {
    n.library = BOREALIS_NCCL_LIBRARY;
    lib = dlopen(n.library.c_str(), RTLD_NOW | RTLD_LOCAL);
    tried += " and " + n.library;
  }
#endif
  if (lib == nullptr) {
    n.unavailable = fmt::format("NCCL could not be loaded ({}): {}", tried, dlerror());
    return n;
  }
  std::string missing;
#define BOREALIS_NCCL_FIND(f)                             \
  n.f = reinterpret_cast<decltype(&::f)>(dlsym(lib, #f)); \
  if (n.f == nullptr) missing += (missing.empty() ? "" : ", ") + std::string(#f);
  BOREALIS_NCCL_FUNCTIONS(BOREALIS_NCCL_FIND)
#undef BOREALIS_NCCL_FIND
  if (!missing.empty()) {
    n = Nccl{};
    n.unavailable =
        fmt::format("the NCCL library lacks {} (NCCL 2.14 or later is needed)", missing);
    dlclose(lib);
  }
  return n;
}
#endif

const Nccl& nccl() {
  static const Nccl loaded = [] {
    Nccl n = load_nccl();
    if (n.unavailable.empty() && n.ncclGetVersion(&n.version) != ncclSuccess) n.version = 0;
    return n;
  }();
  return loaded;
}

void check_cuda(cudaError_t err, const char* what) {
  if (err != cudaSuccess) {
    throw Error(fmt::format("CUDA: {}: {}", what, cudaGetErrorString(err)), "nccl");
  }
}

void check_nccl(ncclResult_t r, const std::string& what) {
  if (r != ncclSuccess) {
    throw Error(fmt::format("NCCL: {}: {}", what, nccl().ncclGetErrorString(r)), "nccl");
  }
}

ncclDataType_t nccl_type(DataType t) {
  switch (t) {
    case DataType::F32:
      return ncclFloat32;
    case DataType::F64:
      return ncclFloat64;
    case DataType::Bytes:
      break;
  }
  return ncclUint8;
}

std::size_t element_bytes(DataType t) {
  return t == DataType::F32 ? sizeof(float) : t == DataType::F64 ? sizeof(double) : 1;
}

ncclRedOp_t nccl_op(ReduceOp op) {
  switch (op) {
    case ReduceOp::Sum:
      return ncclSum;
    case ReduceOp::Avg:
      return ncclAvg;
    case ReduceOp::Max:
      return ncclMax;
    case ReduceOp::Min:
      break;
  }
  return ncclMin;
}

class NcclCommunicator;

// A collective queued on the communicator's stream; done when its event is.
class NcclRequest final : public Request {
 public:
  NcclRequest(NcclCommunicator* comm, std::string what, cudaEvent_t event)
      : comm_(comm), what_(std::move(what)), event_(event) {}
  ~NcclRequest() override;
  bool test() override;
  void wait(std::chrono::milliseconds timeout) override;
  void wait() override;

 private:
  NcclCommunicator* comm_;
  std::string what_;
  cudaEvent_t event_;
  bool done_ = false;    // the collective has ended
  bool waited_ = false;  // and wait() has returned
};

class NcclCommunicator final : public Communicator {
 public:
  // Over `host`; `owned` is the same communicator when this one owns it
  // (made by split).
  NcclCommunicator(Communicator& host, std::unique_ptr<Communicator> owned, int device)
      : owned_(std::move(owned)), host_(host), device_(device) {
    set_timeout(host.timeout());
    set_reduce_algorithm(ReduceAlgorithm::Native);
    const Nccl& n = nccl();
    if (!n.unavailable.empty()) throw Error(n.unavailable, "nccl");
    // Every rank opens its GPU before any joins NCCL, so that a rank that
    // cannot makes them all fail at once with its reason.
    const cudaError_t opened = cudaSetDevice(device);
    double ready = opened == cudaSuccess ? 1.0 : 0.0;
    host.allreduce(std::span<double>(&ready, 1), ReduceOp::Min);
    check_cuda(opened, "cudaSetDevice");
    if (ready == 0.0) {
      throw Error(fmt::format("NCCL: another rank could not open its GPU (this is rank {} on GPU "
                              "{}); see its error",
                              host.rank(), device),
                  "nccl");
    }
    ncclUniqueId id;
    std::memset(&id, 0, sizeof(id));
    if (host.rank() == 0) check_nccl(n.ncclGetUniqueId(&id), "ncclGetUniqueId");
    host.broadcast(std::span<char>(id.internal, sizeof(id.internal)), 0);
    // A non-blocking communicator: its start-up, and every call on it,
    // returns at once and goes on in NCCL's threads, so that the waits for
    // them time out as the host's do (a rank whose NCCL cannot reach the
    // others would otherwise hold every rank in the start-up for good).
    ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
    config.blocking = 0;
    const std::string start =
        fmt::format("ncclCommInitRank (rank {} of {} on GPU {})", host.rank(), host.size(), device);
    const ncclResult_t started =
        n.ncclCommInitRankConfig(&comm_, host.size(), id, host.rank(), &config);
    if (started != ncclSuccess && started != ncclInProgress) {
      if (comm_ != nullptr) n.ncclCommAbort(comm_);
      check_nccl(started, start);
    }
    wait(
        start, [&] { return settled(start); }, timeout());
    check_cuda(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking),
               "cudaStreamCreateWithFlags");
    check_cuda(cudaEventCreateWithFlags(&ready_, cudaEventDisableTiming), "cudaEventCreate");
    check_cuda(cudaMalloc(&one_, sizeof(float)), "cudaMalloc");
    check_cuda(cudaMemset(one_, 0, sizeof(float)), "cudaMemset");
    spdlog::debug("NCCL {} rank {} of {} on GPU {}", n.version, host.rank(), host.size(), device);
  }

  ~NcclCommunicator() override {
    // After a failure the communicator is aborted and its stream may hold
    // kernels that never end: the rest stays as it is.
    if (failed_) return;
    close();
    if (failed_) return;
    cudaFree(one_);
    cudaEventDestroy(ready_);
    cudaStreamDestroy(stream_);
  }

  int rank() const override { return host_.rank(); }
  int size() const override { return host_.size(); }
  const std::string& host(int rank) const override { return host_.host(rank); }
  std::string backend() const override { return "nccl"; }
  void answer_probes() override { host_.answer_probes(); }

  void wait_until(const std::string& what, const std::function<bool()>& done,
                  std::chrono::milliseconds timeout) override {
    host_.wait_until(what, done, timeout);
  }

  RequestPtr ibarrier() override {
    return enqueue("barrier", [&] {
      return nccl().ncclAllReduce(one_, one_, 1, ncclFloat32, ncclSum, comm_, stream_);
    });
  }

  std::unique_ptr<Communicator> split(int color, int key) override {
    std::unique_ptr<Communicator> group = host_.split(color, key);
    group->set_timeout(timeout());
    Communicator& g = *group;
    return std::make_unique<NcclCommunicator>(g, std::move(group), device_);
  }

  // Whether the communicator's call in progress (its start-up, or the
  // set-up of an operation) has settled; throws its error, naming `what`.
  bool settled(const std::string& what) {
    ncclResult_t state = ncclSuccess;
    check_nccl(nccl().ncclCommGetAsyncError(comm_, &state), "ncclCommGetAsyncError");
    if (state == ncclInProgress) return false;
    check_nccl(state, what);
    return true;
  }

  // Whether the collective of `event` has finished; throws on an error of
  // the GPU or of NCCL.
  bool finished(cudaEvent_t event) {
    // (ncclCommAbort freed the communicator.)
    if (failed_) throw Error("NCCL: the communicator was aborted after an earlier failure", "nccl");
    const cudaError_t e = cudaEventQuery(event);
    if (e == cudaSuccess) return true;
    if (e != cudaErrorNotReady) check_cuda(e, "cudaEventQuery");
    ncclResult_t async = ncclSuccess;
    check_nccl(nccl().ncclCommGetAsyncError(comm_, &async), "ncclCommGetAsyncError");
    if (async != ncclSuccess && async != ncclInProgress) check_nccl(async, "collective");
    return false;
  }

  // wait_until, aborting the communicator when it throws.
  void wait(const std::string& what, const std::function<bool()>& done,
            std::chrono::milliseconds timeout) {
    try {
      wait_until(what, done, timeout);
    } catch (...) {
      abort();
      throw;
    }
  }

  void wait(const std::string& what, cudaEvent_t event, std::chrono::milliseconds timeout) {
    wait(
        what, [&] { return finished(event); }, timeout);
  }

  bool failed() const { return failed_; }

 protected:
  RequestPtr start_allreduce(void* data, std::size_t count, DataType type, ReduceOp op) override {
    return enqueue(
        "allreduce" + describe_operation(count * element_bytes(type), type, reduce_op_name(op)),
        [&] {
          return nccl().ncclAllReduce(data, data, count, nccl_type(type), nccl_op(op), comm_,
                                      stream_);
        });
  }
  RequestPtr start_reduce_scatter(const void* in, void* out, std::size_t block, DataType type,
                                  ReduceOp op) override {
    const std::size_t bytes = block * element_bytes(type) * static_cast<std::size_t>(size());
    return enqueue("reduce_scatter" + describe_operation(bytes, type, reduce_op_name(op)), [&] {
      return nccl().ncclReduceScatter(in, out, block, nccl_type(type), nccl_op(op), comm_, stream_);
    });
  }
  RequestPtr start_all_gather(const void* in, void* out, std::size_t block_bytes) override {
    const std::size_t bytes = block_bytes * static_cast<std::size_t>(size());
    return enqueue("all_gather" + describe_operation(bytes, DataType::Bytes, ""), [&] {
      return nccl().ncclAllGather(in, out, block_bytes, ncclUint8, comm_, stream_);
    });
  }
  RequestPtr start_broadcast(void* data, std::size_t bytes, int root) override {
    if (root < 0 || root >= size()) {
      throw std::out_of_range(fmt::format("broadcast root {} of a group of {}", root, size()));
    }
    return enqueue("broadcast" + describe_operation(bytes, DataType::Bytes, ""), [&] {
      return nccl().ncclBroadcast(data, data, bytes, ncclUint8, root, comm_, stream_);
    });
  }
  RequestPtr start_send(const void* data, std::size_t bytes, int peer) override {
    check_peer(peer, "send to");
    return enqueue(
        fmt::format("send to rank {}", peer) + describe_operation(bytes, DataType::Bytes, ""),
        [&] { return nccl().ncclSend(data, bytes, ncclUint8, peer, comm_, stream_); });
  }
  RequestPtr start_recv(void* data, std::size_t bytes, int peer) override {
    check_peer(peer, "receive from");
    return enqueue(
        fmt::format("receive from rank {}", peer) + describe_operation(bytes, DataType::Bytes, ""),
        [&] { return nccl().ncclRecv(data, bytes, ncclUint8, peer, comm_, stream_); });
  }
  // One group: NCCL runs the send and the receive together.
  RequestPtr start_sendrecv(const void* out, std::size_t out_bytes, int to, void* in,
                            std::size_t in_bytes, int from) override {
    check_peer(to, "send to");
    check_peer(from, "receive from");
    return enqueue(fmt::format("sendrecv to rank {}, from rank {}", to, from) +
                       describe_operation(out_bytes + in_bytes, DataType::Bytes, ""),
                   [&] {
                     const Nccl& n = nccl();
                     ncclResult_t r = n.ncclGroupStart();
                     if (r == ncclSuccess)
                       r = n.ncclSend(out, out_bytes, ncclUint8, to, comm_, stream_);
                     if (r == ncclSuccess)
                       r = n.ncclRecv(in, in_bytes, ncclUint8, from, comm_, stream_);
                     const ncclResult_t end = n.ncclGroupEnd();
                     return r == ncclSuccess ? end : r;
                   });
  }

 private:
  void check_peer(int peer, const char* what) const {
    if (peer < 0 || peer >= size() || peer == rank()) {
      throw std::out_of_range(
          fmt::format("{} rank {} from rank {} of a group of {}", what, peer, rank(), size()));
    }
  }

  // Queues `call` (an NCCL collective on stream_) after the work queued on
  // the default stream so far.
  template <typename Call>
  RequestPtr enqueue(std::string what, Call&& call) {
    if (failed_) throw Error(what + ": the NCCL communicator failed before", "nccl");
    check_cuda(cudaSetDevice(device_), "cudaSetDevice");
    check_cuda(cudaEventRecord(ready_, nullptr), "cudaEventRecord");
    check_cuda(cudaStreamWaitEvent(stream_, ready_, 0), "cudaStreamWaitEvent");
    // In progress: NCCL is still setting the operation up (connecting to
    // its peers the first time) and has not queued it on the stream yet.
    // Every rank waits here for every operation, in progress or not, so
    // that the host numbers the same waits on each.
    const ncclResult_t issued = call();
    if (issued != ncclSuccess && issued != ncclInProgress) check_nccl(issued, what);
    wait(
        what, [&] { return issued == ncclSuccess || settled(what); }, timeout());
    cudaEvent_t done = nullptr;
    check_cuda(cudaEventCreateWithFlags(&done, cudaEventDisableTiming), "cudaEventCreate");
    const cudaError_t recorded = cudaEventRecord(done, stream_);
    if (recorded != cudaSuccess) cudaEventDestroy(done);
    check_cuda(recorded, "cudaEventRecord");
    return std::make_unique<NcclRequest>(this, std::move(what), done);
  }

  // Finalizes the communicator and frees it. A peer that is gone can hold
  // the finalization: after the time-out, or on an error, the communicator
  // is aborted instead. Never throws.
  void close() {
    const Nccl& n = nccl();
    ncclResult_t state = n.ncclCommFinalize(comm_);
    const auto deadline = std::chrono::steady_clock::now() + timeout();
    while (state == ncclInProgress && std::chrono::steady_clock::now() < deadline) {
      host_.answer_probes();
      std::this_thread::sleep_for(std::chrono::microseconds(200));
      if (n.ncclCommGetAsyncError(comm_, &state) != ncclSuccess) state = ncclInternalError;
    }
    if (state != ncclSuccess) {
      spdlog::warn("NCCL: the communicator of rank {} {}; aborting it", rank(),
                   state == ncclInProgress
                       ? fmt::format("did not finish its work within {:.1f} s",
                                     std::chrono::duration<double>(timeout()).count())
                       : std::string("failed to finalize: ") + n.ncclGetErrorString(state));
      abort();
      return;
    }
    const ncclResult_t destroyed = n.ncclCommDestroy(comm_);
    if (destroyed != ncclSuccess) {
      spdlog::warn("ncclCommDestroy: {}", n.ncclGetErrorString(destroyed));
    }
  }

  void abort() {
    if (failed_) return;
    failed_ = true;
    const ncclResult_t r = nccl().ncclCommAbort(comm_);
    if (r != ncclSuccess) spdlog::warn("ncclCommAbort: {}", nccl().ncclGetErrorString(r));
  }

  std::unique_ptr<Communicator> owned_;  // host_, when this one made it
  Communicator& host_;
  int device_;
  ncclComm_t comm_ = nullptr;
  cudaStream_t stream_ = nullptr;
  cudaEvent_t ready_ = nullptr;  // the default stream's work before a collective
  float* one_ = nullptr;         // barrier's number
  bool failed_ = false;
};

NcclRequest::~NcclRequest() {
  if (!waited_ && !comm_->failed()) {
    try {
      wait();
    } catch (const std::exception& e) {
      spdlog::error("{}", e.what());
    }
  }
  if (!comm_->failed()) cudaEventDestroy(event_);
}

bool NcclRequest::test() {
  if (!done_) done_ = comm_->finished(event_);
  return done_;
}

void NcclRequest::wait(std::chrono::milliseconds timeout) {
  // Through the host's wait even when test() saw the end: the host numbers
  // the operations it waits for, and every rank must number the same ones.
  if (waited_) return;
  comm_->wait(what_, event_, timeout);
  done_ = waited_ = true;
}

void NcclRequest::wait() {
  wait(comm_->timeout());
}

}  // namespace

std::string nccl_unavailable_reason() {
  return nccl().unavailable;
}

std::string nccl_summary() {
  const Nccl& n = nccl();
  if (!n.unavailable.empty()) return n.unavailable;
  // NCCL_VERSION(X, Y, Z) is X * 10000 + Y * 100 + Z since 2.9.
  return fmt::format("NCCL {}.{}.{} ({})", n.version / 10000, n.version / 100 % 100,
                     n.version % 100, n.library);
}

std::unique_ptr<Communicator> make_nccl_communicator(Communicator& host, int device) {
  return std::make_unique<NcclCommunicator>(host, nullptr, device);
}

}  // namespace BOREALIS_NCCL_NAMESPACE
