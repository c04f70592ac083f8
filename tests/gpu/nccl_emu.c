/* nccl_emu: comm_nccl_create for projcompd-emu, the daemon on the emulated CUDA backend,
 * which has no NCCL: device collectives go over MPI staged through host memory
 * (backend.comm: mpi), and asking for NCCL fails saying so. */
#include "comm_nccl.h"

comm *comm_nccl_create(comm *mpi, int device, pc_err *e) {
    (void)mpi;
    pc_errorf(e, "comm_nccl: device %d: the emulated CUDA backend has no NCCL (use backend.comm: mpi)", device);
    return NULL;
}
