/* nccl_emu: NCCL over MPI on host memory, so that cuda/comm_nccl.c runs on every machine:
 * in projcompd-emu (the daemon on the emulated CUDA backend, whose device buffers are host
 * memory) and in test_nccl under mpirun (suite emu). Also the host-memory calls of
 * emu_c/cuda_runtime.h.
 *
 * A communicator is a duplicate of MPI_COMM_WORLD (ncclCommInitRankConfig is collective,
 * as NCCL's is; nranks and rank must be MPI's). Each collective is the matching blocking
 * MPI collective, put on the call's stream (emu_streams.cpp): it runs when that stream or
 * the device is synchronized, so that reading its result without waiting for it reads the
 * old contents, as on a GPU. Inside ncclGroupStart/End the calls are queued and put on
 * their streams, in order, at the outermost ncclGroupEnd, which every rank reaches with
 * the same queue, as NCCL requires; every rank synchronizes at the same points of the
 * program, so the MPI collectives meet.
 * A non-blocking communicator (config.blocking = 0) answers ncclInProgress from init and
 * from each enqueueing call, then reports ncclInProgress once more from
 * ncclCommGetAsyncError before ncclSuccess, so the caller's polling runs. In-place forms
 * follow NCCL: all_gather's send at recv + rank*count, reduce_scatter's recv at send +
 * rank*count. bf16 is moved, not reduced (MPI has no bf16 sum): a bf16 reduction fails
 * with ncclInvalidArgument. Counts above INT_MAX fail likewise (MPI's int counts). */
#include <limits.h>
#include <mpi.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuda_runtime.h"
#include "nccl.h"

/* ---------------------------------------------------------------- runtime: host memory */

cudaError_t cudaMalloc(void **p, size_t bytes) {
    *p = malloc(bytes ? bytes : 1);
    return *p ? cudaSuccess : cudaErrorMemoryAllocation;
}

cudaError_t cudaFree(void *p) {
    free(p);
    return cudaSuccess;
}

cudaError_t cudaMemset(void *p, int value, size_t bytes) {
    memset(p, value, bytes);
    return cudaSuccess;
}

cudaError_t cudaMemcpy(void *dst, const void *src, size_t bytes, cudaMemcpyKind kind) {
    (void)kind;
    memmove(dst, src, bytes);
    return cudaSuccess;
}

/* ---------------------------------------------------------------- NCCL */

struct ncclComm {
    MPI_Comm mpi;
    int rank, size, blocking;
    int aborted;    /* ncclCommAbort: its collectives still on a stream are dropped */
    int polls;      /* ncclInProgress answers left before ncclSuccess */
    char last[160]; /* ncclGetLastError */
};

typedef enum { OP_ALL_REDUCE, OP_REDUCE, OP_BROADCAST, OP_ALL_GATHER, OP_REDUCE_SCATTER } op_kind;

typedef struct emu_op {
    op_kind kind;
    const void *send;
    void *recv;
    size_t count;
    ncclDataType_t type;
    ncclRedOp_t red;
    int root;
    ncclComm_t comm;
    cudaStream_t stream;
} emu_op;

static emu_op *queue;
static int n_queue, cap_queue, group_depth;

static size_t type_size(ncclDataType_t t) {
    switch (t) {
    case ncclInt8:
    case ncclUint8: return 1;
    case ncclFloat16:
    case ncclBfloat16: return 2;
    case ncclInt32:
    case ncclUint32:
    case ncclFloat32: return 4;
    case ncclInt64:
    case ncclUint64:
    case ncclFloat64: return 8;
    }
    return 0;
}

/* MPI type for moving (reduce = 0) or reducing t; MPI_DATATYPE_NULL when MPI cannot */
static MPI_Datatype mpi_type(ncclDataType_t t, int reduce) {
    switch (t) {
    case ncclInt8: return MPI_INT8_T;
    case ncclUint8: return MPI_UINT8_T;
    case ncclInt32: return MPI_INT32_T;
    case ncclUint32: return MPI_UINT32_T;
    case ncclInt64: return MPI_INT64_T;
    case ncclUint64: return MPI_UINT64_T;
    case ncclFloat32: return MPI_FLOAT;
    case ncclFloat64: return MPI_DOUBLE;
    case ncclFloat16:
    case ncclBfloat16: return reduce ? MPI_DATATYPE_NULL : MPI_UINT16_T;
    }
    return MPI_DATATYPE_NULL;
}

static MPI_Op mpi_op(ncclRedOp_t op) {
    switch (op) {
    case ncclSum: return MPI_SUM;
    case ncclProd: return MPI_PROD;
    case ncclMax: return MPI_MAX;
    case ncclMin: return MPI_MIN;
    }
    return MPI_OP_NULL;
}

static ncclResult_t fail(ncclComm_t c, ncclResult_t r, const char *why) {
    snprintf(c->last, sizeof c->last, "%s", why);
    return r;
}

/* A copy of n bytes of src, when an MPI call must not read what it writes. */
static void *scratch_copy(const void *src, size_t n) {
    void *p = malloc(n ? n : 1);
    if (p) memcpy(p, src, n);
    return p;
}

static int is_reduction(const emu_op *o) {
    return o->kind == OP_ALL_REDUCE || o->kind == OP_REDUCE || o->kind == OP_REDUCE_SCATTER;
}

/* What NCCL refuses at the call (or the emulator cannot do). */
static ncclResult_t check_op(const emu_op *o) {
    if (mpi_type(o->type, is_reduction(o)) == MPI_DATATYPE_NULL)
        return fail(o->comm, ncclInvalidArgument, "the emulator cannot reduce this type");
    if (o->count > INT_MAX) return fail(o->comm, ncclInvalidArgument, "count above INT_MAX");
    return ncclSuccess;
}

/* The collective itself (checked by check_op); an MPI failure is fatal (MPI's default). */
static void run_op(const emu_op *o) {
    ncclComm_t c = o->comm;
    MPI_Datatype t = mpi_type(o->type, is_reduction(o));
    int n = (int)o->count, rc = MPI_SUCCESS;
    size_t es = type_size(o->type), bytes = o->count * es;
    MPI_Op op = mpi_op(o->red);
    switch (o->kind) {
    case OP_ALL_REDUCE:
        rc = MPI_Allreduce(o->send == o->recv ? MPI_IN_PLACE : o->send, o->recv, n, t, op, c->mpi);
        break;
    case OP_REDUCE:
        if (c->rank == o->root)
            rc = MPI_Reduce(o->send == o->recv ? MPI_IN_PLACE : o->send, o->recv, n, t, op, o->root, c->mpi);
        else
            rc = MPI_Reduce(o->send, NULL, n, t, op, o->root, c->mpi);
        break;
    case OP_BROADCAST:
        if (c->rank == o->root && o->send != o->recv) memmove(o->recv, o->send, bytes);
        rc = MPI_Bcast(o->recv, n, t, o->root, c->mpi);
        break;
    case OP_ALL_GATHER:
        if ((const char *)o->send == (char *)o->recv + (size_t)c->rank * bytes)
            rc = MPI_Allgather(MPI_IN_PLACE, 0, t, o->recv, n, t, c->mpi);
        else
            rc = MPI_Allgather(o->send, n, t, o->recv, n, t, c->mpi);
        break;
    case OP_REDUCE_SCATTER: {
        void *in = scratch_copy(o->send, bytes * (size_t)c->size); /* the in-place recv lies inside send */
        if (!in) {
            fprintf(stderr, "nccl_emu: out of host memory\n");
            abort();
        }
        rc = MPI_Reduce_scatter_block(in, o->recv, n, t, op, c->mpi);
        free(in);
        break;
    }
    }
    if (rc != MPI_SUCCESS) MPI_Abort(MPI_COMM_WORLD, 1);
}

static void run_deferred(void *op) {
    if (!((emu_op *)op)->comm->aborted) run_op(op);
    free(op);
}

/* Put o on its stream: it runs when the stream (or the device) is synchronized, as a
 * collective on a GPU completes some time after the call (emu_streams.cpp). */
static ncclResult_t put_op(const emu_op *o) {
    emu_op *copy = malloc(sizeof *copy);
    if (!copy) return fail(o->comm, ncclSystemError, "out of host memory");
    *copy = *o;
    emu_stream_put(o->stream, run_deferred, copy);
    return ncclSuccess;
}

/* Work accepted: ncclInProgress on a non-blocking communicator (polled once more). */
static ncclResult_t accepted(ncclComm_t c) {
    if (c->blocking) return ncclSuccess;
    c->polls = 1;
    return ncclInProgress;
}

static ncclResult_t enqueue(emu_op o) {
    if (!o.comm) return ncclInvalidArgument;
    if (o.comm->polls > 0) return fail(o.comm, ncclInvalidUsage, "a call before the previous one was enqueued");
    ncclResult_t r = check_op(&o);
    if (r != ncclSuccess) return r;
    if (group_depth == 0) {
        r = put_op(&o);
        return r == ncclSuccess ? accepted(o.comm) : r;
    }
    if (n_queue == cap_queue) {
        cap_queue = cap_queue ? 2 * cap_queue : 64;
        queue = realloc(queue, (size_t)cap_queue * sizeof *queue);
        if (!queue) return fail(o.comm, ncclSystemError, "out of host memory");
    }
    queue[n_queue++] = o;
    return ncclSuccess;
}

ncclResult_t ncclGroupStart(void) {
    group_depth++;
    return ncclSuccess;
}

ncclResult_t ncclGroupEnd(void) {
    if (group_depth == 0) return ncclInvalidUsage;
    if (--group_depth > 0) return ncclSuccess;
    ncclResult_t r = ncclSuccess;
    for (int i = 0; i < n_queue && r == ncclSuccess; i++) r = put_op(&queue[i]);
    ncclComm_t c = n_queue > 0 ? queue[0].comm : NULL;
    n_queue = 0;
    return r == ncclSuccess && c ? accepted(c) : r;
}

ncclResult_t ncclGetUniqueId(ncclUniqueId *id) {
    memset(id, 0, sizeof *id);
    snprintf(id->internal, sizeof id->internal, "nccl-emu");
    return ncclSuccess;
}

ncclResult_t ncclCommInitRankConfig(ncclComm_t *comm, int nranks, ncclUniqueId id, int rank, ncclConfig_t *config) {
    int size = 0, me = -1;
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    MPI_Comm_rank(MPI_COMM_WORLD, &me);
    if (nranks != size || rank != me || strcmp(id.internal, "nccl-emu") != 0) return ncclInvalidArgument;
    ncclComm_t c = calloc(1, sizeof *c);
    if (!c) return ncclSystemError;
    if (MPI_Comm_dup(MPI_COMM_WORLD, &c->mpi) != MPI_SUCCESS) {
        free(c);
        return ncclSystemError;
    }
    c->rank = rank;
    c->size = nranks;
    c->blocking = !config || config->blocking;
    *comm = c;
    return accepted(c);
}

ncclResult_t ncclCommGetAsyncError(ncclComm_t comm, ncclResult_t *async) {
    if (!comm) return ncclInvalidArgument;
    *async = comm->polls > 0 ? ncclInProgress : ncclSuccess;
    if (comm->polls > 0) comm->polls--;
    return ncclSuccess;
}

const char *ncclGetLastError(ncclComm_t comm) { return comm ? comm->last : ""; }

const char *ncclGetErrorString(ncclResult_t r) {
    switch (r) {
    case ncclSuccess: return "no error";
    case ncclUnhandledCudaError: return "unhandled cuda error";
    case ncclSystemError: return "unhandled system error";
    case ncclInternalError: return "internal error";
    case ncclInvalidArgument: return "invalid argument";
    case ncclInvalidUsage: return "invalid usage";
    case ncclRemoteError: return "remote process exited or there was a network error";
    case ncclInProgress: return "NCCL operation in progress";
    }
    return "unknown result code";
}

static void comm_free(ncclComm_t comm) {
    MPI_Comm_free(&comm->mpi);
    free(comm);
}

/* The communicator's collectives still on a stream never run: it is kept (not freed) for
 * them to see that it was aborted. */
ncclResult_t ncclCommAbort(ncclComm_t comm) {
    if (comm && !comm->aborted) {
        comm->aborted = 1;
        MPI_Comm_free(&comm->mpi);
    }
    return ncclSuccess;
}

ncclResult_t ncclCommFinalize(ncclComm_t comm) { return comm ? accepted(comm) : ncclInvalidArgument; }

ncclResult_t ncclCommDestroy(ncclComm_t comm) {
    if (comm) comm_free(comm);
    return ncclSuccess;
}

ncclResult_t ncclAllReduce(const void *send, void *recv, size_t count, ncclDataType_t t, ncclRedOp_t op,
                           ncclComm_t comm, cudaStream_t s) {
    return enqueue((emu_op){OP_ALL_REDUCE, send, recv, count, t, op, 0, comm, s});
}

ncclResult_t ncclReduce(const void *send, void *recv, size_t count, ncclDataType_t t, ncclRedOp_t op, int root,
                        ncclComm_t comm, cudaStream_t s) {
    return enqueue((emu_op){OP_REDUCE, send, recv, count, t, op, root, comm, s});
}

ncclResult_t ncclBroadcast(const void *send, void *recv, size_t count, ncclDataType_t t, int root, ncclComm_t comm,
                           cudaStream_t s) {
    return enqueue((emu_op){OP_BROADCAST, send, recv, count, t, ncclSum, root, comm, s});
}

ncclResult_t ncclAllGather(const void *send, void *recv, size_t count, ncclDataType_t t, ncclComm_t comm,
                           cudaStream_t s) {
    return enqueue((emu_op){OP_ALL_GATHER, send, recv, count, t, ncclSum, 0, comm, s});
}

ncclResult_t ncclReduceScatter(const void *send, void *recv, size_t count, ncclDataType_t t, ncclRedOp_t op,
                               ncclComm_t comm, cudaStream_t s) {
    return enqueue((emu_op){OP_REDUCE_SCATTER, send, recv, count, t, op, 0, comm, s});
}
