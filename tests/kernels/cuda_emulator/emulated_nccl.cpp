// The emulated NCCL over MPI (see emulated_nccl.h).
#include "kernels/cuda_emulator/emulated_nccl.h"

#include <mpi.h>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <cstring>
#include <functional>
#include <random>
#include <thread>
#include <vector>

struct ncclComm {
  MPI_Comm comm = MPI_COMM_NULL;  // MPI_COMM_NULL: one rank
  int rank = 0;
  int size = 1;
  // Non-blocking communicators (ncclConfig_t::blocking = 0):
  bool blocking = true;
  std::uint32_t color = 0;               // of the ranks of its id
  MPI_Request start = MPI_REQUEST_NULL;  // the start-up's barrier over the world, while pending
  ncclResult_t error = ncclSuccess;      // of the start-up
  int settling = 0;                      // polls until an operation in progress settles
  bool finalizing = false;               // ncclCommFinalize is in progress
  bool connected = false;                // an operation was issued (its "connections" are made)
};

namespace {

std::chrono::milliseconds g_stall{0};  // stall_next_nccl_start
bool g_hold = false;                   // hold_next_nccl_progress
borealis::emulated::NcclCounts g_counts;
int g_group_depth = 0;              // ncclGroupStart minus ncclGroupEnd
std::vector<ncclComm_t> g_grouped;  // non-blocking communicators used in the open group

using borealis::cuda_emulator::is_device;

std::size_t type_bytes(ncclDataType_t t) {
  return t == ncclFloat32 ? 4 : t == ncclFloat64 ? 8 : 1;
}

MPI_Datatype mpi_type(ncclDataType_t t) {
  return t == ncclFloat32 ? MPI_FLOAT : t == ncclFloat64 ? MPI_DOUBLE : MPI_UNSIGNED_CHAR;
}

bool valid(ncclDataType_t t) {
  return t == ncclUint8 || t == ncclFloat32 || t == ncclFloat64;
}

bool valid_op(ncclRedOp_t op) {
  return op == ncclSum || op == ncclProd || op == ncclMax || op == ncclMin || op == ncclAvg;
}

MPI_Op mpi_op(ncclRedOp_t op) {
  switch (op) {
    case ncclProd:
      return MPI_PROD;
    case ncclMax:
      return MPI_MAX;
    case ncclMin:
      return MPI_MIN;
    case ncclSum:
    case ncclAvg:
      break;
  }
  return MPI_SUM;
}

// Divides `count` elements at `data` by n (ncclAvg after MPI's sum).
void divide(void* data, std::size_t count, ncclDataType_t t, int n) {
  if (t == ncclFloat32) {
    auto* p = static_cast<float*>(data);
    for (std::size_t i = 0; i < count; ++i) p[i] /= static_cast<float>(n);
  } else if (t == ncclFloat64) {
    auto* p = static_cast<double*>(data);
    for (std::size_t i = 0; i < count; ++i) p[i] /= n;
  }
}

// Joins the MPI communicator of the ranks of `c`'s id.
ncclResult_t join(ncclComm& c) {
  if (MPI_Comm_split(MPI_COMM_WORLD, static_cast<int>(c.color & 0x3fffffffu), c.rank, &c.comm) !=
      MPI_SUCCESS) {
    return ncclSystemError;
  }
  int size = 0, mine = 0;
  MPI_Comm_size(c.comm, &size);
  MPI_Comm_rank(c.comm, &mine);
  if (size != c.size || mine != c.rank) {
    MPI_Comm_free(&c.comm);
    return ncclInvalidUsage;
  }
  return ncclSuccess;
}

// The state ncclCommGetAsyncError reports: ncclInProgress until the
// start-up or the operation in progress has settled.
ncclResult_t state(ncclComm& c) {
  if (c.start != MPI_REQUEST_NULL) {
    int done = 0;
    if (MPI_Test(&c.start, &done, MPI_STATUS_IGNORE) != MPI_SUCCESS) {
      c.error = ncclSystemError;
    } else if (!done) {
      return ncclInProgress;
    } else {
      c.error = join(c);
    }
  }
  if (c.error != ncclSuccess) return c.error;
  if (c.settling > 0) {
    if (c.settling != INT_MAX) --c.settling;  // INT_MAX: held
    return ncclInProgress;
  }
  if (c.finalizing) {
    c.finalizing = false;
    ++g_counts.finalized;
  }
  return ncclSuccess;
}

// ncclSuccess when an operation may be issued on `comm`: ncclInvalidUsage
// while the last one is in progress, as NCCL's non-blocking communicators
// require.
ncclResult_t usable(ncclComm_t comm, cudaStream_t stream) {
  if (comm == nullptr || stream == nullptr) return ncclInvalidArgument;
  if (comm->start != MPI_REQUEST_NULL || comm->settling > 0) return ncclInvalidUsage;
  return comm->error;
}

// Puts `c` in progress for two polls, or for good after
// hold_next_nccl_progress.
ncclResult_t in_progress(ncclComm& c) {
  c.settling = g_hold ? INT_MAX : 2;
  g_hold = false;
  return ncclInProgress;
}

// What an operation that was issued returns: on a non-blocking
// communicator, the first one outside a group is in progress (its
// connections are being made), and so is any after
// hold_next_nccl_progress; in a group, ncclGroupEnd says so.
ncclResult_t issued(ncclComm_t comm) {
  if (comm->blocking || (comm->connected && !g_hold)) return ncclSuccess;
  if (g_group_depth > 0) {
    if (std::find(g_grouped.begin(), g_grouped.end(), comm) == g_grouped.end()) {
      g_grouped.push_back(comm);
    }
    return ncclSuccess;
  }
  comm->connected = true;
  return in_progress(*comm);
}

bool int_count(std::size_t count) {
  return count <= static_cast<std::size_t>(INT_MAX);
}

bool overlap(const void* a, std::size_t a_bytes, const void* b, std::size_t b_bytes) {
  const auto x = reinterpret_cast<std::uintptr_t>(a), y = reinterpret_cast<std::uintptr_t>(b);
  return x < y + b_bytes && y < x + a_bytes;
}

// Pending on `stream` until `request` completes; then `finish` runs. The
// scratch buffer lives as long as the request.
ncclResult_t pend(cudaStream_t stream, MPI_Request request, std::function<void()> finish = {},
                  std::shared_ptr<std::vector<char>> scratch = {}) {
  auto r = std::make_shared<MPI_Request>(request);
  borealis::cuda_emulator::enqueue(stream, [r, finish = std::move(finish), scratch] {
    int flag = 0;
    if (MPI_Test(r.get(), &flag, MPI_STATUS_IGNORE) != MPI_SUCCESS) return false;
    if (flag && finish) finish();
    return flag != 0;
  });
  return ncclSuccess;
}

// Checks `comm` and `stream` and runs `issue` (the operation's own checks
// and its start), then says what the caller sees.
template <typename Issue>
ncclResult_t operation(ncclComm_t comm, cudaStream_t stream, Issue&& issue) {
  const ncclResult_t ok = usable(comm, stream);
  if (ok != ncclSuccess) return ok;
  const ncclResult_t r = issue();
  return r == ncclSuccess ? issued(comm) : r;
}

}  // namespace

ncclResult_t ncclGetVersion(int* version) {
  *version = 0;
  return ncclSuccess;
}

const char* ncclGetErrorString(ncclResult_t result) {
  switch (result) {
    case ncclSuccess:
      return "no error";
    case ncclUnhandledCudaError:
      return "unhandled cuda error";
    case ncclSystemError:
      return "unhandled system error (emulated NCCL: an MPI call failed)";
    case ncclInternalError:
      return "internal error";
    case ncclInvalidArgument:
      return "invalid argument";
    case ncclInvalidUsage:
      return "invalid usage";
    case ncclRemoteError:
      return "remote process exited or there was a network error";
    case ncclInProgress:
      return "NCCL operation in progress";
  }
  return "unknown result code";
}

ncclResult_t ncclGetUniqueId(ncclUniqueId* id) {
  std::memset(id->internal, 0, sizeof(id->internal));
  std::random_device random;
  for (std::size_t i = 0; i < 16; i += 4) {
    const std::uint32_t word = random();
    std::memcpy(id->internal + i, &word, 4);
  }
  return ncclSuccess;
}

ncclResult_t ncclCommInitRankConfig(ncclComm_t* comm, int nranks, ncclUniqueId id, int rank,
                                    ncclConfig_t* config) {
  if (nranks < 1 || rank < 0 || rank >= nranks) return ncclInvalidArgument;
  if (config != nullptr && (config->magic != 0xcafebeef || config->size < sizeof(ncclConfig_t))) {
    return ncclInvalidArgument;
  }
  if (g_stall.count() > 0) {
    std::this_thread::sleep_for(g_stall);
    g_stall = std::chrono::milliseconds(0);
  }
  auto made = std::make_unique<ncclComm>();
  made->rank = rank;
  made->size = nranks;
  made->blocking = config == nullptr || config->blocking != 0;
  if (nranks > 1) {
    int initialized = 0;
    MPI_Initialized(&initialized);
    if (!initialized) return ncclInvalidUsage;
    // The ranks of one id: a color from its bytes (FNV-1a).
    std::uint32_t hash = 2166136261u;
    for (const char c : id.internal) hash = (hash ^ static_cast<unsigned char>(c)) * 16777619u;
    made->color = hash;
    if (!made->blocking) {
      ++g_counts.nonblocking_starts;
      if (MPI_Ibarrier(MPI_COMM_WORLD, &made->start) != MPI_SUCCESS) return ncclSystemError;
      *comm = made.release();
      return ncclInProgress;
    }
    const ncclResult_t joined = join(*made);
    if (joined != ncclSuccess) return joined;
  } else if (!made->blocking) {
    ++g_counts.nonblocking_starts;
    made->settling = 2;
    *comm = made.release();
    return ncclInProgress;
  }
  *comm = made.release();
  return ncclSuccess;
}

ncclResult_t ncclCommInitRank(ncclComm_t* comm, int nranks, ncclUniqueId id, int rank) {
  return ncclCommInitRankConfig(comm, nranks, id, rank, nullptr);
}

ncclResult_t ncclCommFinalize(ncclComm_t comm) {
  if (comm == nullptr) return ncclInvalidArgument;
  if (comm->start != MPI_REQUEST_NULL || comm->settling > 0) return ncclInvalidUsage;
  if (comm->blocking) {
    ++g_counts.finalized;
    return ncclSuccess;
  }
  comm->finalizing = true;
  return in_progress(*comm);
}

ncclResult_t ncclCommDestroy(ncclComm_t comm) {
  if (comm == nullptr) return ncclInvalidArgument;
  // A non-blocking communicator is finalized first, and its finalization
  // settled.
  if (comm->start != MPI_REQUEST_NULL || comm->settling > 0 || comm->finalizing) {
    return ncclInvalidUsage;
  }
  if (comm->comm != MPI_COMM_NULL) MPI_Comm_free(&comm->comm);
  delete comm;
  ++g_counts.destroyed;
  return ncclSuccess;
}

ncclResult_t ncclCommAbort(ncclComm_t comm) {
  // Frees the communicator, as NCCL's does. Requests may still be pending
  // (a peer that never came): the MPI communicator stays, the job ends
  // with MPI_Abort.
  if (comm == nullptr) return ncclInvalidArgument;
  std::erase(g_grouped, comm);
  delete comm;
  ++g_counts.aborted;
  return ncclSuccess;
}

ncclResult_t ncclCommGetAsyncError(ncclComm_t comm, ncclResult_t* error) {
  if (comm == nullptr) return ncclInvalidArgument;
  *error = state(*comm);
  return ncclSuccess;
}

ncclResult_t ncclAllReduce(const void* send, void* recv, std::size_t count, ncclDataType_t type,
                           ncclRedOp_t op, ncclComm_t comm, cudaStream_t stream) {
  return operation(comm, stream, [&] {
    if (!valid(type) || !valid_op(op)) return ncclInvalidArgument;
    const std::size_t bytes = count * type_bytes(type);
    if (!is_device(send, bytes) || !is_device(recv, bytes) || !int_count(count)) {
      return ncclInvalidArgument;
    }
    if (comm->size == 1) {
      if (send != recv) std::memmove(recv, send, bytes);
      return ncclSuccess;
    }
    MPI_Request r = MPI_REQUEST_NULL;
    if (MPI_Iallreduce(send == recv ? MPI_IN_PLACE : send, recv, static_cast<int>(count),
                       mpi_type(type), mpi_op(op), comm->comm, &r) != MPI_SUCCESS) {
      return ncclSystemError;
    }
    const int n = comm->size;
    return pend(stream, r,
                op == ncclAvg ? std::function<void()>([=] { divide(recv, count, type, n); })
                              : std::function<void()>());
  });
}

ncclResult_t ncclReduceScatter(const void* send, void* recv, std::size_t recvcount,
                               ncclDataType_t type, ncclRedOp_t op, ncclComm_t comm,
                               cudaStream_t stream) {
  return operation(comm, stream, [&] {
    if (!valid(type) || !valid_op(op)) return ncclInvalidArgument;
    const std::size_t bytes = recvcount * type_bytes(type);
    const std::size_t all = bytes * static_cast<std::size_t>(comm->size);
    if (!is_device(send, all) || !is_device(recv, bytes) || !int_count(recvcount)) {
      return ncclInvalidArgument;
    }
    if (comm->size == 1) {
      if (send != recv) std::memmove(recv, send, bytes);
      return ncclSuccess;
    }
    // MPI's in-place form has another layout than NCCL's: an input that
    // overlaps the output is copied first.
    std::shared_ptr<std::vector<char>> scratch;
    if (overlap(send, all, recv, bytes)) {
      scratch = std::make_shared<std::vector<char>>(static_cast<const char*>(send),
                                                    static_cast<const char*>(send) + all);
      send = scratch->data();
    }
    MPI_Request r = MPI_REQUEST_NULL;
    if (MPI_Ireduce_scatter_block(send, recv, static_cast<int>(recvcount), mpi_type(type),
                                  mpi_op(op), comm->comm, &r) != MPI_SUCCESS) {
      return ncclSystemError;
    }
    const int n = comm->size;
    return pend(stream, r,
                op == ncclAvg ? std::function<void()>([=] { divide(recv, recvcount, type, n); })
                              : std::function<void()>(),
                scratch);
  });
}

ncclResult_t ncclAllGather(const void* send, void* recv, std::size_t sendcount, ncclDataType_t type,
                           ncclComm_t comm, cudaStream_t stream) {
  return operation(comm, stream, [&] {
    if (!valid(type)) return ncclInvalidArgument;
    const std::size_t bytes = sendcount * type_bytes(type);
    const std::size_t all = bytes * static_cast<std::size_t>(comm->size);
    if (!is_device(send, bytes) || !is_device(recv, all) || !int_count(sendcount)) {
      return ncclInvalidArgument;
    }
    char* mine = static_cast<char*>(recv) + bytes * static_cast<std::size_t>(comm->rank);
    if (comm->size == 1) {
      if (send != recv) std::memmove(recv, send, bytes);
      return ncclSuccess;
    }
    MPI_Request r = MPI_REQUEST_NULL;
    const bool in_place = send == mine;
    if (!in_place && overlap(send, bytes, recv, all)) return ncclInvalidArgument;
    if (MPI_Iallgather(in_place ? MPI_IN_PLACE : send, static_cast<int>(sendcount), mpi_type(type),
                       recv, static_cast<int>(sendcount), mpi_type(type), comm->comm,
                       &r) != MPI_SUCCESS) {
      return ncclSystemError;
    }
    return pend(stream, r);
  });
}

ncclResult_t ncclBroadcast(const void* send, void* recv, std::size_t count, ncclDataType_t type,
                           int root, ncclComm_t comm, cudaStream_t stream) {
  return operation(comm, stream, [&] {
    if (!valid(type) || root < 0 || root >= comm->size) return ncclInvalidArgument;
    const std::size_t bytes = count * type_bytes(type);
    if (!is_device(recv, bytes) || (comm->rank == root && !is_device(send, bytes)) ||
        !int_count(count)) {
      return ncclInvalidArgument;
    }
    if (comm->rank == root && send != recv) std::memmove(recv, send, bytes);
    if (comm->size == 1) return ncclSuccess;
    MPI_Request r = MPI_REQUEST_NULL;
    if (MPI_Ibcast(recv, static_cast<int>(count), mpi_type(type), root, comm->comm, &r) !=
        MPI_SUCCESS) {
      return ncclSystemError;
    }
    return pend(stream, r);
  });
}

namespace {

// A send or a receive of `count` elements at `buffer`: start posts MPI's
// (MPI_Isend or MPI_Irecv) into its request.
template <typename Start>
ncclResult_t point_to_point(const void* buffer, std::size_t count, ncclDataType_t type, int peer,
                            ncclComm_t comm, cudaStream_t stream, Start&& start) {
  return operation(comm, stream, [&] {
    if (!valid(type) || peer < 0 || peer >= comm->size || peer == comm->rank ||
        !is_device(buffer, count * type_bytes(type)) || !int_count(count)) {
      return ncclInvalidArgument;
    }
    MPI_Request r = MPI_REQUEST_NULL;
    if (start(&r) != MPI_SUCCESS) return ncclSystemError;
    return pend(stream, r);
  });
}

}  // namespace

ncclResult_t ncclSend(const void* send, std::size_t count, ncclDataType_t type, int peer,
                      ncclComm_t comm, cudaStream_t stream) {
  return point_to_point(send, count, type, peer, comm, stream, [&](MPI_Request* r) {
    return MPI_Isend(send, static_cast<int>(count), mpi_type(type), peer, 0, comm->comm, r);
  });
}

ncclResult_t ncclRecv(void* recv, std::size_t count, ncclDataType_t type, int peer, ncclComm_t comm,
                      cudaStream_t stream) {
  return point_to_point(recv, count, type, peer, comm, stream, [&](MPI_Request* r) {
    return MPI_Irecv(recv, static_cast<int>(count), mpi_type(type), peer, 0, comm->comm, r);
  });
}

ncclResult_t ncclGroupStart() {
  ++g_group_depth;
  return ncclSuccess;
}

ncclResult_t ncclGroupEnd() {
  if (g_group_depth == 0) return ncclInvalidUsage;
  if (--g_group_depth > 0) return ncclSuccess;
  ncclResult_t r = ncclSuccess;
  for (const ncclComm_t comm : g_grouped) {
    comm->connected = true;
    r = in_progress(*comm);
  }
  g_grouped.clear();
  return r;
}

namespace borealis::emulated {

void stall_next_nccl_start(std::chrono::milliseconds stall) {
  g_stall = stall;
}

void hold_next_nccl_progress() {
  g_hold = true;
}

NcclCounts nccl_counts() {
  return g_counts;
}

}  // namespace borealis::emulated
