/* comm_nccl: the comm interface (common/comm.h) over NCCL, for device buffers.
 *
 * Rank 0 creates the NCCL unique id and broadcasts it over an existing MPI comm, whose
 * rank and size the NCCL comm takes. Every collective first waits for all earlier work
 * on the device (so buffers written on any stream are complete), runs on the comm's
 * own stream, and synchronises that stream before returning: when a call returns 0 the
 * result is in place. Failures name the rank and the operation. With timeout_s > 0 a
 * collective that has not finished in time aborts the communicator (ncclCommAbort) and
 * fails; so does an asynchronous NCCL error. In a build without CUDA,
 * comm_nccl_create fails with a message. */
#ifndef PC_COMM_NCCL_H
#define PC_COMM_NCCL_H

#include "comm.h"
#include "util.h"

/* NCCL comm on CUDA device `device` with the ranks of `mpi` (which must stay alive for
 * the create call only). Collective over all ranks of mpi; NULL and e filled on failure. */
comm *comm_nccl_create(comm *mpi, int device, pc_err *e);

#endif
