/* test_comm_staged: the staged comm (comm_staged.h) on guarded device buffers, under
 * mpirun -np 2 and 4.
 *
 * Each collective runs twice on the same per-rank inputs: on host buffers through a
 * plain MPI comm (the reference) and on buffers of the guarded CPU backend through a
 * staged comm over a second MPI comm. The downloaded results must equal the reference
 * byte for byte (including untouched gaps of all_gatherv's receive buffer), the staged
 * comm's bytes counter must equal the reference comm's while the borrowed host comm's
 * stays 0, and its timeout_s must be restored. The moves are also checked against the
 * inputs themselves (comm_values.h), and every device buffer carries sentinel bytes
 * after its elements that no op may touch. Counts are any number of bytes: odd u8
 * counts and displacements, and bf16 (moved only) through broadcast, broadcast_group,
 * all_gather and all_gatherv. Then the failures: a reduction of bf16 is refused on every
 * rank naming the op, counting no bytes, and an inner error (a bad root) passes through. */
#include <math.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "backend.h"
#include "comm.h"
#include "comm_values.h"
#include "comm_staged.h"

typedef struct ctx {
    int rank, size;
    int n_checks, n_failed;
    comm *ref;   /* MPI comm on host buffers */
    comm *host;  /* MPI comm under the staged one */
    comm *st;    /* staged comm on device buffers */
    backend *be; /* guarded CPU backend */
} ctx;

#define CHECK(x, ...)                                                                                                 \
    do {                                                                                                              \
        t->n_checks++;                                                                                                \
        if (!(x)) {                                                                                                   \
            t->n_failed++;                                                                                            \
            fprintf(stderr, "rank %d %s:%d: check failed: %s: ", t->rank, __FILE__, __LINE__, #x);                    \
            fprintf(stderr, __VA_ARGS__);                                                                             \
            fputc('\n', stderr);                                                                                      \
        }                                                                                                             \
    } while (0)


/* Host buffer of n elements of t: rank r's inputs from element `base` on, or `fill`
 * everywhere when r < 0. */
static void *host_buf(int r, size_t n, comm_dtype t, size_t base, double fill) {
    void *b = calloc(n ? n : 1, comm_dtype_size(t));
    for (size_t i = 0; i < n; i++) put(b, t, i, r < 0 ? fill : val(r, base + i, t));
    return b;
}

/* Every device buffer of the tests has TAIL sentinel bytes after its elements: an op
 * that writes past its count changes them (the guarded backend maps whole pages, so it
 * would not fault). */
#define TAIL 8
#define TAIL_BYTE 0xa5

static void upload_bytes(ctx *t, void *dev, const void *h, size_t bytes) {
    if (bytes) t->be->ops->upload_raw(t->be, dev, h, bytes);
}

/* Device copy of host buffer h of n elements of t, then the sentinel tail. */
static void *dev_of(ctx *t, const void *h, size_t n, comm_dtype dt) {
    size_t bytes = n * comm_dtype_size(dt);
    char *d = (char *)be_alloc(t->be, (bytes + TAIL + 3) / 4);
    unsigned char tail[TAIL];
    memset(tail, TAIL_BYTE, TAIL);
    upload_bytes(t, d, h, bytes);
    upload_bytes(t, d + bytes, tail, TAIL);
    return d;
}

/* Device buffer of n elements of t, all `fill`. */
static void *dev_fill(ctx *t, size_t n, comm_dtype dt, double fill) {
    void *h = host_buf(-1, n, dt, 0, fill);
    void *d = dev_of(t, h, n, dt);
    free(h);
    return d;
}

/* Host copy of device buffer d of n elements of t (from dev_of); checks its tail. */
static void *host_of(ctx *t, const void *d, size_t n, comm_dtype dt) {
    size_t bytes = n * comm_dtype_size(dt);
    unsigned char *h = calloc(bytes + TAIL, 1);
    t->be->ops->download_raw(t->be, h, d, bytes + TAIL);
    int bad = 0;
    for (size_t k = 0; k < TAIL; k++) bad += h[bytes + k] != TAIL_BYTE;
    CHECK(bad == 0, "%d of the %d bytes after a %s buffer of %zu elements were written", bad, TAIL,
          comm_dtype_name(dt), n);
    return h;
}

static void check_same(ctx *t, const char *what, comm_dtype dt, const void *ref, const void *got, size_t n) {
    int bad = 0;
    for (size_t i = 0; i < n; i++) bad += memcmp((const char *)ref + i * comm_dtype_size(dt),
                                                 (const char *)got + i * comm_dtype_size(dt), comm_dtype_size(dt)) != 0;
    CHECK(bad == 0, "%s(%s, n %zu): %d elements differ from the MPI comm's", what, comm_dtype_name(dt), n, bad);
}

static void check_all_reduce(ctx *t, comm_dtype dt, comm_op op, size_t n, int in_place) {
    pc_err e = {{0}};
    void *ref = host_buf(t->rank, n, dt, 0, 0);
    int rc = comm_all_reduce(t->ref, ref, ref, n, dt, op, &e);
    CHECK(rc == 0, "reference all_reduce: %s", e.msg);
    void *h = host_buf(t->rank, n, dt, 0, 0);
    void *send = dev_of(t, h, n, dt);
    void *recv = in_place ? send : dev_fill(t, n, dt, 0);
    rc = comm_all_reduce(t->st, send, recv, n, dt, op, &e);
    CHECK(rc == 0, "staged all_reduce(%s): %s", comm_dtype_name(dt), e.msg);
    void *got = host_of(t, recv, n, dt);
    check_same(t, in_place ? "all_reduce in place" : "all_reduce", dt, ref, got, n);
    /* the reference itself: element 0 reduced over the ranks */
    double want = val(0, 0, dt);
    for (int r = 1; r < t->size; r++) want = op == COMM_SUM ? want + val(r, 0, dt) : fmax(want, val(r, 0, dt));
    CHECK(n == 0 || get(ref, dt, 0) == want, "all_reduce reference %g, want %g", get(ref, dt, 0), want);
    if (recv != send) be_free(t->be, recv);
    be_free(t->be, send);
    free(ref), free(h), free(got);
}

static void check_reduce(ctx *t, comm_dtype dt, size_t n, int root) {
    pc_err e = {{0}};
    int is_root = t->rank == root;
    void *ref_send = host_buf(t->rank, n, dt, 0, 0), *ref_recv = is_root ? host_buf(-1, n, dt, 0, 0) : NULL;
    void *send = dev_of(t, ref_send, n, dt), *recv = is_root ? dev_fill(t, n, dt, 0) : NULL;
    int rc = comm_reduce(t->ref, ref_send, ref_recv, n, dt, COMM_SUM, root, &e);
    CHECK(rc == 0, "reference reduce: %s", e.msg);
    rc = comm_reduce(t->st, send, recv, n, dt, COMM_SUM, root, &e);
    CHECK(rc == 0, "staged reduce(%s, root %d): %s", comm_dtype_name(dt), root, e.msg);
    if (is_root) {
        void *got = host_of(t, recv, n, dt);
        check_same(t, "reduce", dt, ref_recv, got, n);
        free(got);
        be_free(t->be, recv);
    }
    /* non-root send buffers are inputs only */
    void *after = host_of(t, send, n, dt);
    check_same(t, "reduce input kept", dt, ref_send, after, n);
    be_free(t->be, send);
    free(ref_send), free(ref_recv), free(after);
}

static void check_broadcast(ctx *t, comm_dtype dt, size_t n, int root) {
    pc_err e = {{0}};
    void *ref = t->rank == root ? host_buf(root, n, dt, 0, 0) : host_buf(-1, n, dt, 0, 1);
    void *dev = dev_of(t, ref, n, dt);
    int rc = comm_broadcast(t->ref, ref, n, dt, root, &e);
    CHECK(rc == 0, "reference broadcast: %s", e.msg);
    rc = comm_broadcast(t->st, dev, n, dt, root, &e);
    CHECK(rc == 0, "staged broadcast(%s, root %d): %s", comm_dtype_name(dt), root, e.msg);
    void *got = host_of(t, dev, n, dt);
    check_same(t, "broadcast", dt, ref, got, n);
    int bad = 0; /* the reference itself: the root's inputs everywhere */
    for (size_t i = 0; i < n; i++) bad += get(got, dt, i) != val(root, i, dt);
    CHECK(bad == 0, "broadcast(%s, n %zu, root %d): %d elements are not the root's", comm_dtype_name(dt), n, root,
          bad);
    be_free(t->be, dev);
    free(ref), free(got);
}

static void check_all_gather(ctx *t, comm_dtype dt, size_t n, int in_place) {
    pc_err e = {{0}};
    size_t total = (size_t)t->size * n;
    void *ref_send = host_buf(t->rank, n, dt, 0, 0), *ref_recv = host_buf(-1, total, dt, 0, 2);
    int rc = comm_all_gather(t->ref, ref_send, ref_recv, n, dt, &e);
    CHECK(rc == 0, "reference all_gather: %s", e.msg);
    void *recv = dev_fill(t, total, dt, 2), *send;
    if (in_place) { // this rank's piece already in place in recv (size, n)
        send = (char *)recv + (size_t)t->rank * n * comm_dtype_size(dt);
        upload_bytes(t, send, ref_send, n * comm_dtype_size(dt));
    } else {
        send = dev_of(t, ref_send, n, dt);
    }
    rc = comm_all_gather(t->st, send, recv, n, dt, &e);
    CHECK(rc == 0, "staged all_gather(%s): %s", comm_dtype_name(dt), e.msg);
    void *got = host_of(t, recv, total, dt);
    check_same(t, in_place ? "all_gather in place" : "all_gather", dt, ref_recv, got, total);
    int bad = 0; /* the reference itself: rank r's inputs in piece r */
    for (size_t i = 0; i < total; i++) bad += get(got, dt, i) != val((int)(i / n), i % n, dt);
    CHECK(bad == 0, "all_gather(%s, n %zu): %d elements are not their rank's", comm_dtype_name(dt), n, bad);
    if (!in_place) be_free(t->be, send);
    be_free(t->be, recv);
    free(ref_send), free(ref_recv), free(got);
}

/* Rank r sends r + 1 + extra elements; pieces sit at displacements with gaps of `gap`. */
static void check_all_gatherv(ctx *t, comm_dtype dt, size_t extra, size_t gap) {
    pc_err e = {{0}};
    size_t counts[16], displs[16], total = 0;
    for (int r = 0; r < t->size; r++) {
        counts[r] = (size_t)r + 1 + extra;
        displs[r] = total + gap;
        total = displs[r] + counts[r];
    }
    size_t mine = counts[t->rank];
    void *ref_send = host_buf(t->rank, mine, dt, 0, 0), *ref_recv = host_buf(-1, total, dt, 0, 3);
    void *recv = dev_of(t, ref_recv, total, dt), *send = dev_of(t, ref_send, mine, dt);
    int rc = comm_all_gatherv(t->ref, ref_send, mine, ref_recv, counts, displs, dt, &e);
    CHECK(rc == 0, "reference all_gatherv: %s", e.msg);
    rc = comm_all_gatherv(t->st, send, mine, recv, counts, displs, dt, &e);
    CHECK(rc == 0, "staged all_gatherv(%s): %s", comm_dtype_name(dt), e.msg);
    void *got = host_of(t, recv, total, dt);
    check_same(t, "all_gatherv", dt, ref_recv, got, total);
    int bad = 0; /* the reference itself: rank r's inputs at displs[r], the gaps kept (3) */
    for (size_t i = 0, r = 0; i < total; i++) {
        while (i >= displs[r] + counts[r]) r++;
        bad += get(got, dt, i) != (i < displs[r] ? 3 : val((int)r, i - displs[r], dt));
    }
    CHECK(bad == 0, "all_gatherv(%s, gap %zu): %d elements are not their rank's or the gap's", comm_dtype_name(dt),
          gap, bad);
    be_free(t->be, send), be_free(t->be, recv);
    free(ref_send), free(ref_recv), free(got);
}

static void check_reduce_scatter(ctx *t, comm_dtype dt, comm_op op, size_t n) {
    pc_err e = {{0}};
    size_t total = (size_t)t->size * n;
    void *ref_send = host_buf(t->rank, total, dt, 0, 0), *ref_recv = host_buf(-1, n, dt, 0, 0);
    void *send = dev_of(t, ref_send, total, dt), *recv = dev_of(t, ref_recv, n, dt);
    int rc = comm_reduce_scatter(t->ref, ref_send, ref_recv, n, dt, op, &e);
    CHECK(rc == 0, "reference reduce_scatter: %s", e.msg);
    rc = comm_reduce_scatter(t->st, send, recv, n, dt, op, &e);
    CHECK(rc == 0, "staged reduce_scatter(%s): %s", comm_dtype_name(dt), e.msg);
    void *got = host_of(t, recv, n, dt);
    check_same(t, "reduce_scatter", dt, ref_recv, got, n);
    be_free(t->be, send), be_free(t->be, recv);
    free(ref_send), free(ref_recv), free(got);
}

/* broadcast_group and (for a reducible dtype) reduce_group over pieces of one buffer,
 * gaps included. */
static void check_groups(ctx *t, comm_dtype dt, comm_op op) {
    pc_err e = {{0}};
    group_case g, gd;
    group_case_init(&g, t->size, NULL, dt);
    for (int reduce = 0; reduce < 1 + reducible(dt); reduce++) {
        void *ref = host_buf(t->rank, g.n, dt, 0, 0), *dev = dev_of(t, ref, g.n, dt);
        group_case_init(&g, t->size, ref, dt);
        group_case_init(&gd, t->size, dev, dt);
        const char *what = reduce ? "reduce_group" : "broadcast_group";
        int rc = reduce ? comm_reduce_group(t->ref, g.p, GROUP_PIECES, dt, op, &e)
                        : comm_broadcast_group(t->ref, g.p, GROUP_PIECES, dt, &e);
        CHECK(rc == 0, "reference %s: %s", what, e.msg);
        rc = reduce ? comm_reduce_group(t->st, gd.p, GROUP_PIECES, dt, op, &e)
                    : comm_broadcast_group(t->st, gd.p, GROUP_PIECES, dt, &e);
        CHECK(rc == 0, "staged %s(%s): %s", what, comm_dtype_name(dt), e.msg);
        void *got = host_of(t, dev, g.n, dt);
        check_same(t, what, dt, ref, got, g.n);
        int bad = 0; /* broadcast: each piece its root's inputs, the rest this rank's */
        for (size_t i = 0; i < g.n && !reduce; i++) {
            int k = group_piece_of(&g, i);
            bad += get(got, dt, i) != val(k >= 0 ? g.p[k].root : t->rank, i, dt);
        }
        CHECK(bad == 0, "broadcast_group(%s): %d elements are not their piece's root's", comm_dtype_name(dt), bad);
        be_free(t->be, dev);
        free(ref), free(got);
    }
}

static void run_all(ctx *t) {
    const comm_dtype types[] = {COMM_F32, COMM_F64, COMM_I32};
    pc_err e = {{0}};
    for (size_t k = 0; k < 3; k++) {
        comm_dtype dt = types[k];
        check_all_reduce(t, dt, COMM_SUM, 37, 0);
        check_all_reduce(t, dt, COMM_MAX, 37, 0);
        check_all_reduce(t, dt, COMM_SUM, 19, 1);
        check_reduce(t, dt, 23, 0);
        check_reduce(t, dt, 23, t->size - 1);
        check_broadcast(t, dt, 17, t->size - 1);
        check_broadcast(t, dt, 17, 0);
        check_all_gather(t, dt, 5, 0);
        check_all_gather(t, dt, 5, 1);
        check_all_gatherv(t, dt, 0, 0);
        check_all_gatherv(t, dt, 2, 3);
        check_reduce_scatter(t, dt, COMM_SUM, 6);
        check_reduce_scatter(t, dt, COMM_MAX, 3);
        check_groups(t, dt, COMM_SUM);
        check_groups(t, dt, COMM_MIN);
    }
    check_all_reduce(t, COMM_I64, COMM_SUM, 11, 0);
    /* u8: counts and displacements that are not whole 4-byte words */
    check_all_reduce(t, COMM_U8, COMM_MAX, 12, 0);
    check_all_reduce(t, COMM_U8, COMM_SUM, 7, 0);
    check_all_reduce(t, COMM_U8, COMM_SUM, 5, 1);
    check_reduce(t, COMM_U8, 3, t->size - 1);
    check_broadcast(t, COMM_U8, 4, 0);
    check_broadcast(t, COMM_U8, 3, 0);
    check_all_gather(t, COMM_U8, 8, 0);
    check_all_gather(t, COMM_U8, 5, 1);
    check_all_gatherv(t, COMM_U8, 0, 1);
    check_all_gatherv(t, COMM_U8, 2, 3);
    check_reduce_scatter(t, COMM_U8, COMM_SUM, 3);
    check_groups(t, COMM_U8, COMM_MAX);
    /* bf16 bit patterns, moved only: odd counts (3 elems = 6 bytes) included */
    check_broadcast(t, COMM_BF16, 17, t->size - 1);
    check_broadcast(t, COMM_BF16, 3, 0);
    check_all_gather(t, COMM_BF16, 3, 0);
    check_all_gather(t, COMM_BF16, 3, 1);
    check_all_gatherv(t, COMM_BF16, 0, 1);
    check_all_gatherv(t, COMM_BF16, 2, 3);
    check_groups(t, COMM_BF16, COMM_SUM);
    check_all_reduce(t, COMM_F32, COMM_SUM, 0, 0);
    CHECK(comm_barrier(t->st, &e) == 0, "staged barrier: %s", e.msg);
    CHECK(comm_barrier(t->ref, &e) == 0, "reference barrier: %s", e.msg);
}

/* Every reduction of bf16 is refused on every rank by the comm_* wrappers, naming the
 * op and the dtype, with no bytes counted on the staged or the host comm and the device
 * buffer untouched. */
static void check_bf16_refused(ctx *t) {
    const size_t n = 12; /* elems; reduce_scatter sends (size, n) */
    void *h = host_buf(t->rank, (size_t)t->size * n, COMM_BF16, 0, 0);
    char *dev = dev_of(t, h, (size_t)t->size * n, COMM_BF16);
    comm_piece p[2] = {{dev, 5, 0}, {dev + 5 * comm_dtype_size(COMM_BF16), 7, t->size - 1}};
    const char *ops[] = {"all_reduce", "reduce", "reduce_scatter", "reduce_group"};
    for (int k = 0; k < 4; k++) {
        pc_err e = {{0}};
        uint64_t st_bytes = t->st->bytes;
        int rc = k == 0   ? comm_all_reduce(t->st, dev, dev, n, COMM_BF16, COMM_SUM, &e)
                 : k == 1 ? comm_reduce(t->st, dev, dev, n, COMM_BF16, COMM_SUM, 0, &e)
                 : k == 2 ? comm_reduce_scatter(t->st, dev, dev, n, COMM_BF16, COMM_MAX, &e)
                          : comm_reduce_group(t->st, p, 2, COMM_BF16, COMM_SUM, &e);
        char want[64];
        snprintf(want, sizeof want, "rank %d: %s(bf16, ", t->rank, ops[k]);
        CHECK(rc == -1 && strstr(e.msg, want) && strstr(e.msg, "never reduced"), "bf16 %s: rc %d, %s", ops[k], rc,
              e.msg);
        CHECK(t->st->bytes == st_bytes && t->host->bytes == 0, "refused bf16 %s: staged bytes +%llu, host bytes %llu",
              ops[k], (unsigned long long)(t->st->bytes - st_bytes), (unsigned long long)t->host->bytes);
    }
    void *got = host_of(t, dev, (size_t)t->size * n, COMM_BF16);
    check_same(t, "refused bf16 reductions", COMM_BF16, h, got, (size_t)t->size * n);
    be_free(t->be, dev);
    free(h), free(got);
}

static void check_failures(ctx *t) {
    pc_err e = {{0}};
    check_bf16_refused(t);
    void *dev = be_alloc(t->be, 8);
    /* an inner error passes through */
    int rc = comm_reduce(t->st, dev, dev, 2, COMM_F32, COMM_SUM, t->size + 5, &e);
    CHECK(rc == -1 && strstr(e.msg, "is not a rank"), "reduce to a bad root: rc %d, %s", rc, e.msg);
    be_free(t->be, dev);
    /* the comm still works after the failures */
    check_all_reduce(t, COMM_F32, COMM_SUM, 5, 0);
}

int main(int argc, char **argv) {
    alarm(90); /* never hang a test run */
    MPI_Init(&argc, &argv);
    ctx tc = {0}, *t = &tc;
    MPI_Comm_rank(MPI_COMM_WORLD, &t->rank);
    MPI_Comm_size(MPI_COMM_WORLD, &t->size);
    if (t->size > 16) {
        fprintf(stderr, "test_comm_staged: at most 16 ranks\n");
        MPI_Abort(MPI_COMM_WORLD, 2);
    }
    pc_err e = {{0}};
    t->ref = comm_mpi_create(&e);
    t->host = t->ref ? comm_mpi_create(&e) : NULL;
    t->be = backend_guard_create(1);
    t->st = t->host ? comm_staged_create(t->host, t->be, &e) : NULL;
    if (!t->st) {
        fprintf(stderr, "rank %d: %s\n", t->rank, e.msg);
        MPI_Abort(MPI_COMM_WORLD, 1);
    }
    CHECK(comm_staged_create(NULL, t->be, &e) == NULL && strstr(e.msg, "host comm"), "NULL host: %s", e.msg);
    CHECK(t->st->rank == t->rank && t->st->size == t->size, "staged rank %d size %d", t->st->rank, t->st->size);
    CHECK(t->st->timeout_s == t->host->timeout_s && t->st->bytes == 0, "timeout %g bytes %llu", t->st->timeout_s,
          (unsigned long long)t->st->bytes);

    run_all(t);
    CHECK(t->st->bytes == t->ref->bytes && t->ref->bytes > 0, "staged bytes %llu, MPI comm bytes %llu",
          (unsigned long long)t->st->bytes, (unsigned long long)t->ref->bytes);
    CHECK(t->host->bytes == 0, "the host comm under the staged one counted %llu bytes",
          (unsigned long long)t->host->bytes);

    /* watchdog mode: the staged comm's timeout governs its calls, the host's is restored */
    t->st->timeout_s = 30;
    t->ref->timeout_s = 30;
    run_all(t);
    CHECK(t->host->timeout_s == 0, "host timeout_s left at %g", t->host->timeout_s);
    CHECK(t->st->bytes == t->ref->bytes, "watchdog: staged bytes %llu, MPI comm bytes %llu",
          (unsigned long long)t->st->bytes, (unsigned long long)t->ref->bytes);
    CHECK(t->host->bytes == 0, "host bytes %llu", (unsigned long long)t->host->bytes);

    /* in parts: staging of 12, 8 and 1 bytes cuts every buffer and group piece (1 to 12
     * elements a part, a group piece across parts); the same bytes and results, and the
     * staging never holds more than the parts need */
    size_t chunks[] = {12, 8, 1};
    for (size_t k = 0; k < PC_ARRAY_LEN(chunks); k++) {
        comm_staged_set_chunk(t->st, chunks[k]);
        run_all(t);
        CHECK(t->st->bytes == t->ref->bytes, "parts of %zu bytes: staged bytes %llu, MPI comm bytes %llu", chunks[k],
              (unsigned long long)t->st->bytes, (unsigned long long)t->ref->bytes);
        size_t bound = 2 * PC_MAX(chunks[k], (size_t)t->size * 8); /* two buffers, each max(chunk, ranks x 8) */
        CHECK(comm_staged_held(t->st) <= bound, "parts of %zu bytes: %zu bytes staged, more than %zu", chunks[k],
              comm_staged_held(t->st), bound);
    }
    comm_staged_set_chunk(t->st, COMM_STAGED_CHUNK);

    check_failures(t);

    comm_destroy(t->st);
    CHECK(comm_barrier(t->host, &e) == 0, "host comm after the staged one was destroyed: %s", e.msg);
    comm_destroy(t->host);
    comm_destroy(t->ref);
    backend_destroy(t->be);

    int failed = 0, checks = 0;
    MPI_Allreduce(&t->n_failed, &failed, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    MPI_Allreduce(&t->n_checks, &checks, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    if (t->rank == 0) printf("test_comm_staged on %d ranks: %d checks, %d failed\n", t->size, checks, failed);
    MPI_Finalize();
    return failed ? 1 : 0;
}
