/* cuda_none: the CUDA backend and NCCL comm entry points when the build has no CUDA:
 * creation fails with a message saying so. */
#include <stdio.h>

#include "backend_cuda.h"
#include "comm_nccl.h"

backend *backend_cuda_create(int device, char *err, int errlen) {
    if (err && errlen > 0)
        snprintf(err, (size_t)errlen, "backend_cuda: device %d requested, but this build has no CUDA "
                                      "(rebuild with nvcc and the CUDA libraries, -Dcuda=enabled)", device);
    return NULL;
}

int backend_cuda_set_tf32(backend *be, int on) {
    (void)be;
    (void)on;
    return -1;
}

int backend_cuda_set_attention(backend *be, int bf16) {
    (void)be;
    (void)bf16;
    return -1;
}

int backend_cuda_use_cudnn(backend *be, char *err, int errlen) {
    (void)be;
    snprintf(err, (size_t)errlen, "this build has no CUDA");
    return -1;
}

int backend_cuda_cudnn_trial(backend *be, int on, char *err, int errlen) {
    (void)be;
    (void)on;
    snprintf(err, (size_t)errlen, "this build has no CUDA");
    return -1;
}

size_t backend_cuda_bf16_copies_bytes(backend *be) {
    (void)be;
    return 0;
}

size_t backend_cuda_attention_copies_bytes(backend *be) {
    (void)be;
    return 0;
}

comm *comm_nccl_create(comm *mpi, int device, pc_err *e) {
    (void)mpi;
    pc_errorf(e, "comm_nccl: device %d requested, but this build has no CUDA/NCCL (rebuild with -Dcuda=enabled)",
              device);
    return NULL;
}
