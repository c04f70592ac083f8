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
    size_t chunk;           /* all_reduce, reduce, broadcast and groups stage at most this many bytes at a time */
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

/* Bytes staged at a time: the chunk in whole elements of es bytes, at least one. */
static size_t chunk_bytes(const staged_impl *s, size_t es) { return s->chunk >= es ? s->chunk / es * es : es; }

/* all_reduce (root < 0), reduce or broadcast (bcast) of count elements in parts of at
 * most one chunk: each part downloaded where this rank contributes, run on the host comm
 * and uploaded where it receives (at least one part, so an empty call still meets the
 * other ranks). */
static int staged_parts(comm *c, const char *op, const void *send, void *recv, size_t count, comm_dtype t,
                        comm_op rop, int root, int bcast, pc_err *e) {
    staged_impl *s = simpl(c);
    size_t es;
    if (elem_size(c, op, t, &es, e)) return -1;
    size_t per = chunk_bytes(s, es) / es, off = 0;
    char *buf = stage(&s->in, &s->in_cap, PC_MIN(count, per) * es);
    int gives = !bcast || c->rank == root, gets = root < 0 || (c->rank == root) != bcast, rc = 0;
    host_state hs;
    comm *h = host_enter(c, &hs);
    do {
        size_t m = PC_MIN(per, count - off);
        if (gives) download(c, buf, (const char *)send + off * es, m * es);
        rc = bcast ? comm_broadcast(h, buf, m, t, root, e)
             : root < 0 ? comm_all_reduce(h, buf, buf, m, t, rop, e)
                        : comm_reduce(h, buf, c->rank == root ? buf : NULL, m, t, rop, root, e);
        if (rc == 0 && gets) upload(c, (char *)recv + off * es, buf, m * es);
        off += m;
    } while (rc == 0 && off < count);
    return host_leave(c, &hs, rc) ? -1 : 0;
}

static int staged_all_reduce(comm *c, const void *send, void *recv, size_t count, comm_dtype t, comm_op op,
                             pc_err *e) {
    return staged_parts(c, "all_reduce", send, recv, count, t, op, -1, 0, e);
}

static int staged_reduce(comm *c, const void *send, void *recv, size_t count, comm_dtype t, comm_op op, int root,
                         pc_err *e) {
    return staged_parts(c, "reduce", send, recv, count, t, op, root, 0, e);
}

static int staged_broadcast(comm *c, void *dev_buf, size_t count, comm_dtype t, int root, pc_err *e) {
    return staged_parts(c, "broadcast", dev_buf, dev_buf, count, t, COMM_SUM, root, 1, e);
}

/* Elements per rank in one part of a collective that stages all ranks' pieces at once:
 * size x that fits a chunk (at least one). */
static size_t per_rank_part(comm *c, size_t es) {
    size_t per = chunk_bytes(simpl(c), es) / es / (size_t)c->size;
    return per > 0 ? per : 1;
}

/* In parts of [off, off + m) of every rank's piece: the stage holds (size, m), this
 * rank's part in its row; gathered in place and each row uploaded to its piece. */
static int staged_all_gather(comm *c, const void *send, void *recv, size_t count, comm_dtype t, pc_err *e) {
    staged_impl *s = simpl(c);
    size_t es;
    if (elem_size(c, "all_gather", t, &es, e)) return -1;
    size_t per = per_rank_part(c, es), off = 0;
    char *buf = stage(&s->in, &s->in_cap, (size_t)c->size * PC_MIN(count, per) * es);
    int rc = 0;
    host_state hs;
    comm *h = host_enter(c, &hs);
    do {
        size_t m = PC_MIN(per, count - off);
        char *own = buf + (size_t)c->rank * m * es;
        download(c, own, (const char *)send + off * es, m * es);
        rc = comm_all_gather(h, own, buf, m, t, e);
        for (int q = 0; q < c->size && rc == 0; q++)
            upload(c, dev_at(recv, ((size_t)q * count + off) * es), buf + (size_t)q * m * es, m * es);
        off += m;
    } while (rc == 0 && off < count);
    return host_leave(c, &hs, rc);
}

/* Copy n bytes between device buffers through the stage, a chunk at a time. */
static void copy_via_stage(comm *c, void *dst, const void *src, size_t n) {
    staged_impl *s = simpl(c);
    size_t part = chunk_bytes(s, 1);
    char *buf = stage(&s->in, &s->in_cap, PC_MIN(n, part));
    for (size_t off = 0; off < n; off += part) {
        size_t m = PC_MIN(part, n - off);
        download(c, buf, (const char *)src + off, m);
        upload(c, (char *)dst + off, buf, m);
    }
}

static int staged_group(comm *c, const char *op, const comm_piece *p, int n, comm_dtype t, int reduce, comm_op rop,
                        pc_err *e);

/* A grouped broadcast of every rank's piece, rooted at it: this rank's is read from send,
 * the others land in recv at their displs (the gaps stay as they were), in parts like
 * any group; then this rank's own piece is copied into recv unless it is there already. */
static int staged_all_gatherv(comm *c, const void *send, size_t send_count, void *recv, const size_t *counts,
                              const size_t *displs, comm_dtype t, pc_err *e) {
    size_t es, total = 0;
    if (elem_size(c, "all_gatherv", t, &es, e)) return -1;
    for (int q = 0; q < c->size; q++) total += counts[q];
    if (send_count != counts[c->rank])
        return pc_errorf(e, "rank %d: all_gatherv(%s, %zu elems): send count %zu differs from counts[%d] = %zu",
                         c->rank, comm_dtype_name(t), total, send_count, c->rank, counts[c->rank]);
    comm_piece *p = pc_malloc((size_t)c->size * sizeof *p);
    for (int q = 0; q < c->size; q++)
        p[q] = (comm_piece){q == c->rank ? (void *)send : dev_at(recv, displs[q] * es), counts[q], q};
    int rc = staged_group(c, "all_gatherv", p, c->size, t, 0, COMM_SUM, e);
    free(p);
    char *own = dev_at(recv, displs[c->rank] * es);
    if (rc == 0 && (const void *)own != send) copy_via_stage(c, own, send, send_count * es);
    return rc;
}

/* In parts of [off, off + m) of every rank's piece: the stage holds the (size, m) parts
 * of send, reduced and scattered into m elements of recv. */
static int staged_reduce_scatter(comm *c, const void *send, void *recv, size_t count, comm_dtype t, comm_op op,
                                 pc_err *e) {
    staged_impl *s = simpl(c);
    size_t es;
    if (elem_size(c, "reduce_scatter", t, &es, e)) return -1;
    size_t per = per_rank_part(c, es), off = 0;
    char *in = stage(&s->in, &s->in_cap, (size_t)c->size * PC_MIN(count, per) * es);
    char *out = stage(&s->out, &s->out_cap, PC_MIN(count, per) * es);
    int rc = 0;
    host_state hs;
    comm *h = host_enter(c, &hs);
    do {
        size_t m = PC_MIN(per, count - off);
        for (int q = 0; q < c->size; q++)
            download(c, in + (size_t)q * m * es, (const char *)send + ((size_t)q * count + off) * es, m * es);
        rc = comm_reduce_scatter(h, in, out, m, t, op, e);
        if (rc == 0) upload(c, dev_at(recv, off * es), out, m * es);
        off += m;
    } while (rc == 0 && off < count);
    return host_leave(c, &hs, rc);
}

/* One part of a group: pieces hp (in the stage) of device pieces dev, run on the host
 * comm; what this rank receives is uploaded. */
static int group_part(comm *c, comm *h, const comm_piece *hp, void *const *dev, int k, size_t es, comm_dtype t,
                      int reduce, comm_op rop, pc_err *e) {
    int rc = reduce ? comm_reduce_group(h, hp, k, t, rop, e) : comm_broadcast_group(h, hp, k, t, e);
    for (int i = 0; i < k && rc == 0; i++)
        if ((c->rank == hp[i].root) == reduce) upload(c, dev[i], hp[i].buf, hp[i].count * es);
    return rc;
}

/* Grouped broadcast (reduce = 0) or reduce: the pieces side by side in the host stage, in
 * parts of at most one chunk (a piece larger than the room left is cut), each part one
 * group on the host comm; every rank cuts the same way. Only the data a rank contributes
 * is downloaded (a broadcast's root, every rank of a reduce), and only what it receives
 * is uploaded (a broadcast's others, a reduce's root). */
static int staged_group(comm *c, const char *op, const comm_piece *p, int n, comm_dtype t, int reduce, comm_op rop,
                        pc_err *e) {
    staged_impl *s = simpl(c);
    size_t es, total = 0; /* bytes of all pieces */
    if (elem_size(c, op, t, &es, e)) return -1;
    for (int i = 0; i < n; i++) total += p[i].count * es;
    size_t cap = chunk_bytes(s, es), used = 0; /* bytes of the part being filled */
    char *buf = stage(&s->in, &s->in_cap, PC_MIN(total, cap));
    comm_piece *hp = pc_malloc((size_t)(n > 0 ? n : 1) * sizeof *hp); /* a part holds at most one cut of each piece */
    void **dev = pc_malloc((size_t)(n > 0 ? n : 1) * sizeof *dev);
    int k = 0, parts = 0, rc = 0;
    host_state hs;
    comm *h = host_enter(c, &hs);
    for (int i = 0; i < n && rc == 0; i++)
        for (size_t off = 0; off < p[i].count && rc == 0;) {
            if (used == cap) { /* the part is full */
                rc = group_part(c, h, hp, dev, k, es, t, reduce, rop, e);
                parts++, k = 0, used = 0;
                continue;
            }
            size_t m = PC_MIN(p[i].count - off, (cap - used) / es);
            hp[k] = (comm_piece){buf + used, m, p[i].root};
            dev[k] = (char *)p[i].buf + off * es;
            if (reduce || c->rank == p[i].root) download(c, buf + used, dev[k], m * es);
            k++, used += m * es, off += m;
        }
    if (rc == 0 && (k > 0 || parts == 0)) rc = group_part(c, h, hp, dev, k, es, t, reduce, rop, e);
    free(hp);
    free(dev);
    return host_leave(c, &hs, rc);
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

void comm_staged_set_chunk(comm *c, size_t bytes) {
    staged_impl *s = simpl(c);
    s->chunk = bytes;
    free(s->in);
    free(s->out);
    s->in = s->out = NULL;
    s->in_cap = s->out_cap = 0;
}

size_t comm_staged_held(comm *c) { return simpl(c)->in_cap + simpl(c)->out_cap; }

comm *comm_staged_create(comm *host, backend *be, pc_err *e) {
    if (!host || !be) {
        pc_errorf(e, "comm_staged_create: %s is NULL", host ? "the backend" : "the host comm");
        return NULL;
    }
    comm *c = pc_calloc(1, sizeof *c);
    staged_impl *s = pc_calloc(1, sizeof *s);
    s->host = host;
    s->be = be;
    s->chunk = COMM_STAGED_CHUNK;
    c->ops = &staged_ops;
    c->impl = s;
    c->rank = host->rank;
    c->size = host->size;
    c->timeout_s = host->timeout_s;
    c->bytes = 0;
    return c;
}
