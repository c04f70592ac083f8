/* test_nccl: every collective of the NCCL comm on device buffers, under mpirun.
 *
 * Rank r uses device r % n_devices; each collective's result is read back and checked
 * against values computed locally from the rank-dependent inputs (exact: the inputs
 * are small integers). Every reducible dtype goes through all_reduce; sum, max and min
 * through all_reduce, reduce, reduce_scatter and the grouped reduce (after a grouped
 * broadcast). Every dtype, bf16 (moved, never reduced) included, goes through broadcast,
 * all_gather, all_gatherv and broadcast_group with comm_values.h's inputs (for bf16
 * distinct bit patterns), checked exactly; bf16 reductions must be refused naming the
 * op, counting no bytes. The error paths (bad root, send count that differs from
 * counts[rank]) must fail naming the rank. With two ranks or more, the
 * watchdog: a collective the last rank skips fails on the others within timeout_s.
 * Exit 77 without a GPU, or when there are fewer devices than ranks (NCCL needs one
 * device per rank). Built with -DPC_TEST_EMU against nccl_emu.c (NCCL over MPI on host
 * memory), every rank uses the one emulated device and the watchdog check is left out. */
#include <cuda_runtime.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "comm.h"
#include "comm_nccl.h"
#include "comm_values.h"
#include "device.h"
#include "util.h"

static int failures, checks, rank_g;

static void expect(int ok, const char *what)
{
    checks++;
    if (!ok) {
        failures++;
        printf("rank %d: FAIL %s\n", rank_g, what);
    }
}

static void *dev_alloc(size_t bytes)
{
    void *p = NULL;
    if (cudaMalloc(&p, bytes ? bytes : 1) != cudaSuccess) {
        fprintf(stderr, "rank %d: cudaMalloc(%zu) failed\n", rank_g, bytes);
        exit(1);
    }
    return p;
}

static void h2d(void *d, const void *h, size_t bytes)
{
    if (cudaMemcpy(d, h, bytes, cudaMemcpyHostToDevice) != cudaSuccess) exit(1);
}

static void d2h(void *h, const void *d, size_t bytes)
{
    if (cudaMemcpy(h, d, bytes, cudaMemcpyDeviceToHost) != cudaSuccess) exit(1);
}

/* Value of element i contributed by rank r: small integers, exact in every dtype. */
static double input(int r, size_t i) { return (double)((r + 1) * ((int)(i % 13) + 1) % 97); }

static double combine(comm_op op, int size, size_t i)
{
    double acc = input(0, i);
    for (int r = 1; r < size; r++) {
        double v = input(r, i);
        acc = op == COMM_SUM ? acc + v : op == COMM_MAX ? (v > acc ? v : acc) : (v < acc ? v : acc);
    }
    return acc;
}

static void test_all_reduce(comm *c, comm_dtype t, comm_op op, int in_place)
{
    const size_t n = 1000;
    size_t es = comm_dtype_size(t);
    char *h = pc_malloc(n * es);
    for (size_t i = 0; i < n; i++) put(h, t, i, input(c->rank, i));
    void *send = dev_alloc(n * es), *recv = in_place ? send : dev_alloc(n * es);
    h2d(send, h, n * es);
    pc_err e = {{0}};
    int rc = comm_all_reduce(c, send, recv, n, t, op, &e);
    char what[1200];
    snprintf(what, sizeof what, "all_reduce(%s, op %d%s): %s", comm_dtype_name(t), (int)op,
             in_place ? ", in place" : "", rc ? e.msg : "values");
    d2h(h, recv, n * es);
    int ok = rc == 0;
    for (size_t i = 0; i < n && ok; i++) ok = get(h, t, i) == combine(op, c->size, i);
    expect(ok, what);
    cudaFree(send);
    if (!in_place) cudaFree(recv);
    free(h);
}

static void test_reduce(comm *c, comm_op op)
{
    const size_t n = 777;
    float *h = pc_alloc_f32(n);
    for (size_t i = 0; i < n; i++) h[i] = (float)input(c->rank, i);
    float *send = dev_alloc(n * 4), *recv = dev_alloc(n * 4);
    h2d(send, h, n * 4);
    int root = c->size - 1;
    pc_err e = {{0}};
    int rc = comm_reduce(c, send, recv, n, COMM_F32, op, root, &e);
    int ok = rc == 0;
    if (c->rank == root) {
        d2h(h, recv, n * 4);
        for (size_t i = 0; i < n && ok; i++) ok = h[i] == (float)combine(op, c->size, i);
    }
    expect(ok, "reduce to the last rank");
    cudaFree(send);
    cudaFree(recv);
    free(h);
}

static void test_broadcast(comm *c)
{
    const size_t n = 4097;
    int64_t *h = pc_malloc(n * 8);
    int root = c->size > 1 ? 1 : 0;
    for (size_t i = 0; i < n; i++) h[i] = c->rank == root ? (int64_t)i * 1000003 : -1;
    int64_t *d = dev_alloc(n * 8);
    h2d(d, h, n * 8);
    pc_err e = {{0}};
    int ok = comm_broadcast(c, d, n, COMM_I64, root, &e) == 0;
    d2h(h, d, n * 8);
    for (size_t i = 0; i < n && ok; i++) ok = h[i] == (int64_t)i * 1000003;
    expect(ok, "broadcast(i64)");
    cudaFree(d);
    free(h);
}

static void test_all_gather(comm *c, int in_place)
{
    const size_t n = 301;
    size_t total = n * (size_t)c->size;
    double *h = pc_malloc(total * 8);
    for (size_t i = 0; i < n; i++) h[i] = input(c->rank, i) + 0.25;
    double *recv = dev_alloc(total * 8), *send = in_place ? recv + (size_t)c->rank * n : dev_alloc(n * 8);
    h2d(send, h, n * 8);
    pc_err e = {{0}};
    int ok = comm_all_gather(c, send, recv, n, COMM_F64, &e) == 0;
    d2h(h, recv, total * 8);
    for (int r = 0; r < c->size && ok; r++)
        for (size_t i = 0; i < n && ok; i++) ok = h[(size_t)r * n + i] == input(r, i) + 0.25;
    expect(ok, in_place ? "all_gather(f64, in place)" : "all_gather(f64)");
    cudaFree(recv);
    if (!in_place) cudaFree(send);
    free(h);
}

/* broadcast_group, then reduce_group (op) over comm_values.h's pieces of one device
 * buffer: a piece holds its root's values, or their combination at the root only; gaps
 * and the other ranks' pieces keep this rank's values. */
static void test_groups(comm *c, comm_op op)
{
    group_case g;
    group_case_init(&g, c->size, NULL, COMM_F32);
    float *h = pc_alloc_f32(g.n), *d = dev_alloc(g.n * 4);
    group_case_init(&g, c->size, d, COMM_F32);
    /* broadcast; reduce; reduce started in two parts, both in flight, then waited for */
    for (int mode = 0; mode < 3; mode++) {
        int reduce = mode > 0, half = GROUP_PIECES / 2;
        for (size_t i = 0; i < g.n; i++) h[i] = (float)input(c->rank, i);
        h2d(d, h, g.n * 4);
        pc_err e = {{0}};
        int rc = mode == 0 ? comm_broadcast_group(c, g.p, GROUP_PIECES, COMM_F32, &e)
                 : mode == 1 ? comm_reduce_group(c, g.p, GROUP_PIECES, COMM_F32, op, &e)
                             : comm_reduce_group_start(c, g.p, half, COMM_F32, op, &e);
        if (mode == 2 && rc == 0) rc = comm_reduce_group_start(c, g.p + half, GROUP_PIECES - half, COMM_F32, op, &e);
        if (mode == 2 && rc == 0) rc = comm_wait(c, &e);
        d2h(h, d, g.n * 4);
        int ok = rc == 0;
        for (size_t i = 0; i < g.n && ok; i++) {
            int k = group_piece_of(&g, i);
            double want = input(c->rank, i);
            if (k >= 0 && !reduce) want = input(g.p[k].root, i);
            if (k >= 0 && reduce && g.p[k].root == c->rank) want = combine(op, c->size, i);
            ok = h[i] == (float)want;
        }
        char what[1100];
        snprintf(what, sizeof what, "%s(f32, op %d)%s: %s", reduce ? "reduce_group" : "broadcast_group", (int)op,
                 mode == 2 ? " started" : "", rc ? e.msg : "values");
        expect(ok, what);
    }
    cudaFree(d);
    free(h);
}

/* Uneven counts with gaps between the pieces; in place: send is recv + displs[rank]. */
static void test_all_gatherv(comm *c, int in_place)
{
    size_t *counts = pc_calloc((size_t)c->size, sizeof(size_t)), *displs = pc_calloc((size_t)c->size, sizeof(size_t));
    size_t total = 0;
    for (int r = 0; r < c->size; r++) {
        counts[r] = r == 1 ? 0 : (size_t)(100 * r + 17); /* rank 1 (if any) contributes nothing */
        displs[r] = total + 3;                           /* gaps between pieces stay untouched */
        total = displs[r] + counts[r];
    }
    int32_t *h = pc_malloc((total + 1) * 4);
    for (size_t i = 0; i < total; i++) h[i] = -7;
    int32_t *recv = dev_alloc(total * 4);
    int32_t *send = in_place ? recv + displs[c->rank] : dev_alloc((counts[c->rank] + 1) * 4);
    h2d(recv, h, total * 4);
    for (size_t i = 0; i < counts[c->rank]; i++) h[i] = (int32_t)input(c->rank, i);
    h2d(send, h, counts[c->rank] * 4);
    pc_err e = {{0}};
    int ok = comm_all_gatherv(c, send, counts[c->rank], recv, counts, displs, COMM_I32, &e) == 0;
    d2h(h, recv, total * 4);
    for (size_t i = 0; i < total && ok; i++) {
        int32_t want = -7;
        for (int r = 0; r < c->size; r++)
            if (i >= displs[r] && i < displs[r] + counts[r]) want = (int32_t)input(r, i - displs[r]);
        ok = h[i] == want;
    }
    expect(ok, in_place ? "all_gatherv(i32, uneven counts, gaps, in place)" : "all_gatherv(i32, uneven counts, gaps)");
    if (!in_place) { /* a send count that differs from counts[rank] fails naming the rank */
        char want_msg[32];
        snprintf(want_msg, sizeof want_msg, "rank %d:", c->rank);
        int rc = comm_all_gatherv(c, send, counts[c->rank] + 1, recv, counts, displs, COMM_I32, &e);
        expect(rc == -1 && strstr(e.msg, want_msg) && strstr(e.msg, "all_gatherv"),
               "all_gatherv send count mismatch fails");
        cudaFree(send);
    }
    cudaFree(recv);
    free(h);
    free(counts);
    free(displs);
}

/* ---- moves of any dtype, comm_values.h's inputs (rank r's element i: val(r, i, t)) */

static void *dev_copy(const void *h, size_t bytes)
{
    void *d = dev_alloc(bytes);
    h2d(d, h, bytes);
    return d;
}

static void expect_moved(int rc, const pc_err *e, int bad, const char *op, comm_dtype t)
{
    char what[1200];
    snprintf(what, sizeof what, "%s(%s): %s", op, comm_dtype_name(t), rc ? e->msg : bad ? "wrong values" : "values");
    expect(rc == 0 && bad == 0, what);
}

/* An odd count broadcast from the last rank. */
static void test_broadcast_dt(comm *c, comm_dtype t)
{
    const size_t n = 1001;
    size_t es = comm_dtype_size(t);
    int root = c->size - 1;
    char *h = pc_malloc(n * es);
    for (size_t i = 0; i < n; i++) put(h, t, i, val(c->rank, i, t));
    void *d = dev_copy(h, n * es);
    pc_err e = {{0}};
    int rc = comm_broadcast(c, d, n, t, root, &e), bad = 0;
    d2h(h, d, n * es);
    for (size_t i = 0; i < n && rc == 0; i++) bad += get(h, t, i) != val(root, i, t);
    expect_moved(rc, &e, bad, "broadcast", t);
    cudaFree(d);
    free(h);
}

/* An odd count per rank into recv (size, n); in place: send is this rank's piece of recv. */
static void test_all_gather_dt(comm *c, comm_dtype t, int in_place)
{
    const size_t n = 301;
    size_t es = comm_dtype_size(t), total = n * (size_t)c->size, mine = (size_t)c->rank * n * es;
    char *h = pc_malloc(total * es);
    for (size_t i = 0; i < total; i++) put(h, t, i, 0);
    for (size_t i = 0; i < n; i++) put(h + mine, t, i, val(c->rank, i, t));
    char *recv = dev_copy(h, total * es);
    void *send = in_place ? recv + mine : dev_copy(h + mine, n * es);
    pc_err e = {{0}};
    int rc = comm_all_gather(c, send, recv, n, t, &e), bad = 0;
    d2h(h, recv, total * es);
    for (size_t i = 0; i < total && rc == 0; i++) bad += get(h, t, i) != val((int)(i / n), i % n, t);
    expect_moved(rc, &e, bad, in_place ? "all_gather in place" : "all_gather", t);
    if (!in_place) cudaFree(send);
    cudaFree(recv);
    free(h);
}

/* Uneven odd counts (rank 1, if any, contributes nothing) with gaps of 3 elements
 * between the pieces, which keep their fill (7). */
static void test_all_gatherv_dt(comm *c, comm_dtype t)
{
    size_t *counts = pc_calloc((size_t)c->size, sizeof(size_t)), *displs = pc_calloc((size_t)c->size, sizeof(size_t));
    size_t total = 0, es = comm_dtype_size(t);
    for (int r = 0; r < c->size; r++) {
        counts[r] = r == 1 ? 0 : (size_t)(50 * r + 13);
        displs[r] = total + 3;
        total = displs[r] + counts[r];
    }
    char *h = pc_malloc((total + 1) * es);
    for (size_t i = 0; i < total; i++) put(h, t, i, 7);
    char *recv = dev_copy(h, total * es);
    for (size_t i = 0; i < counts[c->rank]; i++) put(h, t, i, val(c->rank, i, t));
    void *send = dev_copy(h, (counts[c->rank] + 1) * es);
    pc_err e = {{0}};
    int rc = comm_all_gatherv(c, send, counts[c->rank], recv, counts, displs, t, &e), bad = 0;
    d2h(h, recv, total * es);
    for (size_t i = 0; i < total && rc == 0; i++) {
        double want = 7;
        for (int r = 0; r < c->size; r++)
            if (i >= displs[r] && i < displs[r] + counts[r]) want = val(r, i - displs[r], t);
        bad += get(h, t, i) != want;
    }
    expect_moved(rc, &e, bad, "all_gatherv", t);
    cudaFree(send);
    cudaFree(recv);
    free(h);
    free(counts);
    free(displs);
}

/* comm_values.h's pieces of one buffer: each holds its root's inputs after the
 * broadcast, the gaps this rank's. */
static void test_broadcast_group_dt(comm *c, comm_dtype t)
{
    size_t es = comm_dtype_size(t);
    group_case g;
    group_case_init(&g, c->size, NULL, t);
    char *h = pc_malloc(g.n * es);
    for (size_t i = 0; i < g.n; i++) put(h, t, i, val(c->rank, i, t));
    void *d = dev_copy(h, g.n * es);
    group_case_init(&g, c->size, d, t);
    pc_err e = {{0}};
    int rc = comm_broadcast_group(c, g.p, GROUP_PIECES, t, &e), bad = 0;
    d2h(h, d, g.n * es);
    for (size_t i = 0; i < g.n && rc == 0; i++) {
        int k = group_piece_of(&g, i);
        bad += get(h, t, i) != val(k >= 0 ? g.p[k].root : c->rank, i, t);
    }
    expect_moved(rc, &e, bad, "broadcast_group", t);
    cudaFree(d);
    free(h);
}

/* Every reduction of bf16 fails on every rank before NCCL, naming the op, and counts
 * no bytes. */
static void test_bf16_refused(comm *c)
{
    const size_t n = 12; /* elems; reduce_scatter sends (size, n) */
    char *d = dev_alloc(n * (size_t)c->size * 2);
    comm_piece p[2] = {{d, 5, 0}, {d + 5 * comm_dtype_size(COMM_BF16), 7, c->size - 1}};
    const char *ops[] = {"all_reduce", "reduce", "reduce_scatter", "reduce_group"};
    for (int k = 0; k < 4; k++) {
        pc_err e = {{0}};
        uint64_t bytes = c->bytes;
        int rc = k == 0   ? comm_all_reduce(c, d, d, n, COMM_BF16, COMM_SUM, &e)
                 : k == 1 ? comm_reduce(c, d, d, n, COMM_BF16, COMM_SUM, 0, &e)
                 : k == 2 ? comm_reduce_scatter(c, d, d, n, COMM_BF16, COMM_MAX, &e)
                          : comm_reduce_group(c, p, 2, COMM_BF16, COMM_SUM, &e);
        char want[64], what[1200];
        snprintf(want, sizeof want, "rank %d: %s(bf16, ", c->rank, ops[k]);
        snprintf(what, sizeof what, "bf16 %s refused, no bytes counted: rc %d, %s", ops[k], rc, e.msg);
        expect(rc == -1 && strstr(e.msg, want) && strstr(e.msg, "never reduced") && c->bytes == bytes, what);
    }
    cudaFree(d);
}

static void test_reduce_scatter(comm *c, comm_op op)
{
    const size_t n = 513;
    size_t total = n * (size_t)c->size;
    float *h = pc_alloc_f32(total);
    for (size_t i = 0; i < total; i++) h[i] = (float)input(c->rank, i);
    float *send = dev_alloc(total * 4), *recv = dev_alloc(n * 4);
    h2d(send, h, total * 4);
    pc_err e = {{0}};
    int ok = comm_reduce_scatter(c, send, recv, n, COMM_F32, op, &e) == 0;
    d2h(h, recv, n * 4);
    for (size_t i = 0; i < n && ok; i++) ok = h[i] == (float)combine(op, c->size, (size_t)c->rank * n + i);
    expect(ok, "reduce_scatter(f32)");
    cudaFree(send);
    cudaFree(recv);
    free(h);
}

int main(int argc, char **argv)
{
    int n_dev = pc_cuda_device_count();
    MPI_Init(&argc, &argv);
    int size = 1;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank_g);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
#ifdef PC_TEST_EMU
    int shared_device = 1; /* NCCL over MPI on host memory (nccl_emu.c): ranks share the emulated device */
#else
    int shared_device = 0;
#endif
    if (n_dev == 0 || (n_dev < size && !shared_device)) {
        if (rank_g == 0) printf("%d CUDA device(s) for %d rank(s): skipping\n", n_dev, size);
        MPI_Finalize();
        return 77;
    }
    pc_err e = {{0}};
    comm *mpi = comm_mpi_create(&e);
    if (!mpi) {
        fprintf(stderr, "%s\n", e.msg);
        return 1;
    }
    comm *c = comm_nccl_create(mpi, rank_g % n_dev, &e);
    if (!c) {
        fprintf(stderr, "%s\n", e.msg);
        return 1;
    }
    expect(c->rank == mpi->rank && c->size == mpi->size && strcmp(c->ops->name, "nccl") == 0, "rank, size, name");

    const comm_dtype types[] = {COMM_F32, COMM_F64, COMM_I32, COMM_I64, COMM_U8, COMM_BF16};
    const comm_op ops[] = {COMM_SUM, COMM_MAX, COMM_MIN};
    for (size_t t = 0; t < PC_ARRAY_LEN(types); t++) {
        if (reducible(types[t])) test_all_reduce(c, types[t], COMM_SUM, 0);
        test_broadcast_dt(c, types[t]);
        test_all_gather_dt(c, types[t], 0);
        test_all_gather_dt(c, types[t], 1);
        test_all_gatherv_dt(c, types[t]);
        test_broadcast_group_dt(c, types[t]);
    }
    test_bf16_refused(c);
    for (size_t o = 0; o < PC_ARRAY_LEN(ops); o++) {
        test_all_reduce(c, COMM_F32, ops[o], 1);
        test_reduce(c, ops[o]);
        test_reduce_scatter(c, ops[o]);
        test_groups(c, ops[o]);
    }
    test_broadcast(c);
    test_all_gather(c, 0);
    test_all_gather(c, 1);
    test_all_gatherv(c, 0);
    test_all_gatherv(c, 1);
    expect(comm_barrier(c, &e) == 0, "barrier");

    char want_msg[32];
    snprintf(want_msg, sizeof want_msg, "rank %d:", rank_g);
    float *d = dev_alloc(16);
    int rc = comm_broadcast(c, d, 4, COMM_F32, size, &e);
    expect(rc == -1 && strstr(e.msg, want_msg) && strstr(e.msg, "broadcast"), "broadcast from a root past the ranks fails");
    cudaFree(d);

    /* watchdog (two ranks or more): the last rank skips an all_reduce; the others must
     * fail within the timeout naming it, their communicator aborted, and a later call
     * fails at once */
    if (size >= 2 && !shared_device) { /* the emulator's collectives block in MPI: no watchdog to test */
        c->timeout_s = 2.0;
        float *x = dev_alloc(sizeof(float) * 8);
        if (rank_g != size - 1) {
            rc = comm_all_reduce(c, x, x, 8, COMM_F32, COMM_SUM, &e);
            expect(rc == -1 && strstr(e.msg, "all_reduce") && strstr(e.msg, "did not finish"),
                   "a collective a rank never joins times out naming the op");
            rc = comm_barrier(c, &e);
            expect(rc == -1 && strstr(e.msg, "aborted"), "after the abort, calls fail at once");
        }
        cudaFree(x);
        MPI_Barrier(MPI_COMM_WORLD);
    }

    comm_destroy(c);
    comm_destroy(mpi);
    int all_failures = 0;
    MPI_Allreduce(&failures, &all_failures, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    if (rank_g == 0) printf("%d check(s) per rank, %d failure(s) over %d rank(s)\n", checks, all_failures, size);
    MPI_Finalize();
    return all_failures ? 1 : 0;
}
