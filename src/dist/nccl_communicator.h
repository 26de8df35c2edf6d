// Collectives between GPUs over NCCL (data parallelism on the CUDA backend).
//
// A NcclCommunicator is a Communicator whose buffers are device memory of
// one GPU, the CUDA backend's (kernels/cuda/cuda_backend.h): the trainer
// sums the gradients of data-parallel GPU ranks with it, while the host
// communicator it is made over (MPI) keeps carrying the host's numbers.
//  - Start-up: rank 0 of the host communicator makes the NCCL id and
//    broadcasts it over the host; then every rank joins on its GPU.
//  - Non-blocking (ncclConfig_t::blocking = 0): the start-up, the set-up
//    of an operation and the finalization return at once and are polled
//    under the time-out below, so a rank whose NCCL cannot reach the others
//    fails them all in time instead of holding them in NCCL for good.
//  - Ordering: the backend's ops run on the default stream; each collective
//    runs on a stream of the communicator's own, after the work queued on
//    the default stream before it started (an event), so the backward pass
//    goes on while earlier gradient buckets are summed. wait() returns once
//    the collective has finished on the GPU.
//  - Time-outs: a wait (for the start-up, an operation's set-up, or its
//    end) polls NCCL and answers the host's probes
//    (Communicator::wait_until), so a rank that stops answering makes the
//    others fail with the host's CommTimeout naming it; the NCCL
//    communicator is aborted first, which frees the GPU of its kernels. A
//    finalization that does not end within the time-out is aborted.
//  - Reductions are NCCL's own (ReduceAlgorithm::Native whatever is set):
//    NCCL keeps its summation order for a given number of ranks and
//    topology, so a run repeats bit for bit on the same machines.
//  - sendrecv is one NCCL group (a send and a receive at once); barrier is
//    an allreduce of one number.
// NCCL is loaded when the first communicator is made (libnccl.so.2, from
// the library path, else from where the build found it), so a binary built
// with it also runs where NCCL is missing, on one GPU.
//
// This header needs no CUDA headers. It exists in builds with the CUDA
// kernels (BOREALIS_HAVE_CUDA_KERNELS).
#pragma once

#include <memory>
#include <string>

#include "dist/communicator.h"

namespace borealis {

// Why NCCL cannot be used, or "" when it can.
std::string nccl_unavailable_reason();
// "NCCL 2.28.9 (libnccl.so.2)": the version and the file loaded, or why
// NCCL cannot be used (for `borealis doctor`).
std::string nccl_summary();

// A communicator over the ranks of `host`, which bootstraps it and must
// outlive it, on GPU `device` (made current). Collective over `host`; its
// time-out is the host's at the start. Throws Error when NCCL cannot be
// loaded (it needs NCCL 2.14 or later) or a rank cannot join (NCCL's
// message, such as two ranks on one GPU), CommTimeout when the start-up
// does not end within the time-out.
std::unique_ptr<Communicator> make_nccl_communicator(Communicator& host, int device);

}  // namespace borealis
