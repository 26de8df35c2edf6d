// NCCL for the CUDA emulator: the part of nccl.h that
// src/dist/nccl_communicator.cpp uses, with NCCL's names and values, over
// MPI, so that the NCCL communicator's own source runs in the tests (on the
// ranks of `mpirun -np 2`, or on one rank without MPI).
//  - A communicator of n > 1 ranks is an MPI communicator split from
//    MPI_COMM_WORLD by its id: every rank of the world must make its
//    communicator at the same time (as the data-parallel groups of a run
//    are), unlike NCCL's.
//  - Collectives start at once as MPI's non-blocking ones (the emulator's
//    kernels complete when launched, so their inputs are ready) and are
//    pending on the stream until MPI completes them: an event recorded
//    after them completes with them. ncclAvg is MPI's sum divided by n.
//  - Buffers must be emulated device memory, as NCCL's must be GPU memory.
//  - Point-to-point messages are MPI's (in order between two ranks); a
//    group start and end do nothing, since nothing blocks.
//  - A non-blocking communicator (ncclConfig_t::blocking = 0) behaves as
//    NCCL's: ncclCommInitRankConfig returns ncclInProgress at once, and the
//    start-up completes, seen through ncclCommGetAsyncError, once every rank
//    of the world has started its own; the first operation on it, and
//    ncclCommFinalize, also return ncclInProgress and settle after two
//    polls (as NCCL's connection set-up does), so a caller that issued
//    another call before settling gets ncclInvalidUsage.
//  - ncclCommAbort frees the communicator, as NCCL's does (a sanitizer
//    build catches a caller that uses it after).
#pragma once

#include <chrono>
#include <climits>
#include <cstddef>
#include <memory>
#include <string>

#include "dist/communicator.h"
#include "kernels/cuda_emulator/cuda_emulator.h"

enum ncclResult_t {
  ncclSuccess = 0,
  ncclUnhandledCudaError = 1,
  ncclSystemError = 2,
  ncclInternalError = 3,
  ncclInvalidArgument = 4,
  ncclInvalidUsage = 5,
  ncclRemoteError = 6,
  ncclInProgress = 7,
};
enum ncclDataType_t { ncclUint8 = 1, ncclFloat32 = 7, ncclFloat64 = 8 };
enum ncclRedOp_t { ncclSum = 0, ncclProd = 1, ncclMax = 2, ncclMin = 3, ncclAvg = 4 };
struct ncclComm;
using ncclComm_t = ncclComm*;
struct ncclUniqueId {
  char internal[128];
};
// The leading fields of NCCL's, which are all the emulator reads.
struct ncclConfig_t {
  std::size_t size;
  unsigned int magic;
  unsigned int version;
  int blocking;
};
#define NCCL_CONFIG_UNDEF_INT INT_MIN
#define NCCL_CONFIG_INITIALIZER \
  { sizeof(ncclConfig_t), 0xcafebeef, 0, NCCL_CONFIG_UNDEF_INT }

ncclResult_t ncclGetVersion(int* version);
const char* ncclGetErrorString(ncclResult_t result);
ncclResult_t ncclGetUniqueId(ncclUniqueId* id);
ncclResult_t ncclCommInitRank(ncclComm_t* comm, int nranks, ncclUniqueId id, int rank);
ncclResult_t ncclCommInitRankConfig(ncclComm_t* comm, int nranks, ncclUniqueId id, int rank,
                                    ncclConfig_t* config);
ncclResult_t ncclCommFinalize(ncclComm_t comm);
ncclResult_t ncclCommDestroy(ncclComm_t comm);
ncclResult_t ncclCommAbort(ncclComm_t comm);
ncclResult_t ncclCommGetAsyncError(ncclComm_t comm, ncclResult_t* error);
ncclResult_t ncclAllReduce(const void* send, void* recv, std::size_t count, ncclDataType_t type,
                           ncclRedOp_t op, ncclComm_t comm, cudaStream_t stream);
ncclResult_t ncclReduceScatter(const void* send, void* recv, std::size_t recvcount,
                               ncclDataType_t type, ncclRedOp_t op, ncclComm_t comm,
                               cudaStream_t stream);
ncclResult_t ncclAllGather(const void* send, void* recv, std::size_t sendcount, ncclDataType_t type,
                           ncclComm_t comm, cudaStream_t stream);
ncclResult_t ncclBroadcast(const void* send, void* recv, std::size_t count, ncclDataType_t type,
                           int root, ncclComm_t comm, cudaStream_t stream);
ncclResult_t ncclSend(const void* send, std::size_t count, ncclDataType_t type, int peer,
                      ncclComm_t comm, cudaStream_t stream);
ncclResult_t ncclRecv(void* recv, std::size_t count, ncclDataType_t type, int peer, ncclComm_t comm,
                      cudaStream_t stream);
ncclResult_t ncclGroupStart();
ncclResult_t ncclGroupEnd();

namespace borealis::emulated {

// dist/nccl_communicator.h's functions over the emulated NCCL.
std::string nccl_unavailable_reason();
std::string nccl_summary();
std::unique_ptr<Communicator> make_nccl_communicator(Communicator& host, int device);

// The next start-up of a communicator on this rank first sleeps `stall`
// inside ncclCommInitRank(Config), answering nothing, as an NCCL start-up
// whose bootstrap cannot reach the other ranks does (for the time-out
// tests).
void stall_next_nccl_start(std::chrono::milliseconds stall);

// The next call on this rank that goes in progress (an operation's set-up,
// a finalization) never settles: only ncclCommAbort ends it.
void hold_next_nccl_progress();

// What this rank's emulated NCCL has done since the program started.
struct NcclCounts {
  int nonblocking_starts = 0;  // ncclCommInitRankConfig with blocking = 0
  int finalized = 0;           // finalizations that settled
  int destroyed = 0;
  int aborted = 0;
};
NcclCounts nccl_counts();

}  // namespace borealis::emulated
