#include "dist/communicator.h"

#include <fmt/format.h>
#include <unistd.h>

#include <spdlog/spdlog.h>

#include <algorithm>
#include <climits>
#include <cstring>
#include <thread>

#include "core/error.h"
#include "core/text.h"
#include "dist/launch_env.h"

namespace borealis {

const char* reduce_op_name(ReduceOp op) {
  switch (op) {
    case ReduceOp::Sum:
      return "sum";
    case ReduceOp::Avg:
      return "avg";
    case ReduceOp::Max:
      return "max";
    case ReduceOp::Min:
      return "min";
  }
  return "?";
}

const char* reduce_algorithm_name(ReduceAlgorithm a) {
  return a == ReduceAlgorithm::Ordered ? "ordered" : "native";
}

CommTimeout::CommTimeout(std::string what, std::string where, std::string operation, int rank,
                         std::vector<int> silent)
    : Error(std::move(what), std::move(where)),
      operation_(std::move(operation)),
      rank_(rank),
      silent_(std::move(silent)) {}

bool CommTimeout::is_silent(int rank) const {
  return std::find(silent_.begin(), silent_.end(), rank) != silent_.end();
}

int CommTimeout::first_answering() const {
  int r = 0;
  while (r < rank_ && is_silent(r)) ++r;
  return r;
}

void Communicator::check_blocks(std::size_t whole, std::size_t block, const char* what) const {
  if (whole != block * static_cast<std::size_t>(size())) {
    throw std::invalid_argument(
        fmt::format("{}: {} elements are not {} blocks of {}", what, whole, size(), block));
  }
}

RequestPtr Communicator::start_sendrecv(const void* out, std::size_t out_bytes, int to, void* in,
                                        std::size_t in_bytes, int from) {
  RequestPtr r = start_recv(in, in_bytes, from);
  start_send(out, out_bytes, to)->wait();
  return r;
}

std::string local_host_name() {
  char name[HOST_NAME_MAX + 1] = {};
  if (::gethostname(name, sizeof(name) - 1) != 0) return "unknown-host";
  return name;
}

std::string describe_operation(std::size_t bytes, DataType type, const char* op) {
  return fmt::format(" of {} ({}{}{})", format_bytes(bytes),
                     type == DataType::F32   ? "f32"
                     : type == DataType::F64 ? "f64"
                                             : "bytes",
                     *op ? " " : "", op);
}

namespace {

class DoneRequest final : public Request {
 public:
  bool test() override { return true; }
  void wait(std::chrono::milliseconds) override {}
  void wait() override {}
};

}  // namespace

SelfCommunicator::SelfCommunicator() : host_(local_host_name()) {}

const std::string& SelfCommunicator::host(int rank) const {
  if (rank != 0) throw std::out_of_range(fmt::format("rank {} of a world of 1", rank));
  return host_;
}

RequestPtr SelfCommunicator::ibarrier() {
  return std::make_unique<DoneRequest>();
}

std::unique_ptr<Communicator> SelfCommunicator::split(int, int) {
  auto made = std::make_unique<SelfCommunicator>();
  made->set_timeout(timeout());
  made->set_reduce_algorithm(reduce_algorithm());
  return made;
}

void SelfCommunicator::wait_until(const std::string& what, const std::function<bool()>& done,
                                  std::chrono::milliseconds timeout) {
  const auto start = std::chrono::steady_clock::now();
  while (!done()) {
    const auto waited = std::chrono::steady_clock::now() - start;
    if (waited >= timeout) {
      const std::string message = fmt::format("{} timed out after {:.1f} s on rank 0 ({})", what,
                                              std::chrono::duration<double>(waited).count(), host_);
      spdlog::error("{}", message);
      throw CommTimeout(message, "rank 0", what, 0, {});
    }
    std::this_thread::sleep_for(std::chrono::microseconds(50));
  }
}

RequestPtr SelfCommunicator::start_allreduce(void*, std::size_t, DataType, ReduceOp) {
  // The sum, average, maximum or minimum over one rank is the data itself.
  return std::make_unique<DoneRequest>();
}

RequestPtr SelfCommunicator::start_reduce_scatter(const void* in, void* out, std::size_t block,
                                                  DataType type, ReduceOp) {
  const std::size_t bytes = block * (type == DataType::F32 ? sizeof(float) : sizeof(double));
  if (in != out && bytes > 0) std::memmove(out, in, bytes);
  return std::make_unique<DoneRequest>();
}

RequestPtr SelfCommunicator::start_all_gather(const void* in, void* out, std::size_t block_bytes) {
  if (in != out && block_bytes > 0) std::memmove(out, in, block_bytes);
  return std::make_unique<DoneRequest>();
}

RequestPtr SelfCommunicator::start_broadcast(void*, std::size_t, int root) {
  if (root != 0) throw std::out_of_range(fmt::format("broadcast root {} of a world of 1", root));
  return std::make_unique<DoneRequest>();
}

RequestPtr SelfCommunicator::start_send(const void*, std::size_t, int peer) {
  throw std::out_of_range(fmt::format("send to rank {} in a world of 1", peer));
}

RequestPtr SelfCommunicator::start_recv(void*, std::size_t, int peer) {
  throw std::out_of_range(fmt::format("receive from rank {} in a world of 1", peer));
}

std::unique_ptr<Communicator> make_communicator(const CommOptions& options) {
  std::unique_ptr<Communicator> comm;
  if (options.backend == "self") {
    comm = std::make_unique<SelfCommunicator>();
  } else if (options.backend == "mpi") {
    comm = make_mpi_communicator();
  } else if (options.backend == "auto") {
    if (detect_launch_env().world_size > 1) {
      comm = make_mpi_communicator();
    } else {
      comm = std::make_unique<SelfCommunicator>();
    }
  } else {
    throw Error(
        fmt::format("unknown communication backend '{}' (auto, self, mpi)", options.backend),
        "backend");
  }
  comm->set_timeout(options.timeout);
  comm->set_reduce_algorithm(options.algorithm);
  return comm;
}

}  // namespace borealis
