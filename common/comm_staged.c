/* comm_staged: collectives on device buffers staged through host memory (comm_staged.h).
 *
 * Every op downloads its device input into a host staging buffer, runs the host comm's
 * collective in place on it where the collective allows (so one buffer suffices), and
 * uploads the result. The payload is counted by the comm_* wrappers on the staged comm
 * itself; the host comm's bytes and timeout_s are saved before each inner call and
 * restored after it, so the payload is counted once and the staged comm's watchdog
 * setting governs. Errors of the inner call pass through unchanged. */
#include "comm_staged.h"

#include <stdlib.h>
#include <string.h>

typedef struct staged_impl {
    comm *host;
    backend *be;
    float *in, *out; /* host staging buffers */
    size_t in_n, out_n; /* their capacities in floats */
} staged_impl;

static staged_impl *simpl(comm *c) { return c->impl; }

/* Host staging buffer *buf grown to at least n floats. */
static float *stage(float **buf, size_t *cap, size_t n) {
    if (*cap < n) {
        free(*buf);
        *buf = pc_malloc(n * sizeof(float));
        *cap = n;
    }
    return *buf;
}

/* Floats that carry `count` elements of t, for op; -1 when that is not whole floats. */
static int words(comm *c, const char *op, const char *what, size_t count, comm_dtype t, size_t *out, pc_err *e) {
    size_t es = comm_dtype_size(t);
    if (es == 0) return pc_errorf(e, "rank %d: %s: unknown dtype %d", c->rank, op, (int)t);
    if (count * es % sizeof(float) != 0)
        return pc_errorf(e,
                         "rank %d: %s(%s, %zu elems) on the staged comm: %s of %zu bytes is not a multiple of 4 bytes "
                         "(device buffers are staged as floats)",
                         c->rank, op, comm_dtype_name(t), count, what, count * es);
    *out = count * es / sizeof(float);
    return 0;
}

static float *dev_at(const void *base, size_t floats) { return (float *)base + floats; }

static void download(comm *c, float *host, const void *dev, size_t n) {
    backend *be = simpl(c)->be;
    if (n) be->ops->download(be, host, dev, n);
}

static void upload(comm *c, void *dev, const float *host, size_t n) {
    backend *be = simpl(c)->be;
    if (n) be->ops->upload(be, dev, host, n);
}

/* Saved host-comm state around an inner call. */
typedef struct host_state {
    uint64_t bytes;
    double timeout_s;
} host_state;

static comm *host_enter(comm *c, host_state *s) {
    comm *h = simpl(c)->host;
    s->bytes = h->bytes;
    s->timeout_s = h->timeout_s;
    h->timeout_s = c->timeout_s;
    return h;
}

static int host_leave(comm *c, const host_state *s, int rc) {
    comm *h = simpl(c)->host;
    h->bytes = s->bytes;
    h->timeout_s = s->timeout_s;
    return rc;
}

static int staged_all_reduce(comm *c, const void *send, void *recv, size_t count, comm_dtype t, comm_op op,
                             pc_err *e) {
    staged_impl *s = simpl(c);
    size_t nf;
    if (words(c, "all_reduce", "the buffer", count, t, &nf, e)) return -1;
    float *buf = stage(&s->in, &s->in_n, nf);
    download(c, buf, send, nf);
    host_state hs;
    comm *h = host_enter(c, &hs);
    if (host_leave(c, &hs, comm_all_reduce(h, buf, buf, count, t, op, e))) return -1;
    upload(c, recv, buf, nf);
    return 0;
}

static int staged_reduce(comm *c, const void *send, void *recv, size_t count, comm_dtype t, comm_op op, int root,
                         pc_err *e) {
    staged_impl *s = simpl(c);
    size_t nf;
    if (words(c, "reduce", "the buffer", count, t, &nf, e)) return -1;
    float *buf = stage(&s->in, &s->in_n, nf);
    download(c, buf, send, nf);
    int is_root = c->rank == root;
    host_state hs;
    comm *h = host_enter(c, &hs);
    if (host_leave(c, &hs, comm_reduce(h, buf, is_root ? buf : NULL, count, t, op, root, e))) return -1;
    if (is_root) upload(c, recv, buf, nf);
    return 0;
}

static int staged_broadcast(comm *c, void *dev_buf, size_t count, comm_dtype t, int root, pc_err *e) {
    staged_impl *s = simpl(c);
    size_t nf;
    if (words(c, "broadcast", "the buffer", count, t, &nf, e)) return -1;
    float *buf = stage(&s->in, &s->in_n, nf);
    if (c->rank == root) download(c, buf, dev_buf, nf);
    host_state hs;
    comm *h = host_enter(c, &hs);
    if (host_leave(c, &hs, comm_broadcast(h, buf, count, t, root, e))) return -1;
    if (c->rank != root) upload(c, dev_buf, buf, nf);
    return 0;
}

static int staged_all_gather(comm *c, const void *send, void *recv, size_t count, comm_dtype t, pc_err *e) {
    staged_impl *s = simpl(c);
    size_t nf;
    if (words(c, "all_gather", "one rank's piece", count, t, &nf, e)) return -1;
    // recv (size, count): this rank's piece goes to its place, the gather runs in place
    float *buf = stage(&s->in, &s->in_n, (size_t)c->size * nf);
    float *own = buf + (size_t)c->rank * nf;
    download(c, own, send, nf);
    host_state hs;
    comm *h = host_enter(c, &hs);
    if (host_leave(c, &hs, comm_all_gather(h, own, buf, count, t, e))) return -1;
    upload(c, recv, buf, (size_t)c->size * nf);
    return 0;
}

static int staged_all_gatherv(comm *c, const void *send, size_t send_count, void *recv, const size_t *counts,
                              const size_t *displs, comm_dtype t, pc_err *e) {
    staged_impl *s = simpl(c);
    size_t nf_send, extent = 0;
    if (words(c, "all_gatherv", "the send count", send_count, t, &nf_send, e)) return -1;
    for (int q = 0; q < c->size; q++) {
        size_t nf_q, off_q;
        if (words(c, "all_gatherv", "a rank's count", counts[q], t, &nf_q, e) ||
            words(c, "all_gatherv", "a rank's displacement", displs[q], t, &off_q, e))
            return -1;
        extent = PC_MAX(extent, off_q + nf_q);
    }
    size_t own_off = displs[c->rank] * comm_dtype_size(t) / sizeof(float);
    extent = PC_MAX(extent, own_off + nf_send);
    // recv holds rank q's counts[q] elements at displs[q]; gather in place in the stage
    float *buf = stage(&s->in, &s->in_n, extent);
    download(c, buf + own_off, send, nf_send);
    host_state hs;
    comm *h = host_enter(c, &hs);
    if (host_leave(c, &hs, comm_all_gatherv(h, buf + own_off, send_count, buf, counts, displs, t, e))) return -1;
    for (int q = 0; q < c->size; q++) {
        size_t off = displs[q] * comm_dtype_size(t) / sizeof(float);
        upload(c, dev_at(recv, off), buf + off, counts[q] * comm_dtype_size(t) / sizeof(float));
    }
    return 0;
}

static int staged_reduce_scatter(comm *c, const void *send, void *recv, size_t count, comm_dtype t, comm_op op,
                                 pc_err *e) {
    staged_impl *s = simpl(c);
    size_t nf;
    if (words(c, "reduce_scatter", "one rank's piece", count, t, &nf, e)) return -1;
    // send (size, count) -> recv (count)
    float *in = stage(&s->in, &s->in_n, (size_t)c->size * nf);
    float *out = stage(&s->out, &s->out_n, nf);
    download(c, in, send, (size_t)c->size * nf);
    host_state hs;
    comm *h = host_enter(c, &hs);
    if (host_leave(c, &hs, comm_reduce_scatter(h, in, out, count, t, op, e))) return -1;
    upload(c, recv, out, nf);
    return 0;
}

/* Grouped broadcast (reduce = 0) or reduce: the pieces side by side in one host stage.
 * Only the data a rank contributes is downloaded (a broadcast's root, every rank of a
 * reduce), and only what it receives is uploaded (a broadcast's others, a reduce's root). */
static int staged_group(comm *c, const char *op, const comm_piece *p, int n, comm_dtype t, int reduce, comm_op rop,
                        pc_err *e) {
    staged_impl *s = simpl(c);
    size_t total = 0, nf;
    for (int i = 0; i < n; i++) {
        if (words(c, op, "a piece", p[i].count, t, &nf, e)) return -1;
        total += nf;
    }
    float *buf = stage(&s->in, &s->in_n, total);
    comm_piece *hp = pc_malloc((size_t)(n > 0 ? n : 1) * sizeof *hp);
    size_t o = 0;
    for (int i = 0; i < n; i++) {
        nf = p[i].count * comm_dtype_size(t) / sizeof(float);
        hp[i] = (comm_piece){buf + o, p[i].count, p[i].root};
        if (reduce || c->rank == p[i].root) download(c, buf + o, p[i].buf, nf);
        o += nf;
    }
    host_state hs;
    comm *h = host_enter(c, &hs);
    int rc = host_leave(c, &hs, reduce ? comm_reduce_group(h, hp, n, t, rop, e) : comm_broadcast_group(h, hp, n, t, e));
    for (int i = 0; i < n && rc == 0; i++)
        if ((c->rank == p[i].root) == reduce)
            upload(c, p[i].buf, hp[i].buf, p[i].count * comm_dtype_size(t) / sizeof(float));
    free(hp);
    return rc;
}

static int staged_broadcast_group(comm *c, const comm_piece *p, int n, comm_dtype t, pc_err *e) {
    return staged_group(c, "broadcast_group", p, n, t, 0, COMM_SUM, e);
}

static int staged_reduce_group(comm *c, const comm_piece *p, int n, comm_dtype t, comm_op op, pc_err *e) {
    return staged_group(c, "reduce_group", p, n, t, 1, op, e);
}

static int staged_barrier(comm *c, pc_err *e) {
    host_state hs;
    comm *h = host_enter(c, &hs);
    return host_leave(c, &hs, comm_barrier(h, e));
}

static void staged_destroy(comm *c) {
    staged_impl *s = simpl(c);
    free(s->in);
    free(s->out);
    free(s);
    free(c);
}

static const comm_ops staged_ops = {
    .name = "staged",
    .all_reduce = staged_all_reduce,
    .reduce = staged_reduce,
    .broadcast = staged_broadcast,
    .all_gather = staged_all_gather,
    .all_gatherv = staged_all_gatherv,
    .reduce_scatter = staged_reduce_scatter,
    .broadcast_group = staged_broadcast_group,
    .reduce_group = staged_reduce_group,
    .barrier = staged_barrier,
    .destroy = staged_destroy,
};

comm *comm_staged_create(comm *host, backend *be, pc_err *e) {
    if (!host || !be) {
        pc_errorf(e, "comm_staged_create: %s is NULL", host ? "the backend" : "the host comm");
        return NULL;
    }
    comm *c = pc_calloc(1, sizeof *c);
    staged_impl *s = pc_calloc(1, sizeof *s);
    s->host = host;
    s->be = be;
    c->ops = &staged_ops;
    c->impl = s;
    c->rank = host->rank;
    c->size = host->size;
    c->timeout_s = host->timeout_s;
    c->bytes = 0;
    return c;
}
