/* comm: the wrappers that dispatch through comm_ops, and the MPI backend.
 *
 * The MPI backend works on a duplicate of MPI_COMM_WORLD with MPI_ERRORS_RETURN, so an
 * MPI failure comes back as a message "rank R: OP(dtype, N elems) failed: <MPI error>"
 * instead of killing the job. Counts above the backend's chunk limit (INT_MAX elements,
 * MPI's int counts) are sent in pieces. With a watchdog (timeout_s > 0) every collective
 * is started non-blocking and polled; past the timeout it fails naming the operation and
 * the ranks that did not answer a roll call (rollcall.h), and the communicator
 * refuses further work because its peers are out of step. */
#include "comm.h"

#include <limits.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "rollcall.h"

/* ---------------------------------------------------------------- wrappers */

/* 0 when dtype t can be reduced; else -1 and e naming the rank and op (count: the call's
 * element count, as the backends' messages give it). bf16 copies are only moved: a sum
 * in bf16 would round at every step, so reductions run in f32. */
static int check_reducible(const comm *c, const char *op, comm_dtype t, size_t count, pc_err *e) {
    if (t != COMM_BF16) return 0;
    return pc_errorf(e, "rank %d: %s(%s, %zu elems): bf16 is moved, never reduced (reduce in f32)", c->rank, op,
                     comm_dtype_name(t), count);
}

int comm_all_reduce(comm *c, const void *send, void *recv, size_t count, comm_dtype t, comm_op op, pc_err *e) {
    if (check_reducible(c, "all_reduce", t, count, e)) return -1;
    c->bytes += count * comm_dtype_size(t);
    return c->ops->all_reduce(c, send, recv, count, t, op, e);
}

int comm_reduce(comm *c, const void *send, void *recv, size_t count, comm_dtype t, comm_op op, int root, pc_err *e) {
    if (check_reducible(c, "reduce", t, count, e)) return -1;
    c->bytes += count * comm_dtype_size(t);
    return c->ops->reduce(c, send, recv, count, t, op, root, e);
}

int comm_broadcast(comm *c, void *buf, size_t count, comm_dtype t, int root, pc_err *e) {
    c->bytes += count * comm_dtype_size(t);
    return c->ops->broadcast(c, buf, count, t, root, e);
}

int comm_all_gather(comm *c, const void *send, void *recv, size_t count, comm_dtype t, pc_err *e) {
    c->bytes += count * (size_t)c->size * comm_dtype_size(t);
    return c->ops->all_gather(c, send, recv, count, t, e);
}

int comm_all_gatherv(comm *c, const void *send, size_t send_count, void *recv, const size_t *counts,
                     const size_t *displs, comm_dtype t, pc_err *e) {
    for (int r = 0; r < c->size; r++) c->bytes += counts[r] * comm_dtype_size(t);
    return c->ops->all_gatherv(c, send, send_count, recv, counts, displs, t, e);
}

int comm_reduce_scatter(comm *c, const void *send, void *recv, size_t count, comm_dtype t, comm_op op, pc_err *e) {
    if (check_reducible(c, "reduce_scatter", t, count, e)) return -1;
    c->bytes += count * (size_t)c->size * comm_dtype_size(t);
    return c->ops->reduce_scatter(c, send, recv, count, t, op, e);
}

static size_t pieces_count(const comm_piece *p, int n) {
    size_t count = 0;
    for (int i = 0; i < n; i++) count += p[i].count;
    return count;
}

int comm_broadcast_group(comm *c, const comm_piece *p, int n, comm_dtype t, pc_err *e) {
    c->bytes += pieces_count(p, n) * comm_dtype_size(t);
    return c->ops->broadcast_group(c, p, n, t, e);
}

int comm_reduce_group(comm *c, const comm_piece *p, int n, comm_dtype t, comm_op op, pc_err *e) {
    size_t count = pieces_count(p, n);
    if (check_reducible(c, "reduce_group", t, count, e)) return -1;
    c->bytes += count * comm_dtype_size(t);
    return c->ops->reduce_group(c, p, n, t, op, e);
}

int comm_broadcast_group_start(comm *c, const comm_piece *p, int n, comm_dtype t, pc_err *e) {
    if (!c->ops->group_start) return comm_broadcast_group(c, p, n, t, e);
    c->bytes += pieces_count(p, n) * comm_dtype_size(t);
    return c->ops->group_start(c, p, n, t, 0, COMM_SUM, e);
}

int comm_reduce_group_start(comm *c, const comm_piece *p, int n, comm_dtype t, comm_op op, pc_err *e) {
    if (!c->ops->group_start) return comm_reduce_group(c, p, n, t, op, e);
    size_t count = pieces_count(p, n);
    if (check_reducible(c, "reduce_group", t, count, e)) return -1;
    c->bytes += count * comm_dtype_size(t);
    return c->ops->group_start(c, p, n, t, 1, op, e);
}

int comm_wait(comm *c, pc_err *e) { return c->ops->wait ? c->ops->wait(c, e) : 0; }

int comm_barrier(comm *c, pc_err *e) { return c->ops->barrier(c, e); }

void comm_destroy(comm *c) {
    if (c) c->ops->destroy(c);
}

int comm_key_ranks(comm *c, const char *key, int *index, int *count, pc_err *e) {
    char mine[COMM_NODE_NAME_MAX] = {0};
    snprintf(mine, sizeof mine, "%s", key);
    char *all = pc_malloc((size_t)c->size * sizeof mine); /* (size, COMM_NODE_NAME_MAX) */
    if (comm_all_gather(c, mine, all, sizeof mine, COMM_U8, e) != 0) {
        free(all);
        return -1;
    }
    *index = *count = 0;
    for (int q = 0; q < c->size; q++)
        if (memcmp(all + (size_t)q * sizeof mine, mine, sizeof mine) == 0) {
            *index += q < c->rank;
            (*count)++;
        }
    free(all);
    return 0;
}

int comm_node_ranks(comm *c, int *local, int *local_size, char *name, pc_err *e) {
    char mine[COMM_NODE_NAME_MAX] = {0};
    const char *env = getenv("PROJCOMP_NODE");
    if (env && *env) snprintf(mine, sizeof mine, "%s", env);
    else if (gethostname(mine, sizeof mine - 1) != 0) snprintf(mine, sizeof mine, "?");
    if (comm_key_ranks(c, mine, local, local_size, e) != 0)
        return pc_error_wrap(e, "rank %d: finding the ranks of this node", c->rank);
    if (name) memcpy(name, mine, sizeof mine);
    return 0;
}

size_t comm_dtype_size(comm_dtype t) {
    switch (t) {
    case COMM_F32: return 4;
    case COMM_F64: return 8;
    case COMM_I32: return 4;
    case COMM_I64: return 8;
    case COMM_U8: return 1;
    case COMM_BF16: return 2;
    }
    return 0;
}

const char *comm_dtype_name(comm_dtype t) {
    switch (t) {
    case COMM_F32: return "f32";
    case COMM_F64: return "f64";
    case COMM_I32: return "i32";
    case COMM_I64: return "i64";
    case COMM_U8: return "u8";
    case COMM_BF16: return "bf16";
    }
    return "?";
}

/* ---------------------------------------------------------------- MPI backend */

typedef struct mpi_impl {
    MPI_Comm comm;
    size_t max_chunk;       /* elements per MPI call */
    const char *broken_op;  /* set once a collective timed out */
    MPI_Request *stale;     /* timed-out requests, still pending */
    int n_stale;
    MPI_Request *started;   /* requests of groups started and not yet waited for */
    int n_started;
    size_t started_count;   /* their elements, for messages */
    const char *started_op; /* the last one's op and dtype, for messages */
    comm_dtype started_t;
    rollcall *roll;         /* who did not answer, after a collective timed out */
    long long seq;          /* collectives begun, numbered alike on every rank */
} mpi_impl;

static mpi_impl *impl_of(comm *c) { return c->impl; }

static MPI_Datatype mpi_type(comm_dtype t) {
    switch (t) {
    case COMM_F32: return MPI_FLOAT;
    case COMM_F64: return MPI_DOUBLE;
    case COMM_I32: return MPI_INT32_T;
    case COMM_I64: return MPI_INT64_T;
    case COMM_U8: return MPI_UINT8_T;
    case COMM_BF16: return MPI_UINT16_T; /* bit patterns, moved only: the wrappers refuse reductions */
    }
    return MPI_DATATYPE_NULL;
}

static MPI_Op mpi_op(comm_op op) {
    switch (op) {
    case COMM_SUM: return MPI_SUM;
    case COMM_MAX: return MPI_MAX;
    case COMM_MIN: return MPI_MIN;
    }
    return MPI_OP_NULL;
}

/* Context of one collective call, for messages and the watchdog. */
typedef struct call {
    comm *c;
    const char *op;
    comm_dtype t;
    size_t count;
    double t0;
    long long seq; /* its number */
} call;

static int call_fail(const call *k, int mpi_rc, pc_err *e) {
    char s[MPI_MAX_ERROR_STRING] = "unknown MPI error";
    int len = 0;
    MPI_Error_string(mpi_rc, s, &len);
    return pc_errorf(e, "rank %d: %s(%s, %zu elems) failed: %s", k->c->rank, k->op, comm_dtype_name(k->t), k->count, s);
}

static int call_begin(call *k, comm *c, const char *op, comm_dtype t, size_t count, pc_err *e) {
    k->c = c;
    k->op = op;
    k->t = t;
    k->count = count;
    k->t0 = pc_now();
    mpi_impl *m = impl_of(c);
    k->seq = ++m->seq;
    if (m->broken_op)
        return pc_errorf(e, "rank %d: %s(%s, %zu elems) refused: an earlier %s timed out, the ranks are out of step",
                         c->rank, op, comm_dtype_name(t), count, m->broken_op);
    if (mpi_type(t) == MPI_DATATYPE_NULL)
        return pc_errorf(e, "rank %d: %s: unknown dtype %d", c->rank, op, (int)t);
    return 0;
}

/* Request pointer for a non-blocking call, or NULL for a blocking one. */
static MPI_Request *nb(const call *k, MPI_Request *r) {
    *r = MPI_REQUEST_NULL;
    return k->c->timeout_s > 0 ? r : NULL;
}

/* n started requests that will not be waited for (a timeout, or a failure to start their
 * group): kept as stale until destroy, and the comm refuses more work as its peers are out
 * of step. */
static void give_up(const call *k, const MPI_Request *req, int n) {
    mpi_impl *m = impl_of(k->c);
    m->stale = pc_realloc(m->stale, (size_t)(m->n_stale + n) * sizeof *m->stale);
    for (int i = 0; i < n; i++) m->stale[m->n_stale++] = req[i];
    m->broken_op = k->op;
}

/* Wait for n started requests: MPI_Waitall without a watchdog; with one, poll them until
 * done or until the timeout, when they are given up. */
static int call_wait(const call *k, MPI_Request *req, int n, pc_err *e) {
    if (k->c->timeout_s <= 0) {
        int rc = MPI_Waitall(n, req, MPI_STATUSES_IGNORE);
        return rc == MPI_SUCCESS ? 0 : call_fail(k, rc, e);
    }
    long sleep_ns = 10000;
    for (int polls = 0;; polls++) {
        int done = 0;
        int rc = MPI_Testall(n, req, &done, MPI_STATUSES_IGNORE);
        if (rc != MPI_SUCCESS) return call_fail(k, rc, e);
        if (done) return 0;
        if (pc_now() - k->t0 > k->c->timeout_s) {
            give_up(k, req, n);
            pc_errorf(e, "rank %d: %s timed out after %g s (a peer rank may have died or hung)", k->c->rank, k->op,
                      k->c->timeout_s);
            rollcall_run(impl_of(k->c)->roll, k->seq, k->op, rollcall_grace(k->c->timeout_s), e);
            return -1;
        }
        if (polls < 64) continue; /* most collectives finish within a few polls */
        struct timespec ts = {0, sleep_ns};
        nanosleep(&ts, NULL);
        /* a non-blocking collective advances only when polled, a round at a time: poll
         * every 10 us in its first second (a 3.9 MB reduce: 133 ms with 1 ms sleeps, 9 ms
         * so), then back off to 1 ms for a long wait on a slow peer */
        if (sleep_ns < (pc_now() - k->t0 < 1.0 ? 10000 : 1000000)) sleep_ns *= 2;
    }
}

/* After an MPI call: check its return code and, if it was non-blocking, wait for it. */
static int call_finish(const call *k, int mpi_rc, MPI_Request *req, pc_err *e) {
    if (mpi_rc != MPI_SUCCESS) return call_fail(k, mpi_rc, e);
    return req ? call_wait(k, req, 1, e) : 0;
}

static char *at(const void *base, size_t elems, comm_dtype t) { return (char *)base + elems * comm_dtype_size(t); }

static int mpi_all_reduce(comm *c, const void *send, void *recv, size_t count, comm_dtype t, comm_op op, pc_err *e) {
    call k;
    if (call_begin(&k, c, "all_reduce", t, count, e)) return -1;
    mpi_impl *m = impl_of(c);
    int in_place = send == recv;
    size_t o = 0;
    do {
        int n = (int)PC_MIN(m->max_chunk, count - o);
        const void *s = in_place ? MPI_IN_PLACE : at(send, o, t);
        MPI_Request r, *rp = nb(&k, &r);
        int rc = rp ? MPI_Iallreduce(s, at(recv, o, t), n, mpi_type(t), mpi_op(op), m->comm, rp)
                    : MPI_Allreduce(s, at(recv, o, t), n, mpi_type(t), mpi_op(op), m->comm);
        if (call_finish(&k, rc, rp, e)) return -1;
        o += (size_t)n;
    } while (o < count);
    return 0;
}

static int mpi_reduce(comm *c, const void *send, void *recv, size_t count, comm_dtype t, comm_op op, int root,
                      pc_err *e) {
    call k;
    if (call_begin(&k, c, "reduce", t, count, e)) return -1;
    if (root < 0 || root >= c->size) return pc_errorf(e, "rank %d: reduce: root %d is not a rank", c->rank, root);
    mpi_impl *m = impl_of(c);
    int is_root = c->rank == root;
    int in_place = is_root && send == recv;
    size_t o = 0;
    do {
        int n = (int)PC_MIN(m->max_chunk, count - o);
        const void *s = in_place ? MPI_IN_PLACE : at(send, o, t);
        void *rb = is_root ? at(recv, o, t) : NULL;
        MPI_Request r, *rp = nb(&k, &r);
        int rc = rp ? MPI_Ireduce(s, rb, n, mpi_type(t), mpi_op(op), root, m->comm, rp)
                    : MPI_Reduce(s, rb, n, mpi_type(t), mpi_op(op), root, m->comm);
        if (call_finish(&k, rc, rp, e)) return -1;
        o += (size_t)n;
    } while (o < count);
    return 0;
}

/* Chunked broadcast under the context of call k (shared with all_gatherv's fallback). */
static int bcast_chunks(const call *k, void *buf, size_t count, comm_dtype t, int root, pc_err *e) {
    mpi_impl *m = impl_of(k->c);
    size_t o = 0;
    do {
        int n = (int)PC_MIN(m->max_chunk, count - o);
        MPI_Request r, *rp = nb(k, &r);
        int rc = rp ? MPI_Ibcast(at(buf, o, t), n, mpi_type(t), root, m->comm, rp)
                    : MPI_Bcast(at(buf, o, t), n, mpi_type(t), root, m->comm);
        if (call_finish(k, rc, rp, e)) return -1;
        o += (size_t)n;
    } while (o < count);
    return 0;
}

static int mpi_broadcast(comm *c, void *buf, size_t count, comm_dtype t, int root, pc_err *e) {
    call k;
    if (call_begin(&k, c, "broadcast", t, count, e)) return -1;
    if (root < 0 || root >= c->size) return pc_errorf(e, "rank %d: broadcast: root %d is not a rank", c->rank, root);
    return bcast_chunks(&k, buf, count, t, root, e);
}

static int mpi_all_gather(comm *c, const void *send, void *recv, size_t count, comm_dtype t, pc_err *e) {
    call k;
    if (call_begin(&k, c, "all_gather", t, count, e)) return -1;
    mpi_impl *m = impl_of(c);
    int in_place = send == at(recv, (size_t)c->rank * count, t);
    if (count <= m->max_chunk) {
        MPI_Request r, *rp = nb(&k, &r);
        const void *s = in_place ? MPI_IN_PLACE : send;
        int rc = rp ? MPI_Iallgather(s, (int)count, mpi_type(t), recv, (int)count, mpi_type(t), m->comm, rp)
                    : MPI_Allgather(s, (int)count, mpi_type(t), recv, (int)count, mpi_type(t), m->comm);
        return call_finish(&k, rc, rp, e);
    }
    /* Piece by piece through a staging buffer: tmp (size, n) -> recv[r * count + o ...]. */
    size_t es = comm_dtype_size(t), chunk = m->max_chunk;
    char *tmp = pc_malloc((size_t)c->size * chunk * es);
    int rc = 0;
    for (size_t o = 0; o < count && rc == 0; o += chunk) {
        int n = (int)PC_MIN(chunk, count - o);
        MPI_Request r, *rp = nb(&k, &r);
        int mrc = rp ? MPI_Iallgather(at(send, o, t), n, mpi_type(t), tmp, n, mpi_type(t), m->comm, rp)
                     : MPI_Allgather(at(send, o, t), n, mpi_type(t), tmp, n, mpi_type(t), m->comm);
        rc = call_finish(&k, mrc, rp, e);
        for (int q = 0; q < c->size && rc == 0; q++)
            memmove(at(recv, (size_t)q * count + o, t), tmp + (size_t)q * (size_t)n * es, (size_t)n * es);
    }
    free(tmp);
    return rc;
}

static int mpi_all_gatherv(comm *c, const void *send, size_t send_count, void *recv, const size_t *counts,
                           const size_t *displs, comm_dtype t, pc_err *e) {
    size_t total = 0;
    for (int q = 0; q < c->size; q++) total += counts[q];
    call k;
    if (call_begin(&k, c, "all_gatherv", t, total, e)) return -1;
    if (send_count != counts[c->rank])
        return pc_errorf(e, "rank %d: all_gatherv(%s, %zu elems): send count %zu differs from counts[%d] = %zu",
                         c->rank, comm_dtype_name(t), total, send_count, c->rank, counts[c->rank]);
    mpi_impl *m = impl_of(c);
    int fits = 1;
    for (int q = 0; q < c->size; q++) fits &= counts[q] <= m->max_chunk && displs[q] <= (size_t)INT_MAX;
    void *own = at(recv, displs[c->rank], t);
    if (fits) {
        int *ic = pc_malloc((size_t)c->size * 2 * sizeof(int)), *id = ic + c->size;
        for (int q = 0; q < c->size; q++) {
            ic[q] = (int)counts[q];
            id[q] = (int)displs[q];
        }
        const void *s = send == own ? MPI_IN_PLACE : send;
        MPI_Request r, *rp = nb(&k, &r);
        int rc = rp ? MPI_Iallgatherv(s, (int)send_count, mpi_type(t), recv, ic, id, mpi_type(t), m->comm, rp)
                    : MPI_Allgatherv(s, (int)send_count, mpi_type(t), recv, ic, id, mpi_type(t), m->comm);
        rc = call_finish(&k, rc, rp, e);
        free(ic);
        return rc;
    }
    /* Large pieces: each rank broadcasts its own piece from its place in recv. */
    if (send != own) memmove(own, send, send_count * comm_dtype_size(t));
    for (int q = 0; q < c->size; q++)
        if (bcast_chunks(&k, at(recv, displs[q], t), counts[q], t, q, e)) return -1;
    return 0;
}

static int mpi_reduce_scatter(comm *c, const void *send, void *recv, size_t count, comm_dtype t, comm_op op,
                              pc_err *e) {
    call k;
    if (call_begin(&k, c, "reduce_scatter", t, count, e)) return -1;
    mpi_impl *m = impl_of(c);
    if (count <= m->max_chunk) {
        MPI_Request r, *rp = nb(&k, &r);
        int rc = rp ? MPI_Ireduce_scatter_block(send, recv, (int)count, mpi_type(t), mpi_op(op), m->comm, rp)
                    : MPI_Reduce_scatter_block(send, recv, (int)count, mpi_type(t), mpi_op(op), m->comm);
        return call_finish(&k, rc, rp, e);
    }
    /* Piece by piece: tmp (size, n) <- send[q * count + o ...], reduced into recv[o ...]. */
    size_t es = comm_dtype_size(t), chunk = m->max_chunk;
    char *tmp = pc_malloc((size_t)c->size * chunk * es);
    int rc = 0;
    for (size_t o = 0; o < count && rc == 0; o += chunk) {
        int n = (int)PC_MIN(chunk, count - o);
        for (int q = 0; q < c->size; q++)
            memcpy(tmp + (size_t)q * (size_t)n * es, at(send, (size_t)q * count + o, t), (size_t)n * es);
        MPI_Request r, *rp = nb(&k, &r);
        int mrc = rp ? MPI_Ireduce_scatter_block(tmp, at(recv, o, t), n, mpi_type(t), mpi_op(op), m->comm, rp)
                     : MPI_Reduce_scatter_block(tmp, at(recv, o, t), n, mpi_type(t), mpi_op(op), m->comm);
        rc = call_finish(&k, mrc, rp, e);
    }
    free(tmp);
    return rc;
}

/* Post one non-blocking broadcast (reduce = 0) or in-place reduce to its root per piece
 * (in chunks of max_chunk) into req from req[*q] on (room for every chunk); 0, or -1
 * with req[0 .. *q) given up (the started ones cannot be cancelled) and e naming k. */
static int post_group(const call *k, const comm_piece *p, int n, int reduce, comm_op rop, MPI_Request *req, int *q,
                      pc_err *e) {
    comm *c = k->c;
    mpi_impl *m = impl_of(c);
    for (int i = 0; i < n; i++)
        if (p[i].root < 0 || p[i].root >= c->size) {
            if (*q > 0) give_up(k, req, *q);
            return pc_errorf(e, "rank %d: %s: piece %d's root %d is not a rank", c->rank, k->op, i, p[i].root);
        }
    int rc = MPI_SUCCESS;
    for (int i = 0; i < n && rc == MPI_SUCCESS; i++) {
        for (size_t o = 0; o < p[i].count && rc == MPI_SUCCESS; o += m->max_chunk) {
            int cnt = (int)PC_MIN(m->max_chunk, p[i].count - o);
            char *b = at(p[i].buf, o, k->t);
            int mine = c->rank == p[i].root;
            rc = reduce ? MPI_Ireduce(mine ? MPI_IN_PLACE : b, mine ? b : NULL, cnt, mpi_type(k->t), mpi_op(rop),
                                      p[i].root, m->comm, &req[*q])
                        : MPI_Ibcast(b, cnt, mpi_type(k->t), p[i].root, m->comm, &req[*q]);
            if (rc == MPI_SUCCESS) (*q)++;
        }
    }
    if (rc == MPI_SUCCESS) return 0;
    give_up(k, req, *q);
    return call_fail(k, rc, e);
}

/* Requests a group of pieces takes (one per chunk), and their elements in *total. */
static size_t group_requests(const mpi_impl *m, const comm_piece *p, int n, size_t *total) {
    size_t n_req = 0;
    *total = 0;
    for (int i = 0; i < n; i++) {
        *total += p[i].count;
        n_req += (p[i].count + m->max_chunk - 1) / m->max_chunk;
    }
    return n_req;
}

/* Grouped broadcast (reduce = 0) or in-place reduce to each piece's root: every piece is
 * started non-blocking, then all are waited for. */
static int mpi_group(comm *c, const char *op, const comm_piece *p, int n, comm_dtype t, int reduce, comm_op rop,
                     pc_err *e) {
    size_t total, n_req = group_requests(impl_of(c), p, n, &total);
    call k;
    if (call_begin(&k, c, op, t, total, e)) return -1;
    MPI_Request *req = pc_malloc((n_req ? n_req : 1) * sizeof *req);
    int q = 0, rc = post_group(&k, p, n, reduce, rop, req, &q, e);
    if (rc == 0) rc = call_wait(&k, req, q, e);
    free(req);
    return rc;
}

/* A group posted and left running: its requests join the started ones. */
static int mpi_group_start(comm *c, const comm_piece *p, int n, comm_dtype t, int reduce, comm_op op, pc_err *e) {
    mpi_impl *m = impl_of(c);
    size_t total, n_req = group_requests(m, p, n, &total);
    call k;
    if (call_begin(&k, c, reduce ? "reduce_group" : "broadcast_group", t, total, e)) return -1;
    m->started = pc_realloc(m->started, ((size_t)m->n_started + n_req + 1) * sizeof *m->started);
    int q = m->n_started;
    if (post_group(&k, p, n, reduce, op, m->started, &q, e)) {
        m->n_started = 0; /* given up, all of them */
        return -1;
    }
    m->n_started = q;
    m->started_count += total;
    m->started_op = k.op;
    m->started_t = t;
    return 0;
}

/* Every started group, under the watchdog from now (named after the last one). */
static int mpi_wait(comm *c, pc_err *e) {
    mpi_impl *m = impl_of(c);
    if (m->n_started == 0) return 0;
    call k;
    int rc = call_begin(&k, c, m->started_op, m->started_t, m->started_count, e);
    if (rc == 0) rc = call_wait(&k, m->started, m->n_started, e);
    else give_up(&k, m->started, m->n_started);
    m->n_started = 0;
    m->started_count = 0;
    return rc;
}

static int mpi_broadcast_group(comm *c, const comm_piece *p, int n, comm_dtype t, pc_err *e) {
    return mpi_group(c, "broadcast_group", p, n, t, 0, COMM_SUM, e);
}

static int mpi_reduce_group(comm *c, const comm_piece *p, int n, comm_dtype t, comm_op op, pc_err *e) {
    return mpi_group(c, "reduce_group", p, n, t, 1, op, e);
}

static int mpi_barrier(comm *c, pc_err *e) {
    call k;
    if (call_begin(&k, c, "barrier", COMM_U8, 0, e)) return -1;
    MPI_Request r, *rp = nb(&k, &r);
    int rc = rp ? MPI_Ibarrier(impl_of(c)->comm, rp) : MPI_Barrier(impl_of(c)->comm);
    return call_finish(&k, rc, rp, e);
}

static void mpi_destroy(comm *c) {
    mpi_impl *m = impl_of(c);
    if (m->n_started > 0) { /* started and never waited for (a failed step): treated as timed out */
        call k = {c, m->started_op, m->started_t, m->started_count, pc_now(), m->seq};
        give_up(&k, m->started, m->n_started);
        m->n_started = 0;
    }
    /* Give timed-out collectives a bounded chance to complete (a late peer) before freeing. */
    double t0 = pc_now(), limit = c->timeout_s > 0 ? c->timeout_s : 1.0;
    int pending = m->n_stale;
    while (pending > 0 && pc_now() - t0 < limit) {
        pending = 0;
        for (int i = 0; i < m->n_stale; i++) {
            int done = 1;
            if (m->stale[i] != MPI_REQUEST_NULL) MPI_Test(&m->stale[i], &done, MPI_STATUS_IGNORE);
            pending += !done;
        }
        if (pending) {
            struct timespec ts = {0, 1000000};
            nanosleep(&ts, NULL);
        }
    }
    MPI_Comm_free(&m->comm);
    rollcall_destroy(m->roll);
    free(m->stale);
    free(m->started);
    free(m);
    free(c);
}

static const comm_ops mpi_ops = {
    .name = "mpi",
    .all_reduce = mpi_all_reduce,
    .reduce = mpi_reduce,
    .broadcast = mpi_broadcast,
    .all_gather = mpi_all_gather,
    .all_gatherv = mpi_all_gatherv,
    .reduce_scatter = mpi_reduce_scatter,
    .broadcast_group = mpi_broadcast_group,
    .reduce_group = mpi_reduce_group,
    .group_start = mpi_group_start,
    .wait = mpi_wait,
    .barrier = mpi_barrier,
    .destroy = mpi_destroy,
};

comm *comm_mpi_create(pc_err *e) {
    int inited = 0;
    MPI_Initialized(&inited);
    if (!inited) {
        pc_errorf(e, "comm: MPI is not initialised");
        return NULL;
    }
    MPI_Comm dup;
    int rc = MPI_Comm_dup(MPI_COMM_WORLD, &dup);
    if (rc != MPI_SUCCESS) {
        char s[MPI_MAX_ERROR_STRING];
        int len = 0;
        MPI_Error_string(rc, s, &len);
        pc_errorf(e, "comm: MPI_Comm_dup(MPI_COMM_WORLD) failed: %s", s);
        return NULL;
    }
    MPI_Comm_set_errhandler(dup, MPI_ERRORS_RETURN);
    /* Open MPI raises a request's errors in MPI_Testall (the watchdog's wait) on
     * MPI_COMM_WORLD: returned there too, they become this layer's error naming the
     * operation, not MPI's abort */
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    rollcall *roll = rollcall_create(e);
    if (!roll) {
        MPI_Comm_free(&dup);
        return NULL;
    }
    comm *c = pc_calloc(1, sizeof *c);
    mpi_impl *m = pc_calloc(1, sizeof *m);
    m->comm = dup;
    m->roll = roll;
    m->max_chunk = INT_MAX;
    MPI_Comm_rank(dup, &c->rank);
    MPI_Comm_size(dup, &c->size);
    c->ops = &mpi_ops;
    c->impl = m;
    c->timeout_s = 0;
    return c;
}

void comm_mpi_set_max_chunk(comm *c, size_t n) {
    if (c->ops == &mpi_ops) impl_of(c)->max_chunk = n == 0 ? 1 : PC_MIN(n, (size_t)INT_MAX);
}
