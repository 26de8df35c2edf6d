// The emulated NCCL over MPI (see emulated_nccl.h).
#include "kernels/cuda_emulator/emulated_nccl.h"

#include <mpi.h>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <cstring>
#include <functional>
#include <random>
#include <vector>

struct ncclComm {
  MPI_Comm comm = MPI_COMM_NULL;  // MPI_COMM_NULL: one rank
  int rank = 0;
  int size = 1;
  bool aborted = false;
};

namespace {

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

bool usable(ncclComm_t comm, cudaStream_t stream) {
  return comm != nullptr && !comm->aborted && stream != nullptr;
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

ncclResult_t ncclCommInitRank(ncclComm_t* comm, int nranks, ncclUniqueId id, int rank) {
  if (nranks < 1 || rank < 0 || rank >= nranks) return ncclInvalidArgument;
  auto made = std::make_unique<ncclComm>();
  made->rank = rank;
  made->size = nranks;
  if (nranks > 1) {
    int initialized = 0;
    MPI_Initialized(&initialized);
    if (!initialized) return ncclInvalidUsage;
    // The ranks of one id: a color from its bytes (FNV-1a).
    std::uint32_t hash = 2166136261u;
    for (const char c : id.internal) hash = (hash ^ static_cast<unsigned char>(c)) * 16777619u;
    if (MPI_Comm_split(MPI_COMM_WORLD, static_cast<int>(hash & 0x3fffffffu), rank, &made->comm) !=
        MPI_SUCCESS) {
      return ncclSystemError;
    }
    int size = 0, mine = 0;
    MPI_Comm_size(made->comm, &size);
    MPI_Comm_rank(made->comm, &mine);
    if (size != nranks || mine != rank) {
      MPI_Comm_free(&made->comm);
      return ncclInvalidUsage;
    }
  }
  *comm = made.release();
  return ncclSuccess;
}

ncclResult_t ncclCommDestroy(ncclComm_t comm) {
  if (comm == nullptr) return ncclInvalidArgument;
  if (comm->comm != MPI_COMM_NULL) MPI_Comm_free(&comm->comm);
  delete comm;
  return ncclSuccess;
}

ncclResult_t ncclCommAbort(ncclComm_t comm) {
  // Requests may still be pending (a peer that never came): the MPI
  // communicator stays, the job ends with MPI_Abort.
  if (comm == nullptr) return ncclInvalidArgument;
  comm->aborted = true;
  return ncclSuccess;
}

ncclResult_t ncclCommGetAsyncError(ncclComm_t comm, ncclResult_t* error) {
  if (comm == nullptr) return ncclInvalidArgument;
  *error = ncclSuccess;
  return ncclSuccess;
}

ncclResult_t ncclAllReduce(const void* send, void* recv, std::size_t count, ncclDataType_t type,
                           ncclRedOp_t op, ncclComm_t comm, cudaStream_t stream) {
  if (!usable(comm, stream) || !valid(type) || !valid_op(op)) return ncclInvalidArgument;
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
}

ncclResult_t ncclReduceScatter(const void* send, void* recv, std::size_t recvcount,
                               ncclDataType_t type, ncclRedOp_t op, ncclComm_t comm,
                               cudaStream_t stream) {
  if (!usable(comm, stream) || !valid(type) || !valid_op(op)) return ncclInvalidArgument;
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
  if (MPI_Ireduce_scatter_block(send, recv, static_cast<int>(recvcount), mpi_type(type), mpi_op(op),
                                comm->comm, &r) != MPI_SUCCESS) {
    return ncclSystemError;
  }
  const int n = comm->size;
  return pend(stream, r,
              op == ncclAvg ? std::function<void()>([=] { divide(recv, recvcount, type, n); })
                            : std::function<void()>(),
              scratch);
}

ncclResult_t ncclAllGather(const void* send, void* recv, std::size_t sendcount, ncclDataType_t type,
                           ncclComm_t comm, cudaStream_t stream) {
  if (!usable(comm, stream) || !valid(type)) return ncclInvalidArgument;
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
}

ncclResult_t ncclBroadcast(const void* send, void* recv, std::size_t count, ncclDataType_t type,
                           int root, ncclComm_t comm, cudaStream_t stream) {
  if (!usable(comm, stream) || !valid(type) || root < 0 || root >= comm->size) {
    return ncclInvalidArgument;
  }
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
}

ncclResult_t ncclSend(const void* send, std::size_t count, ncclDataType_t type, int peer,
                      ncclComm_t comm, cudaStream_t stream) {
  if (!usable(comm, stream) || !valid(type) || peer < 0 || peer >= comm->size ||
      peer == comm->rank || !is_device(send, count * type_bytes(type)) || !int_count(count)) {
    return ncclInvalidArgument;
  }
  MPI_Request r = MPI_REQUEST_NULL;
  if (MPI_Isend(send, static_cast<int>(count), mpi_type(type), peer, 0, comm->comm, &r) !=
      MPI_SUCCESS) {
    return ncclSystemError;
  }
  return pend(stream, r);
}

ncclResult_t ncclRecv(void* recv, std::size_t count, ncclDataType_t type, int peer, ncclComm_t comm,
                      cudaStream_t stream) {
  if (!usable(comm, stream) || !valid(type) || peer < 0 || peer >= comm->size ||
      peer == comm->rank || !is_device(recv, count * type_bytes(type)) || !int_count(count)) {
    return ncclInvalidArgument;
  }
  MPI_Request r = MPI_REQUEST_NULL;
  if (MPI_Irecv(recv, static_cast<int>(count), mpi_type(type), peer, 0, comm->comm, &r) !=
      MPI_SUCCESS) {
    return ncclSystemError;
  }
  return pend(stream, r);
}

ncclResult_t ncclGroupStart() {
  return ncclSuccess;
}

ncclResult_t ncclGroupEnd() {
  return ncclSuccess;
}
