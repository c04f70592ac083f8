/* comm_nccl: the comm interface (comm.h) over NCCL for device buffers.
 *
 * Setup: every rank selects its device, rank 0 creates the unique id, the id travels
 * over the MPI comm given to comm_nccl_create, and the ranks agree (an MPI all-reduce
 * of a status flag) that all of them are ready before the collective
 * ncclCommInitRankConfig, so that one rank's failure does not leave the others waiting.
 * The communicator is non-blocking: NCCL's host-side work (initialisation, the
 * connections set up on first use, enqueueing) returns ncclInProgress and is polled, so
 * the watchdog covers it too.
 * Each collective waits for prior device work, runs on the comm's stream and
 * synchronises it before returning, except group_start: its groups are enqueued and left
 * running while the caller goes on (the next layers' forward or backward), until `wait`
 * or the next collective, which waits for them under the watchdog first.
 * all_gatherv is a group of one ncclBroadcast per rank; broadcast_group and reduce_group
 * are groups of one ncclBroadcast / ncclReduce (in place) per piece.
 *
 * Watchdog: the wait polls NCCL's state, then the stream and NCCL's asynchronous error;
 * when a collective has not finished after timeout_s seconds (a rank died or hangs), or
 * NCCL reports any error, the communicator is aborted (ncclCommAbort) so that no kernel
 * keeps spinning or writes buffers later, and the call fails naming the rank and
 * operation (and, after a timeout, the ranks that did not answer a roll call: rollcall.h); later
 * calls fail at once. Initialisation is bounded by the MPI comm's
 * timeout_s, finalisation at exit by timeout_s (60 s when unset). */
#include "comm_nccl.h"

#include <cuda_runtime.h>
#include <nccl.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "rollcall.h"

/* Context of one collective, for messages. */
typedef struct ncall {
    comm *c;
    const char *op;
    comm_dtype t;
    size_t count;
    ncclDataType_t type;
    double t0;     /* when the call began: the watchdog's start */
    long long seq; /* its number, alike on every rank (for the roll call) */
} ncall;

typedef struct nccl_impl {
    ncclComm_t nc;
    cudaStream_t stream;
    int device;
    int *barrier_buf; /* (1) device int for the barrier's all-reduce */
    int aborted;      /* the watchdog aborted the communicator */
    int started;      /* groups started (nc_group_start) and not waited for */
    ncall started_k;  /* what they were, for messages */
    rollcall *roll;   /* who did not answer, after a collective timed out */
    long long seq;    /* collectives begun */
} nccl_impl;

static nccl_impl *nimpl(comm *c) { return c->impl; }

static int nccl_type(comm_dtype t, ncclDataType_t *out) {
    switch (t) {
    case COMM_F32: *out = ncclFloat32; return 0;
    case COMM_F64: *out = ncclFloat64; return 0;
    case COMM_I32: *out = ncclInt32; return 0;
    case COMM_I64: *out = ncclInt64; return 0;
    case COMM_U8: *out = ncclUint8; return 0;
    case COMM_BF16: *out = ncclBfloat16; return 0; /* moved only: the comm_* wrappers refuse reductions */
    }
    return -1;
}

static int nccl_redop(comm_op op, ncclRedOp_t *out) {
    switch (op) {
    case COMM_SUM: *out = ncclSum; return 0;
    case COMM_MAX: *out = ncclMax; return 0;
    case COMM_MIN: *out = ncclMin; return 0;
    }
    return -1;
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int stream_done(const ncall *k, double t0, pc_err *e);

static int ncall_begin(ncall *k, comm *c, const char *op, comm_dtype t, size_t count, pc_err *e) {
    k->c = c;
    k->op = op;
    k->t = t;
    k->count = count;
    k->t0 = now_s();
    k->seq = ++nimpl(c)->seq;
    if (nccl_type(t, &k->type))
        return pc_errorf(e, "rank %d: nccl %s: unknown dtype %d", c->rank, op, (int)t);
    if (nimpl(c)->aborted)
        return pc_errorf(e, "rank %d: nccl %s(%s, %zu elems): the communicator was aborted by an earlier failure",
                         c->rank, op, comm_dtype_name(t), count);
    /* started groups first, under the watchdog: the device-wide wait below has none */
    if (nimpl(c)->started) {
        if (stream_done(&nimpl(c)->started_k, now_s(), e)) return -1;
        nimpl(c)->started = 0;
    }
    /* buffers may have been written on any stream of this device: wait for them */
    cudaError_t ce = cudaSetDevice(nimpl(c)->device);
    if (ce == cudaSuccess) ce = cudaDeviceSynchronize();
    if (ce != cudaSuccess)
        return pc_errorf(e, "rank %d: nccl %s(%s, %zu elems): waiting for prior device work failed: %s", c->rank, op,
                         comm_dtype_name(t), count, cudaGetErrorString(ce));
    return 0;
}

static void abort_comm(nccl_impl *n) {
    ncclCommAbort(n->nc);
    n->aborted = 1;
}

/* NCCL reported r for `what`: e names both (and NCCL's last message), the communicator
 * is aborted (enqueued work may still be writing the buffers); returns -1. */
static int failed(nccl_impl *n, const char *what, ncclResult_t r, pc_err *e) {
    const char *last = ncclGetLastError(n->nc);
    pc_errorf(e, "%s failed: %s%s%s", what, ncclGetErrorString(r), last && *last ? ": " : "", last ? last : "");
    abort_comm(n);
    return -1;
}

/* The watchdog's end: the communicator aborted, e naming `what` and, for a collective k
 * (NULL: set-up or finalisation), the ranks that did not answer a roll call (rollcall.h). */
static int timed_out(nccl_impl *n, const ncall *k, const char *what, double timeout, pc_err *e) {
    abort_comm(n);
    pc_errorf(e, "%s did not finish in %.0f s (run.collective_timeout): a rank died or hangs; the communicator was "
                 "aborted",
              what, timeout);
    if (k) rollcall_run(n->roll, k->seq, k->op, rollcall_grace(timeout), e);
    return -1;
}

/* The communicator is non-blocking: an NCCL call may return ncclInProgress while its
 * host-side work (connection set-up, enqueueing) goes on. Poll its state until that ends,
 * under the watchdog (timeout from t0; 0: none): 0 when ready; else -1, the communicator
 * aborted and e naming `what` and why. k: the collective waited for, or NULL. */
static int wait_ready(nccl_impl *n, const ncall *k, double timeout, double t0, const char *what, pc_err *e) {
    struct timespec nap = {0, 20000}; /* 20 us between polls */
    for (;;) {
        ncclResult_t st = ncclInProgress;
        ncclResult_t q = ncclCommGetAsyncError(n->nc, &st);
        if (q != ncclSuccess) st = q;
        if (st == ncclSuccess) return 0;
        if (st != ncclInProgress) return failed(n, what, st, e);
        if (timeout > 0 && now_s() - t0 > timeout) return timed_out(n, k, what, timeout, e);
        nanosleep(&nap, NULL);
    }
}

/* "rank R: nccl OP(dtype, N elems)", for messages. */
static void ncall_what(const ncall *k, char *buf, size_t len) {
    snprintf(buf, len, "rank %d: nccl %s(%s, %zu elems)", k->c->rank, k->op, comm_dtype_name(k->t), k->count);
}

/* After NCCL call(s) of k that returned r: wait until they are enqueued, under the
 * watchdog (from ncall_begin). Any failure aborts the communicator (see failed), and
 * later calls fail. */
static int ncall_enqueued(const ncall *k, ncclResult_t r, pc_err *e) {
    nccl_impl *n = nimpl(k->c);
    char what[160];
    ncall_what(k, what, sizeof what);
    if (r != ncclSuccess && r != ncclInProgress) return failed(n, what, r, e);
    return wait_ready(n, k, k->c->timeout_s, k->t0, what, e);
}

/* Wait for the comm's stream, polling it and NCCL's asynchronous error under the
 * watchdog (timeout from t0). */
static int stream_done(const ncall *k, double t0, pc_err *e) {
    nccl_impl *n = nimpl(k->c);
    double timeout = k->c->timeout_s;
    char what[160];
    ncall_what(k, what, sizeof what);
    struct timespec nap = {0, 20000}; /* 20 us between polls */
    for (;;) {
        cudaError_t ce = cudaStreamQuery(n->stream);
        if (ce == cudaSuccess) return 0;
        if (ce != cudaErrorNotReady) {
            pc_errorf(e, "%s failed on the device: %s", what, cudaGetErrorString(ce));
            abort_comm(n);
            return -1;
        }
        ncclResult_t async = ncclSuccess;
        if (ncclCommGetAsyncError(n->nc, &async) == ncclSuccess && async != ncclSuccess && async != ncclInProgress)
            return failed(n, what, async, e);
        if (timeout > 0 && now_s() - t0 > timeout) return timed_out(n, k, what, timeout, e);
        nanosleep(&nap, NULL);
    }
}

/* Both, for a call that completes before it returns. */
static int ncall_finish(const ncall *k, ncclResult_t r, pc_err *e) {
    return ncall_enqueued(k, r, e) || stream_done(k, k->t0, e) ? -1 : 0;
}

static int check_op(const ncall *k, comm_op op, ncclRedOp_t *out, pc_err *e) {
    if (nccl_redop(op, out)) return pc_errorf(e, "rank %d: nccl %s: unknown reduction %d", k->c->rank, k->op, (int)op);
    return 0;
}

static int check_root(const ncall *k, int root, pc_err *e) {
    if (root < 0 || root >= k->c->size)
        return pc_errorf(e, "rank %d: nccl %s: root %d is not a rank", k->c->rank, k->op, root);
    return 0;
}

static int nc_all_reduce(comm *c, const void *send, void *recv, size_t count, comm_dtype t, comm_op op, pc_err *e) {
    ncall k;
    ncclRedOp_t rop = ncclSum;
    if (ncall_begin(&k, c, "all_reduce", t, count, e) || check_op(&k, op, &rop, e)) return -1;
    return ncall_finish(&k, ncclAllReduce(send, recv, count, k.type, rop, nimpl(c)->nc, nimpl(c)->stream), e);
}

static int nc_reduce(comm *c, const void *send, void *recv, size_t count, comm_dtype t, comm_op op, int root,
                     pc_err *e) {
    ncall k;
    ncclRedOp_t rop = ncclSum;
    if (ncall_begin(&k, c, "reduce", t, count, e) || check_op(&k, op, &rop, e) || check_root(&k, root, e)) return -1;
    /* recv matters on the root only; elsewhere it may be NULL, as with MPI */
    void *rb = c->rank != root && !recv ? (void *)send : recv;
    return ncall_finish(&k, ncclReduce(send, rb, count, k.type, rop, root, nimpl(c)->nc, nimpl(c)->stream), e);
}

static int nc_broadcast(comm *c, void *buf, size_t count, comm_dtype t, int root, pc_err *e) {
    ncall k;
    if (ncall_begin(&k, c, "broadcast", t, count, e) || check_root(&k, root, e)) return -1;
    return ncall_finish(&k, ncclBroadcast(buf, buf, count, k.type, root, nimpl(c)->nc, nimpl(c)->stream), e);
}

static int nc_all_gather(comm *c, const void *send, void *recv, size_t count, comm_dtype t, pc_err *e) {
    ncall k;
    if (ncall_begin(&k, c, "all_gather", t, count, e)) return -1;
    return ncall_finish(&k, ncclAllGather(send, recv, count, k.type, nimpl(c)->nc, nimpl(c)->stream), e);
}

static int nc_all_gatherv(comm *c, const void *send, size_t send_count, void *recv, const size_t *counts,
                          const size_t *displs, comm_dtype t, pc_err *e) {
    size_t total = 0;
    for (int q = 0; q < c->size; q++) total += counts[q];
    ncall k;
    if (ncall_begin(&k, c, "all_gatherv", t, total, e)) return -1;
    if (send_count != counts[c->rank])
        return pc_errorf(e, "rank %d: nccl all_gatherv(%s, %zu elems): send count %zu differs from counts[%d] = %zu",
                         c->rank, comm_dtype_name(t), total, send_count, c->rank, counts[c->rank]);
    size_t es = comm_dtype_size(t);
    nccl_impl *n = nimpl(c);
    ncclResult_t r = ncclGroupStart();
    for (int q = 0; q < c->size && r == ncclSuccess; q++) {
        if (counts[q] == 0) continue; /* the same on every rank: counts are shared */
        char *dst = (char *)recv + displs[q] * es;
        const void *src = q == c->rank ? send : dst;
        r = ncclBroadcast(src, dst, counts[q], k.type, q, n->nc, n->stream);
    }
    ncclResult_t r_end = ncclGroupEnd();
    return ncall_finish(&k, r != ncclSuccess ? r : r_end, e);
}

static int nc_reduce_scatter(comm *c, const void *send, void *recv, size_t count, comm_dtype t, comm_op op,
                             pc_err *e) {
    ncall k;
    ncclRedOp_t rop = ncclSum;
    if (ncall_begin(&k, c, "reduce_scatter", t, count, e) || check_op(&k, op, &rop, e)) return -1;
    return ncall_finish(&k, ncclReduceScatter(send, recv, count, k.type, rop, nimpl(c)->nc, nimpl(c)->stream), e);
}

/* Grouped broadcasts (reduce = 0) or in-place reduces, NCCL_GROUP_PIECES per NCCL group
 * (the groups run in order on the comm's stream), enqueued; k describes them. */
#define NCCL_GROUP_PIECES 128
static int nc_group_enqueue(ncall *k, comm *c, const char *op, const comm_piece *p, int n, comm_dtype t, int reduce,
                            comm_op cop, pc_err *e) {
    size_t total = 0;
    for (int i = 0; i < n; i++) total += p[i].count;
    ncclRedOp_t rop = ncclSum;
    if (ncall_begin(k, c, op, t, total, e) || (reduce && check_op(k, cop, &rop, e))) return -1;
    for (int i = 0; i < n; i++)
        if (check_root(k, p[i].root, e)) return -1;
    nccl_impl *nc = nimpl(c);
    ncclResult_t r = ncclSuccess;
    for (int i0 = 0; i0 < n && (r == ncclSuccess || r == ncclInProgress); i0 += NCCL_GROUP_PIECES) {
        if (r == ncclInProgress) { /* the previous group is still being enqueued */
            char what[160];
            ncall_what(k, what, sizeof what);
            if (wait_ready(nc, k, c->timeout_s, k->t0, what, e)) return -1;
        }
        r = ncclGroupStart();
        for (int i = i0; i < n && i < i0 + NCCL_GROUP_PIECES && r == ncclSuccess; i++) {
            if (p[i].count == 0) continue; /* the same on every rank: pieces are shared */
            r = reduce ? ncclReduce(p[i].buf, p[i].buf, p[i].count, k->type, rop, p[i].root, nc->nc, nc->stream)
                       : ncclBroadcast(p[i].buf, p[i].buf, p[i].count, k->type, p[i].root, nc->nc, nc->stream);
        }
        ncclResult_t r_end = ncclGroupEnd();
        if (r == ncclSuccess) r = r_end;
    }
    return ncall_enqueued(k, r, e);
}

static int nc_broadcast_group(comm *c, const comm_piece *p, int n, comm_dtype t, pc_err *e) {
    ncall k;
    return nc_group_enqueue(&k, c, "broadcast_group", p, n, t, 0, COMM_SUM, e) || stream_done(&k, k.t0, e) ? -1 : 0;
}

static int nc_reduce_group(comm *c, const comm_piece *p, int n, comm_dtype t, comm_op op, pc_err *e) {
    ncall k;
    return nc_group_enqueue(&k, c, "reduce_group", p, n, t, 1, op, e) || stream_done(&k, k.t0, e) ? -1 : 0;
}

/* Enqueued on the comm's stream and left running while the compute stream goes on; the
 * next collective's ncall_begin, or nc_wait, waits for it. */
static int nc_group_start(comm *c, const comm_piece *p, int n, comm_dtype t, int reduce, comm_op op, pc_err *e) {
    nccl_impl *nc = nimpl(c);
    ncall k;
    if (nc_group_enqueue(&k, c, reduce ? "reduce_group" : "broadcast_group", p, n, t, reduce, op, e)) return -1;
    nc->started_k = k; /* the earlier ones were waited for in ncall_begin */
    nc->started = 1;
    return 0;
}

static int nc_wait(comm *c, pc_err *e) {
    nccl_impl *nc = nimpl(c);
    if (!nc->started) return 0;
    nc->started = 0;
    return stream_done(&nc->started_k, now_s(), e);
}

static int nc_barrier(comm *c, pc_err *e) {
    ncall k;
    if (ncall_begin(&k, c, "barrier", COMM_I32, 1, e)) return -1;
    nccl_impl *n = nimpl(c);
    return ncall_finish(&k, ncclAllReduce(n->barrier_buf, n->barrier_buf, 1, ncclInt32, ncclSum, n->nc, n->stream),
                        e);
}

static void nc_destroy(comm *c) {
    nccl_impl *n = nimpl(c);
    cudaSetDevice(n->device);
    pc_err e = {{0}};
    if (!n->aborted && n->started) { /* a started group, never waited for: under the watchdog (a peer may be gone) */
        n->started = 0;
        stream_done(&n->started_k, now_s(), &e); /* a failure or timeout aborts the communicator */
    }
    if (!n->aborted) { /* an aborted communicator is already gone, and its stream may never finish */
        cudaStreamSynchronize(n->stream); /* every other call was waited for before it returned */
        ncclResult_t r = ncclCommFinalize(n->nc); /* non-blocking: flushes this rank's part */
        if ((r != ncclSuccess && r != ncclInProgress) ||
            wait_ready(n, NULL, c->timeout_s > 0 ? c->timeout_s : 60, now_s(), "nccl finalize", &e))
            abort_comm(n); /* a peer that is gone cannot finalize with us */
        if (!n->aborted) ncclCommDestroy(n->nc);
    }
    cudaStreamDestroy(n->stream);
    cudaFree(n->barrier_buf);
    rollcall_destroy(n->roll);
    free(n);
    free(c);
}

static const comm_ops nccl_ops = {
    .name = "nccl",
    .all_reduce = nc_all_reduce,
    .reduce = nc_reduce,
    .broadcast = nc_broadcast,
    .all_gather = nc_all_gather,
    .all_gatherv = nc_all_gatherv,
    .reduce_scatter = nc_reduce_scatter,
    .broadcast_group = nc_broadcast_group,
    .reduce_group = nc_reduce_group,
    .group_start = nc_group_start,
    .wait = nc_wait,
    .barrier = nc_barrier,
    .destroy = nc_destroy,
};

/* What rank 0 sends: whether it could create the id, and the id. */
typedef struct nccl_hello {
    int32_t ok;
    ncclUniqueId id;
} nccl_hello;

comm *comm_nccl_create(comm *mpi, int device, pc_err *e) {
    int rank = mpi->rank, size = mpi->size;
    char why[256] = "";
    /* local readiness: device, stream, barrier buffer */
    nccl_impl *n = pc_calloc(1, sizeof *n);
    n->device = device;
    cudaError_t ce = cudaSetDevice(device);
    if (ce == cudaSuccess) ce = cudaStreamCreateWithFlags(&n->stream, cudaStreamNonBlocking);
    if (ce == cudaSuccess) ce = cudaMalloc((void **)&n->barrier_buf, sizeof(int));
    if (ce == cudaSuccess) ce = cudaMemset(n->barrier_buf, 0, sizeof(int));
    if (ce != cudaSuccess) snprintf(why, sizeof why, "CUDA device %d: %s", device, cudaGetErrorString(ce));

    nccl_hello hello;
    memset(&hello, 0, sizeof hello);
    if (rank == 0) {
        ncclResult_t r = ncclGetUniqueId(&hello.id);
        hello.ok = r == ncclSuccess;
        if (r != ncclSuccess && !why[0]) snprintf(why, sizeof why, "ncclGetUniqueId: %s", ncclGetErrorString(r));
    }
    if (comm_broadcast(mpi, &hello, sizeof hello, COMM_U8, 0, e)) goto fail_quiet;
    int32_t ok = why[0] == '\0' && hello.ok, all_ok = 0;
    if (comm_all_reduce(mpi, &ok, &all_ok, 1, COMM_I32, COMM_MIN, e)) goto fail_quiet;
    if (!all_ok) {
        if (why[0])
            pc_errorf(e, "rank %d: nccl create on device %d failed: %s", rank, device, why);
        else
            pc_errorf(e, "rank %d: nccl create on device %d: another rank failed to set up", rank, device);
        goto fail_quiet;
    }
    n->roll = rollcall_create(e); /* collective, like the id's broadcast */
    if (!n->roll) goto fail_quiet;
    /* non-blocking: initialisation (and later enqueueing) returns at once and is polled
     * under the watchdog, so that a dead peer cannot hang this rank inside NCCL */
    ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
    config.blocking = 0;
    ncclResult_t r = ncclCommInitRankConfig(&n->nc, size, hello.id, rank, &config);
    if (r != ncclSuccess && r != ncclInProgress) {
        pc_errorf(e, "rank %d: nccl create on device %d: ncclCommInitRankConfig(%d ranks) failed: %s", rank, device,
                  size, ncclGetErrorString(r));
        if (n->nc) ncclCommAbort(n->nc); /* what NCCL made of it before failing */
        goto fail_quiet;
    }
    char what[96];
    snprintf(what, sizeof what, "rank %d: nccl create on device %d (%d ranks)", rank, device, size);
    if (wait_ready(n, NULL, mpi->timeout_s, now_s(), what, e)) goto fail_quiet;
    comm *c = pc_calloc(1, sizeof *c);
    c->ops = &nccl_ops;
    c->rank = rank;
    c->size = size;
    c->timeout_s = 0;
    c->impl = n;
    return c;

fail_quiet:
    if (n->stream) cudaStreamDestroy(n->stream);
    cudaFree(n->barrier_buf);
    rollcall_destroy(n->roll);
    free(n);
    return NULL;
}
