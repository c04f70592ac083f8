/* comm_staged: collectives on device buffers staged through host memory (comm_staged.h).
 *
 * Every op downloads its device input into a host staging buffer, runs the host comm's
 * collective in place on it where the collective allows (so one buffer suffices), and
 * uploads the result. Staging is in bytes, through the backend's raw upload/download,
 * so any element count of any dtype works (7 u8, 3 bf16). The payload is counted by the
 * comm_* wrappers on the staged comm itself; the host comm's bytes and timeout_s are
 * saved before each inner call and restored after it, so the payload is counted once
 * and the staged comm's watchdog setting governs. Errors of the inner call pass through
 * unchanged. */
#include "comm_staged.h"

#include <stdlib.h>
#include <string.h>

typedef struct staged_impl {
    comm *host;
    backend *be;
    char *in, *out;         /* host staging buffers */
    size_t in_cap, out_cap; /* their capacities in bytes */
} staged_impl;

static staged_impl *simpl(comm *c) { return c->impl; }

/* Host staging buffer *buf grown to at least `bytes` bytes. */
static char *stage(char **buf, size_t *cap, size_t bytes) {
    if (*cap < bytes) {
        free(*buf);
        *buf = pc_malloc(bytes);
        *cap = bytes;
    }
    return *buf;
}

/* *es = bytes per element of t; -1 and e naming op when t is not a known dtype. */
static int elem_size(comm *c, const char *op, comm_dtype t, size_t *es, pc_err *e) {
    *es = comm_dtype_size(t);
    if (*es == 0) return pc_errorf(e, "rank %d: %s: unknown dtype %d", c->rank, op, (int)t);
    return 0;
}

static char *dev_at(void *base, size_t bytes) { return (char *)base + bytes; }

static void download(comm *c, void *host, const void *dev, size_t bytes) {
    backend *be = simpl(c)->be;
    if (bytes) be->ops->download_raw(be, host, dev, bytes);
}

static void upload(comm *c, void *dev, const void *host, size_t bytes) {
    backend *be = simpl(c)->be;
    if (bytes) be->ops->upload_raw(be, dev, host, bytes);
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
    size_t es;
    if (elem_size(c, "all_reduce", t, &es, e)) return -1;
    size_t nb = count * es;
    char *buf = stage(&s->in, &s->in_cap, nb);
    download(c, buf, send, nb);
    host_state hs;
    comm *h = host_enter(c, &hs);
    if (host_leave(c, &hs, comm_all_reduce(h, buf, buf, count, t, op, e))) return -1;
    upload(c, recv, buf, nb);
    return 0;
}

static int staged_reduce(comm *c, const void *send, void *recv, size_t count, comm_dtype t, comm_op op, int root,
                         pc_err *e) {
    staged_impl *s = simpl(c);
    size_t es;
    if (elem_size(c, "reduce", t, &es, e)) return -1;
    size_t nb = count * es;
    char *buf = stage(&s->in, &s->in_cap, nb);
    download(c, buf, send, nb);
    int is_root = c->rank == root;
    host_state hs;
    comm *h = host_enter(c, &hs);
    if (host_leave(c, &hs, comm_reduce(h, buf, is_root ? buf : NULL, count, t, op, root, e))) return -1;
    if (is_root) upload(c, recv, buf, nb);
    return 0;
}

static int staged_broadcast(comm *c, void *dev_buf, size_t count, comm_dtype t, int root, pc_err *e) {
    staged_impl *s = simpl(c);
    size_t es;
    if (elem_size(c, "broadcast", t, &es, e)) return -1;
    size_t nb = count * es;
    char *buf = stage(&s->in, &s->in_cap, nb);
    if (c->rank == root) download(c, buf, dev_buf, nb);
    host_state hs;
    comm *h = host_enter(c, &hs);
    if (host_leave(c, &hs, comm_broadcast(h, buf, count, t, root, e))) return -1;
    if (c->rank != root) upload(c, dev_buf, buf, nb);
    return 0;
}

static int staged_all_gather(comm *c, const void *send, void *recv, size_t count, comm_dtype t, pc_err *e) {
    staged_impl *s = simpl(c);
    size_t es;
    if (elem_size(c, "all_gather", t, &es, e)) return -1;
    size_t piece = count * es; /* one rank's piece, bytes */
    // recv (size, count): this rank's piece goes to its place, the gather runs in place
    char *buf = stage(&s->in, &s->in_cap, (size_t)c->size * piece);
    char *own = buf + (size_t)c->rank * piece;
    download(c, own, send, piece);
    host_state hs;
    comm *h = host_enter(c, &hs);
    if (host_leave(c, &hs, comm_all_gather(h, own, buf, count, t, e))) return -1;
    upload(c, recv, buf, (size_t)c->size * piece);
    return 0;
}

static int staged_all_gatherv(comm *c, const void *send, size_t send_count, void *recv, const size_t *counts,
                              const size_t *displs, comm_dtype t, pc_err *e) {
    staged_impl *s = simpl(c);
    size_t es;
    if (elem_size(c, "all_gatherv", t, &es, e)) return -1;
    // recv holds rank q's counts[q] elements at displs[q]; gather in place in the stage,
    // which spans recv up to the end of its last piece (bytes)
    size_t own_off = displs[c->rank] * es, extent = own_off + send_count * es;
    for (int q = 0; q < c->size; q++) extent = PC_MAX(extent, (displs[q] + counts[q]) * es);
    char *buf = stage(&s->in, &s->in_cap, extent);
    download(c, buf + own_off, send, send_count * es);
    host_state hs;
    comm *h = host_enter(c, &hs);
    if (host_leave(c, &hs, comm_all_gatherv(h, buf + own_off, send_count, buf, counts, displs, t, e))) return -1;
    // only the pieces: the gaps between them on the device stay as they were
    for (int q = 0; q < c->size; q++) upload(c, dev_at(recv, displs[q] * es), buf + displs[q] * es, counts[q] * es);
    return 0;
}

static int staged_reduce_scatter(comm *c, const void *send, void *recv, size_t count, comm_dtype t, comm_op op,
                                 pc_err *e) {
    staged_impl *s = simpl(c);
    size_t es;
    if (elem_size(c, "reduce_scatter", t, &es, e)) return -1;
    size_t piece = count * es; /* one rank's piece, bytes */
    // send (size, count) -> recv (count)
    char *in = stage(&s->in, &s->in_cap, (size_t)c->size * piece);
    char *out = stage(&s->out, &s->out_cap, piece);
    download(c, in, send, (size_t)c->size * piece);
    host_state hs;
    comm *h = host_enter(c, &hs);
    if (host_leave(c, &hs, comm_reduce_scatter(h, in, out, count, t, op, e))) return -1;
    upload(c, recv, out, piece);
    return 0;
}

/* Grouped broadcast (reduce = 0) or reduce: the pieces side by side in one host stage.
 * Only the data a rank contributes is downloaded (a broadcast's root, every rank of a
 * reduce), and only what it receives is uploaded (a broadcast's others, a reduce's root). */
static int staged_group(comm *c, const char *op, const comm_piece *p, int n, comm_dtype t, int reduce, comm_op rop,
                        pc_err *e) {
    staged_impl *s = simpl(c);
    size_t es, total = 0; /* bytes of all pieces */
    if (elem_size(c, op, t, &es, e)) return -1;
    for (int i = 0; i < n; i++) total += p[i].count * es;
    char *buf = stage(&s->in, &s->in_cap, total);
    comm_piece *hp = pc_malloc((size_t)(n > 0 ? n : 1) * sizeof *hp);
    size_t o = 0; /* piece i's offset in the stage, bytes */
    for (int i = 0; i < n; i++) {
        hp[i] = (comm_piece){buf + o, p[i].count, p[i].root};
        if (reduce || c->rank == p[i].root) download(c, buf + o, p[i].buf, p[i].count * es);
        o += p[i].count * es;
    }
    host_state hs;
    comm *h = host_enter(c, &hs);
    int rc = host_leave(c, &hs, reduce ? comm_reduce_group(h, hp, n, t, rop, e) : comm_broadcast_group(h, hp, n, t, e));
    for (int i = 0; i < n && rc == 0; i++)
        if ((c->rank == p[i].root) == reduce) upload(c, p[i].buf, hp[i].buf, p[i].count * es);
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
