/* test_comm: every collective of the MPI comm backend, run under mpirun -np 2 and 4.
 *
 * Each rank fills its inputs from a formula of (rank, index), runs the collective, and
 * checks the result against the same formula evaluated locally for all ranks. Every
 * check is repeated in three modes: blocking, piecewise (chunk limit of 3 elements, so
 * counts above it go in pieces), and watchdog (non-blocking + polling). Then the error
 * paths: a bad root (also a grouped piece's), a wrong all_gatherv count, and a
 * collective that one rank skips with timeout_s = 1, which the others must report as a
 * timeout naming the op. bf16 (moved, never reduced) goes through every collective
 * that moves data, with distinct bit patterns checked exactly; its reductions must be
 * refused on every rank before any MPI call, naming the op, counting no bytes. And
 * comm_node_ranks on one host and on two named nodes. */
#include <math.h>
#include <mpi.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "comm.h"
#include "comm_values.h"

typedef struct ctx {
    int rank, size;
    int n_checks, n_failed;
    const char *mode;
} ctx;

#define CHECK(x, ...)                                                                                                 \
    do {                                                                                                              \
        t->n_checks++;                                                                                                \
        if (!(x)) {                                                                                                   \
            t->n_failed++;                                                                                            \
            fprintf(stderr, "rank %d [%s] %s:%d: check failed: %s: ", t->rank, t->mode, __FILE__, __LINE__, #x);      \
            fprintf(stderr, __VA_ARGS__);                                                                             \
            fputc('\n', stderr);                                                                                      \
        }                                                                                                             \
    } while (0)

/* Every dtype; the reductions take the reducible() ones (all but bf16). */
static const comm_dtype all_types[] = {COMM_F32, COMM_F64, COMM_I32, COMM_I64, COMM_U8, COMM_BF16};
static const comm_op all_ops[] = {COMM_SUM, COMM_MAX, COMM_MIN};


static double reduced(int size, size_t i, comm_dtype t, comm_op op) {
    double acc = val(0, i, t);
    for (int r = 1; r < size; r++) {
        double v = val(r, i, t);
        acc = op == COMM_SUM ? acc + v : op == COMM_MAX ? fmax(acc, v) : fmin(acc, v);
    }
    return acc;
}

static void *alloc_filled(int r, size_t n, comm_dtype t, size_t base) {
    void *b = calloc(n ? n : 1, comm_dtype_size(t));
    for (size_t i = 0; i < n; i++) put(b, t, i, val(r, base + i, t));
    return b;
}

static void check_all_reduce(ctx *t, comm *c, comm_dtype dt, comm_op op, size_t n, int in_place) {
    pc_err e = {{0}};
    void *send = alloc_filled(t->rank, n, dt, 0);
    void *recv = in_place ? send : calloc(n, comm_dtype_size(dt));
    int rc = comm_all_reduce(c, send, recv, n, dt, op, &e);
    CHECK(rc == 0, "all_reduce %s: %s", comm_dtype_name(dt), e.msg);
    int bad = 0;
    for (size_t i = 0; i < n && rc == 0; i++) bad += get(recv, dt, i) != reduced(t->size, i, dt, op);
    CHECK(bad == 0, "all_reduce(%s, op %d, n %zu, in_place %d): %d wrong elements", comm_dtype_name(dt), (int)op, n,
          in_place, bad);
    if (!in_place) free(recv);
    free(send);
}

static void check_reduce(ctx *t, comm *c, comm_dtype dt, comm_op op, size_t n, int root, int in_place) {
    pc_err e = {{0}};
    void *send = alloc_filled(t->rank, n, dt, 0);
    void *recv = t->rank == root ? (in_place ? send : calloc(n, comm_dtype_size(dt))) : NULL;
    int rc = comm_reduce(c, send, recv, n, dt, op, root, &e);
    CHECK(rc == 0, "reduce: %s", e.msg);
    if (t->rank == root && rc == 0) {
        int bad = 0;
        for (size_t i = 0; i < n; i++) bad += get(recv, dt, i) != reduced(t->size, i, dt, op);
        CHECK(bad == 0, "reduce(%s, n %zu, root %d): %d wrong elements", comm_dtype_name(dt), n, root, bad);
    }
    if (recv && recv != send) free(recv);
    free(send);
}

static void check_broadcast(ctx *t, comm *c, comm_dtype dt, size_t n, int root) {
    pc_err e = {{0}};
    void *buf = t->rank == root ? alloc_filled(root, n, dt, 0) : calloc(n, comm_dtype_size(dt));
    int rc = comm_broadcast(c, buf, n, dt, root, &e);
    CHECK(rc == 0, "broadcast: %s", e.msg);
    int bad = 0;
    for (size_t i = 0; i < n && rc == 0; i++) bad += get(buf, dt, i) != val(root, i, dt);
    CHECK(bad == 0, "broadcast(%s, n %zu, root %d): %d wrong elements", comm_dtype_name(dt), n, root, bad);
    free(buf);
}

static void check_all_gather(ctx *t, comm *c, comm_dtype dt, size_t n, int in_place) {
    pc_err e = {{0}};
    size_t es = comm_dtype_size(dt);
    char *recv = calloc((size_t)t->size * n + 1, es);
    void *send = alloc_filled(t->rank, n, dt, 0);
    if (in_place) {
        memcpy(recv + (size_t)t->rank * n * es, send, n * es);
        free(send);
        send = recv + (size_t)t->rank * n * es;
    }
    int rc = comm_all_gather(c, send, recv, n, dt, &e);
    CHECK(rc == 0, "all_gather: %s", e.msg);
    int bad = 0;
    for (int r = 0; r < t->size && rc == 0; r++)
        for (size_t i = 0; i < n; i++) bad += get(recv, dt, (size_t)r * n + i) != val(r, i, dt);
    CHECK(bad == 0, "all_gather(%s, n %zu, in_place %d): %d wrong elements", comm_dtype_name(dt), n, in_place, bad);
    if (!in_place) free(send);
    free(recv);
}

/* Uneven pieces, one of them empty, laid out with gaps and out of rank order. */
static void check_all_gatherv(ctx *t, comm *c, comm_dtype dt, int in_place) {
    pc_err e = {{0}};
    size_t counts[16], displs[16], total = 0;
    for (int r = 0; r < t->size; r++) counts[r] = r == 1 ? 0 : (size_t)(r * 5 + 2);
    for (int r = t->size - 1; r >= 0; r--) {
        displs[r] = total + 1; /* one-element gap before each piece */
        total += counts[r] + 1;
    }
    size_t es = comm_dtype_size(dt);
    char *recv = calloc(total + 1, es);
    for (size_t i = 0; i < total; i++) put(recv, dt, i, 99);
    void *send = alloc_filled(t->rank, counts[t->rank], dt, 100);
    if (in_place) {
        memcpy(recv + displs[t->rank] * es, send, counts[t->rank] * es);
        free(send);
        send = recv + displs[t->rank] * es;
    }
    int rc = comm_all_gatherv(c, send, counts[t->rank], recv, counts, displs, dt, &e);
    CHECK(rc == 0, "all_gatherv: %s", e.msg);
    int bad = 0;
    for (int r = 0; r < t->size && rc == 0; r++) {
        for (size_t i = 0; i < counts[r]; i++) bad += get(recv, dt, displs[r] + i) != val(r, 100 + i, dt);
        bad += get(recv, dt, displs[r] - 1) != 99; /* gaps untouched */
    }
    CHECK(bad == 0, "all_gatherv(%s, in_place %d): %d wrong elements", comm_dtype_name(dt), in_place, bad);
    if (!in_place) free(send);
    free(recv);
}

static void check_reduce_scatter(ctx *t, comm *c, comm_dtype dt, comm_op op, size_t n) {
    pc_err e = {{0}};
    void *send = alloc_filled(t->rank, (size_t)t->size * n, dt, 0);
    void *recv = calloc(n + 1, comm_dtype_size(dt));
    int rc = comm_reduce_scatter(c, send, recv, n, dt, op, &e);
    CHECK(rc == 0, "reduce_scatter: %s", e.msg);
    int bad = 0;
    for (size_t i = 0; i < n && rc == 0; i++)
        bad += get(recv, dt, i) != reduced(t->size, (size_t)t->rank * n + i, dt, op);
    CHECK(bad == 0, "reduce_scatter(%s, op %d, n %zu): %d wrong elements", comm_dtype_name(dt), (int)op, n, bad);
    free(send);
    free(recv);
}

/* broadcast_group, then (for a reducible dtype) reduce_group (op) over the same pieces:
 * each piece holds its root's values, or its sum at the root only; the gaps and the
 * other ranks' pieces keep this rank's values. */
static void check_groups(ctx *t, comm *c, comm_dtype dt, comm_op op) {
    pc_err e = {{0}};
    group_case g;
    group_case_init(&g, t->size, NULL, dt);
    /* broadcast; reduce; reduce started in two parts, both in flight, then waited for */
    for (int mode = 0; mode < (reducible(dt) ? 3 : 1); mode++) {
        int reduce = mode > 0, half = GROUP_PIECES / 2;
        void *b = alloc_filled(t->rank, g.n, dt, 0);
        group_case_init(&g, t->size, b, dt);
        int rc = mode == 0 ? comm_broadcast_group(c, g.p, GROUP_PIECES, dt, &e)
                 : mode == 1 ? comm_reduce_group(c, g.p, GROUP_PIECES, dt, op, &e)
                             : comm_reduce_group_start(c, g.p, half, dt, op, &e);
        if (mode == 2 && rc == 0) rc = comm_reduce_group_start(c, g.p + half, GROUP_PIECES - half, dt, op, &e);
        if (mode == 2 && rc == 0) rc = comm_wait(c, &e);
        CHECK(rc == 0, "%s: %s", reduce ? "reduce_group" : "broadcast_group", e.msg);
        int bad = 0;
        for (size_t i = 0; i < g.n && rc == 0; i++) {
            int k = group_piece_of(&g, i);
            double want = val(t->rank, i, dt);
            if (k >= 0 && !reduce) want = val(g.p[k].root, i, dt);
            if (k >= 0 && reduce && g.p[k].root == t->rank) want = reduced(t->size, i, dt, op);
            bad += get(b, dt, i) != want;
        }
        CHECK(bad == 0, "%s(%s, op %d): %d wrong elements", reduce ? "reduce_group" : "broadcast_group",
              comm_dtype_name(dt), (int)op, bad);
        free(b);
    }
}

static void run_all(ctx *t, comm *c) {
    const size_t sizes[] = {0, 1, 7, 1000};
    for (size_t ti = 0; ti < PC_ARRAY_LEN(all_types); ti++) {
        comm_dtype dt = all_types[ti];
        for (size_t si = 0; si < PC_ARRAY_LEN(sizes); si++) {
            size_t n = sizes[si];
            for (size_t oi = 0; oi < PC_ARRAY_LEN(all_ops) && reducible(dt); oi++) {
                check_all_reduce(t, c, dt, all_ops[oi], n, 0);
                check_reduce(t, c, dt, all_ops[oi], n, t->size - 1, 0);
                check_reduce_scatter(t, c, dt, all_ops[oi], n);
            }
            if (reducible(dt)) {
                check_all_reduce(t, c, dt, COMM_SUM, n, 1);
                check_reduce(t, c, dt, COMM_MAX, n, 0, 1);
            }
            check_broadcast(t, c, dt, n, 1 % t->size);
            check_all_gather(t, c, dt, n, 0);
            check_all_gather(t, c, dt, n, 1);
        }
        check_all_gatherv(t, c, dt, 0);
        check_all_gatherv(t, c, dt, 1);
        for (size_t oi = 0; oi < PC_ARRAY_LEN(all_ops); oi++) check_groups(t, c, dt, all_ops[oi]);
        check_broadcast(t, c, dt, 5, 0); /* another root */
    }
    pc_err e = {{0}};
    CHECK(comm_barrier(c, &e) == 0, "barrier: %s", e.msg);
}

static void check_errors(ctx *t, comm *c) {
    pc_err e = {{0}};
    float x = 1;
    CHECK(comm_reduce(c, &x, &x, 1, COMM_F32, COMM_SUM, t->size, &e) == -1, "reduce to a missing root succeeded");
    CHECK(strstr(e.msg, "root") != NULL, "message: %s", e.msg);
    CHECK(comm_broadcast(c, &x, 1, COMM_F32, -1, &e) == -1, "broadcast from root -1 succeeded");
    /* Every rank lies about its count identically, so no rank enters MPI. */
    size_t counts[16], displs[16];
    for (int r = 0; r < t->size; r++) counts[r] = 1, displs[r] = (size_t)r;
    float recv[16];
    CHECK(comm_all_gatherv(c, &x, 2, recv, counts, displs, COMM_F32, &e) == -1, "all_gatherv with a wrong count");
    char want[64];
    snprintf(want, sizeof want, "rank %d: all_gatherv(f32", t->rank);
    CHECK(strstr(e.msg, want) != NULL, "message: %s", e.msg);
    /* a piece rooted past the ranks: refused before any piece starts */
    comm_piece p[2] = {{&x, 1, 0}, {recv, 1, t->size}};
    CHECK(comm_broadcast_group(c, p, 2, COMM_F32, &e) == -1, "broadcast_group to a missing root succeeded");
    snprintf(want, sizeof want, "rank %d: broadcast_group: piece 1's root %d is not a rank", t->rank, t->size);
    CHECK(strcmp(e.msg, want) == 0, "message: %s", e.msg);
    CHECK(comm_reduce_group(c, p, 2, COMM_F32, COMM_SUM, &e) == -1 && strstr(e.msg, "reduce_group"),
          "reduce_group to a missing root: %s", e.msg);
}

/* Every reduction of bf16 fails on every rank before reaching MPI (so no rank waits
 * for another), with a message naming the rank, op, dtype and count, and counts no
 * bytes; bf16 moves count 2 bytes an element, and the comm stays usable. */
static void check_bf16_refused(ctx *t, comm *c) {
    uint16_t buf[12 * 16] = {0}; /* (size, 12) for reduce_scatter */
    comm_piece p[2] = {{buf, 5, 0}, {buf + 5, 7, t->size - 1}};
    const char *ops[] = {"all_reduce", "reduce", "reduce_scatter", "reduce_group"};
    for (int k = 0; k < 4; k++) {
        pc_err e = {{0}};
        uint64_t bytes = c->bytes;
        int rc = k == 0   ? comm_all_reduce(c, buf, buf, 12, COMM_BF16, COMM_SUM, &e)
                 : k == 1 ? comm_reduce(c, buf, buf, 12, COMM_BF16, COMM_MAX, 0, &e)
                 : k == 2 ? comm_reduce_scatter(c, buf, buf, 12, COMM_BF16, COMM_SUM, &e)
                          : comm_reduce_group(c, p, 2, COMM_BF16, COMM_MIN, &e);
        char want[160];
        snprintf(want, sizeof want, "rank %d: %s(bf16, 12 elems): bf16 is moved, never reduced (reduce in f32)",
                 t->rank, ops[k]);
        CHECK(rc == -1 && strcmp(e.msg, want) == 0, "bf16 %s: rc %d, message '%s', expected '%s'", ops[k], rc, e.msg,
              want);
        CHECK(c->bytes == bytes, "refused bf16 %s counted %llu bytes", ops[k],
              (unsigned long long)(c->bytes - bytes));
    }
    pc_err e = {{0}};
    uint64_t bytes = c->bytes;
    for (size_t i = 0; i < 12; i++) buf[i] = t->rank == 0 ? (uint16_t)val(0, i, COMM_BF16) : 0;
    int rc = comm_broadcast(c, buf, 12, COMM_BF16, 0, &e);
    CHECK(rc == 0, "bf16 broadcast after the refusals: %s", e.msg);
    int bad = 0;
    for (size_t i = 0; i < 12 && rc == 0; i++) bad += buf[i] != (uint16_t)val(0, i, COMM_BF16);
    CHECK(bad == 0, "bf16 broadcast after the refusals: %d wrong elements", bad);
    CHECK(c->bytes - bytes == 24, "bf16 broadcast of 12 elems counted %llu bytes",
          (unsigned long long)(c->bytes - bytes));
}

/* Rank `skip` skips an all_reduce; the others must time out, naming it, and its roll call
 * (rollcall.h) must name the rank that did not answer: rank 0's verdict, in every
 * message, or, when rank 0 is the one that skipped, that rank 0 sent none. The skipping
 * rank then joins late (told over MPI_COMM_WORLD), so that the stale collective completes
 * and every rank can finalize. */
static void check_timeout(ctx *t, int skip) {
    pc_err e = {{0}};
    comm *c = comm_mpi_create(&e);
    CHECK(c != NULL, "comm_mpi_create: %s", e.msg);
    if (!c) return;
    c->timeout_s = 1; /* the roll call's grace: 1 s */
    int teller = skip == 0 ? 1 : 0;
    int32_t v = t->rank + 1, sum = 0;
    if (t->rank != skip) {
        double t0 = pc_now();
        int rc = comm_all_reduce(c, &v, &sum, 1, COMM_I32, COMM_SUM, &e);
        double dt = pc_now() - t0;
        CHECK(rc == -1, "all_reduce with a missing rank returned %d", rc);
        char host[64] = "";
        gethostname(host, sizeof host - 1);
        char want[512];
        int n = snprintf(want, sizeof want, "rank %d: all_reduce timed out after 1 s (a peer rank may have died or hung)",
                         t->rank);
        if (skip == 0)
            snprintf(want + n, sizeof want - (size_t)n,
                     "; rank 0 (host %s) sent no roll call of collective 1 within 3 s (it may be hung itself, or "
                     "still waiting in an earlier collective: see its log)",
                     host);
        else
            snprintf(want + n, sizeof want - (size_t)n,
                     "; roll call of collective 1%s: rank %d (host %s) did not answer within 1 s (hung, stopped or "
                     "dead)",
                     t->rank == 0 ? "" : " by rank 0", skip, host);
        CHECK(strcmp(e.msg, want) == 0, "message: '%s', expected '%s'", e.msg, want);
        /* the timeout, then rank 0's grace (1 s) for the verdict, or 3 s waiting for it */
        double lo = skip == 0 ? 4.0 : t->rank == 0 ? 2.0 : 1.0, hi = lo + 2.0;
        CHECK(dt >= lo && dt < hi, "timed out after %.2f s (expected %.0f to %.0f)", dt, lo, hi);
        rc = comm_barrier(c, &e);
        CHECK(rc == -1 && strstr(e.msg, "earlier all_reduce timed out") != NULL, "after a timeout: rc %d '%s'", rc,
              e.msg);
        if (t->rank == teller) {
            int go = 1;
            MPI_Send(&go, 1, MPI_INT, skip, 77, MPI_COMM_WORLD);
        }
        comm_destroy(c); /* lets the late collective finish */
    } else {
        int go = 0;
        MPI_Recv(&go, 1, MPI_INT, teller, 77, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
        c->timeout_s = 10;
        int rc = comm_all_reduce(c, &v, &sum, 1, COMM_I32, COMM_SUM, &e);
        CHECK(rc == 0, "late all_reduce: %s", e.msg);
        CHECK(sum == t->size * (t->size + 1) / 2, "late all_reduce sum %d", sum);
        comm_destroy(c);
    }
}

/* comm_node_ranks: every rank of this test runs on one host, so local = rank of size;
 * with PROJCOMP_NODE naming two nodes by rank parity, local counts the lower ranks of the
 * same parity, and each node's size is its share. */
static void check_node_ranks(ctx *t, comm *c) {
    pc_err e = {{0}};
    int local = -1, n = -1;
    char name[COMM_NODE_NAME_MAX];
    unsetenv("PROJCOMP_NODE");
    CHECK(comm_node_ranks(c, &local, &n, name, &e) == 0, "%s", e.msg);
    CHECK(local == t->rank && n == t->size, "one host: local %d of %d", local, n);
    setenv("PROJCOMP_NODE", t->rank % 2 ? "node-odd" : "node-even", 1);
    CHECK(comm_node_ranks(c, &local, &n, name, &e) == 0, "%s", e.msg);
    CHECK(local == t->rank / 2 && n == (t->size + 1 - t->rank % 2) / 2, "two nodes: local %d of %d", local, n);
    CHECK(strcmp(name, t->rank % 2 ? "node-odd" : "node-even") == 0, "node name '%s'", name);
    unsetenv("PROJCOMP_NODE");
}

int main(int argc, char **argv) {
    alarm(110); /* never hang a test run (the watchdog+piecewise mode alone takes ~40 s on 2 cores) */
    MPI_Init(&argc, &argv);
    ctx tc = {0}, *t = &tc;
    MPI_Comm_rank(MPI_COMM_WORLD, &t->rank);
    MPI_Comm_size(MPI_COMM_WORLD, &t->size);
    if (t->size > 16) {
        fprintf(stderr, "test_comm: at most 16 ranks\n");
        MPI_Abort(MPI_COMM_WORLD, 2);
    }
    pc_err e = {{0}};
    comm *c = comm_mpi_create(&e);
    if (!c) {
        fprintf(stderr, "rank %d: %s\n", t->rank, e.msg);
        MPI_Abort(MPI_COMM_WORLD, 1);
    }
    CHECK(c->rank == t->rank && c->size == t->size, "rank %d size %d", c->rank, c->size);
    t->mode = "blocking";
    run_all(t, c);
    t->mode = "piecewise";
    comm_mpi_set_max_chunk(c, 3);
    run_all(t, c);
    t->mode = "watchdog";
    comm_mpi_set_max_chunk(c, (size_t)-1);
    c->timeout_s = 30;
    run_all(t, c);
    t->mode = "watchdog+piecewise";
    comm_mpi_set_max_chunk(c, 3);
    run_all(t, c);
    t->mode = "node ranks";
    check_node_ranks(t, c);
    t->mode = "errors";
    check_errors(t, c);
    t->mode = "bf16 refused";
    check_bf16_refused(t, c);
    comm_destroy(c);
    t->mode = "timeout";
    check_timeout(t, t->size - 1);
    MPI_Barrier(MPI_COMM_WORLD);
    t->mode = "timeout of rank 0";
    check_timeout(t, 0);

    int failed = 0, checks = 0;
    MPI_Allreduce(&t->n_failed, &failed, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    MPI_Allreduce(&t->n_checks, &checks, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    if (t->rank == 0) printf("test_comm on %d ranks: %d checks, %d failed\n", t->size, checks, failed);
    MPI_Finalize();
    return failed ? 1 : 0;
}
