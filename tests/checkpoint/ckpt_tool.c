/* ckpt_tool: inspect checkpoints from scripts, and the multi-rank check of common/ckpt.
 *
 *   ckpt_tool verify CKPT_PATH    exit 0 when the manifest and every checksum verify
 *   ckpt_tool find CKPT_DIR       print the newest valid step, or "none"
 *   mpirun -np R ckpt_tool mpi-check DIR
 *       blocks owned round-robin by rank (block i by rank i % R) are written by their
 *       owners into one checkpoint; every rank reads every block back and compares; a
 *       failure on the last rank makes every rank's commit fail, leaves no temporary
 *       directory and keeps `latest`; a block written by two ranks is refused. */
#include <dirent.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ckpt.h"

#define NBLK 7

static int g_fail; /* failed checks of this rank (a test tool's process-wide tally) */

#define CHECK(x, ...)                                                                                                 \
    do {                                                                                                              \
        if (!(x)) {                                                                                                   \
            g_fail++;                                                                                                 \
            fprintf(stderr, "rank %d: %s:%d: check failed: %s: ", rank, __FILE__, __LINE__, #x);                      \
            fprintf(stderr, __VA_ARGS__);                                                                             \
            fputc('\n', stderr);                                                                                      \
        }                                                                                                             \
    } while (0)

static int64_t blk_n(int i) { return 100 + 37 * i; }

static float blk_val(int64_t step, int i, int k, int64_t j) { return (float)step + 0.5f * (float)i + 0.01f * (float)k + 1e-4f * (float)j; }

static void make(ckpt_block *b, float *buf, int64_t step, int i) {
    memset(b, 0, sizeof *b);
    snprintf(b->name, sizeof b->name, "layer.%d.weight", i);
    b->n_arrays = 2;
    for (int k = 0; k < 2; k++) {
        snprintf(b->arrays[k].name, sizeof b->arrays[k].name, k ? "adam_m" : "param");
        b->arrays[k].n = blk_n(i);
        b->arrays[k].data = buf + k * blk_n(i);
        for (int64_t j = 0; j < blk_n(i); j++) b->arrays[k].data[j] = blk_val(step, i, k, j);
    }
}

/* Write checkpoint `step`: rank r writes blocks i with i % R == r; `bad_rank` (if >= 0)
 * tries a block with an invalid name; `dup` makes rank 1 also write block 0. */
static int write_step(const char *dir, int64_t step, comm *c, int bad_rank, int dup, int keep, pc_err *e) {
    ckpt_writer *w;
    if (ckpt_write_begin(&w, dir, step, c, NULL, e) != 0) return -1;
    float *buf = malloc(sizeof(float) * 2 * (size_t)blk_n(NBLK));
    for (int i = 0; i < NBLK; i++) {
        if (i % c->size != c->rank && !(dup && c->rank == 1 && i == 0)) continue;
        ckpt_block b;
        make(&b, buf, step, i);
        ckpt_write_block(w, &b, e);
    }
    if (c->rank == bad_rank) {
        ckpt_block b;
        make(&b, buf, step, 0);
        snprintf(b.name, sizeof b.name, "no spaces allowed");
        ckpt_write_block(w, &b, e);
    }
    if (c->rank == c->size - 1) ckpt_write_raw(w, "notes.txt", "hello\n", 6, e);
    free(buf);
    ckpt_kv meta[1] = {{"ranks_wrote", ""}};
    snprintf(meta[0].value, sizeof meta[0].value, "%d", c->size);
    return ckpt_write_commit(w, meta, 1, keep, e);
}

static int count_tmp(const char *dir) {
    DIR *d = opendir(dir);
    int n = 0;
    struct dirent *de;
    while (d && (de = readdir(d)))
        if (strstr(de->d_name, ".tmp")) n++;
    if (d) closedir(d);
    return n;
}

static int mpi_check(const char *dir) {
    int rank;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    pc_err e = {{0}};
    comm *c = comm_mpi_create(&e);
    if (!c) {
        fprintf(stderr, "rank %d: %s\n", rank, e.msg);
        return 1;
    }
    if (rank == 0) { /* start from an empty directory */
        char cmd[2200];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
        if (system(cmd) != 0) fprintf(stderr, "could not empty %s\n", dir);
    }
    comm_barrier(c, &e);
    int rc = write_step(dir, 1, c, -1, 0, 2, &e);
    CHECK(rc == 0, "step 1 written: %s", e.msg);
    comm_barrier(c, &e);
    int64_t step = -1;
    char path[1024];
    CHECK(ckpt_find(dir, NULL, NULL, &step, path, sizeof path, &e) == 1 && step == 1, "find step 1 (got %lld)",
          (long long)step);
    ckpt_manifest m;
    CHECK(ckpt_manifest_read(path, &m, &e) == 0, "manifest: %s", e.msg);
    CHECK(m.n_entries == NBLK + 1, "%d entries", m.n_entries);
    float *buf = malloc(sizeof(float) * 2 * (size_t)blk_n(NBLK));
    for (int i = 0; i < NBLK; i++) {
        ckpt_block b;
        make(&b, buf, 1, i);
        memset(buf, 0, sizeof(float) * 2 * (size_t)blk_n(i));
        CHECK(ckpt_read_block(path, &m, &b, &e) == 0, "read block %d: %s", i, e.msg);
        int same = 1;
        for (int k = 0; k < 2; k++)
            for (int64_t j = 0; j < blk_n(i); j++) same &= b.arrays[k].data[j] == blk_val(1, i, k, j);
        CHECK(same, "block %d (written by rank %d) reads back", i, i % c->size);
    }
    free(buf);
    char *raw = NULL;
    CHECK(ckpt_read_raw(path, &m, "notes.txt", &raw, NULL, &e) == 0 && !strcmp(raw, "hello\n"), "raw file");
    free(raw);
    ckpt_manifest_free(&m);
    comm_barrier(c, &e);

    /* one rank fails: every rank's commit fails, nothing is left behind */
    e.msg[0] = '\0';
    rc = write_step(dir, 2, c, c->size - 1, 0, 2, &e);
    CHECK(rc == -1, "a failure on rank %d fails the commit everywhere", c->size - 1);
    CHECK(e.msg[0] != '\0', "with a message");
    if (rank == c->size - 1) CHECK(strstr(e.msg, "no spaces allowed") != NULL, "the failing rank names it: %s", e.msg);
    comm_barrier(c, &e);
    CHECK(count_tmp(dir) == 0, "no temporary directory left");
    CHECK(ckpt_find(dir, NULL, NULL, &step, path, sizeof path, &e) == 1 && step == 1, "step 1 still the newest");
    comm_barrier(c, &e); /* everyone looked before the next checkpoint starts */

    if (c->size > 1) { /* the same block from two ranks */
        e.msg[0] = '\0';
        rc = write_step(dir, 3, c, -1, 1, 2, &e);
        CHECK(rc == -1, "a block written by two ranks is refused");
        if (rank == 0) CHECK(strstr(e.msg, "layer.0.weight") != NULL, "names the block: %s", e.msg);
        comm_barrier(c, &e);
        CHECK(count_tmp(dir) == 0, "no temporary directory left");
        comm_barrier(c, &e);
    }

    rc = write_step(dir, 4, c, -1, 0, 1, &e);
    CHECK(rc == 0, "step 4 written: %s", e.msg);
    comm_barrier(c, &e);
    CHECK(ckpt_find(dir, NULL, NULL, &step, path, sizeof path, &e) == 1 && step == 4, "find step 4");
    DIR *d = opendir(dir);
    int n_ckpt = 0;
    struct dirent *de;
    while (d && (de = readdir(d))) n_ckpt += !strncmp(de->d_name, "step-", 5);
    if (d) closedir(d);
    CHECK(n_ckpt == 1, "keep 1 leaves one checkpoint (%d)", n_ckpt);

    /* found together (each rank checks a share): the same answer everywhere; a file of the
     * newest corrupted (whichever rank checks it): every rank falls back to step 4 */
    CHECK(ckpt_find(dir, c, NULL, &step, path, sizeof path, &e) == 1 && step == 4, "found together: step 4 (%s)",
          e.msg);
    rc = write_step(dir, 5, c, -1, 0, 2, &e);
    CHECK(rc == 0, "step 5 written: %s", e.msg);
    comm_barrier(c, &e);
    CHECK(ckpt_find(dir, c, NULL, &step, path, sizeof path, &e) == 1 && step == 5, "found together: step 5");
    if (rank == 0) { /* one byte of the second largest block flipped: rank 1 checks it, where there is one */
        char f[1200];
        snprintf(f, sizeof f, "%s/layer.%d.weight.blk", path, NBLK - 2);
        FILE *fp = fopen(f, "r+b");
        CHECK(fp && fseek(fp, -3, SEEK_END) == 0, "open %s", f);
        if (fp) {
            int ch = fgetc(fp);
            fseek(fp, -3, SEEK_END);
            fputc(ch ^ 0x40, fp);
            fclose(fp);
        }
    }
    comm_barrier(c, &e);
    CHECK(ckpt_find(dir, c, NULL, &step, path, sizeof path, &e) == 1 && step == 4,
          "step 5 corrupted: every rank falls back to step 4 (got %lld)", (long long)step);
    if (rank == 0) { /* the manifest of step 4 gone too: none verifies, every rank says why */
        char m4[1200];
        snprintf(m4, sizeof m4, "%s/step-0000004/MANIFEST", dir);
        CHECK(unlink(m4) == 0, "remove %s", m4);
    }
    comm_barrier(c, &e);
    e.msg[0] = '\0';
    CHECK(ckpt_find(dir, c, NULL, &step, path, sizeof path, &e) == -1 && strstr(e.msg, "none of the 2 checkpoint(s)") &&
              strstr(e.msg, "layer.") && strstr(e.msg, "checksum mismatch"),
          "none verifies: an error on every rank naming the newest's bad file: %s", e.msg);
    int fails = g_fail, total = 0;
    MPI_Allreduce(&fails, &total, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    if (rank == 0) printf("mpi-check on %d ranks: %s\n", c->size, total ? "FAILED" : "ok");
    comm_destroy(c);
    return total != 0;
}

int main(int argc, char **argv) {
    if (argc == 3 && !strcmp(argv[1], "verify")) {
        ckpt_manifest m;
        pc_err e = {{0}};
        if (ckpt_verify(argv[2], &m, &e) != 0) {
            printf("bad: %s\n", e.msg);
            return 1;
        }
        printf("ok: step %lld, %d files\n", (long long)m.step, m.n_entries);
        ckpt_manifest_free(&m);
        return 0;
    }
    if (argc == 3 && !strcmp(argv[1], "find")) {
        pc_err e = {{0}};
        int64_t step;
        char path[2048];
        int f = ckpt_find(argv[2], NULL, NULL, &step, path, sizeof path, &e);
        if (f < 0) {
            printf("error: %s\n", e.msg);
            return 1;
        }
        if (f == 0)
            printf("none\n");
        else
            printf("%lld\n", (long long)step);
        return 0;
    }
    if (argc == 3 && !strcmp(argv[1], "mpi-check")) {
        MPI_Init(&argc, &argv);
        int rc = mpi_check(argv[2]);
        MPI_Finalize();
        return rc;
    }
    fprintf(stderr, "usage: ckpt_tool verify CKPT_PATH | find CKPT_DIR | mpi-check DIR (under mpirun)\n");
    return 2;
}
