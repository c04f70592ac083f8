/* rollcall: see rollcall.h. */
#include "rollcall.h"

#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define HOST_LEN 64
#define VERDICT_LEN 1024
#define MAX_NAMED 8 /* ranks named a list; the rest are counted */
enum { TAG_REPORT = 1, TAG_VERDICT = 2 };

/* What a rank whose collective timed out sends to rank 0 (ranks share one architecture). */
typedef struct report {
    long long seq;
    char op[32];
} report;

struct rollcall {
    MPI_Comm comm;
    int rank, size;
    char *hosts; /* (size, HOST_LEN): every rank's host name */
    report mine;          /* the report this rank sent */
    char verdict[VERDICT_LEN];
    MPI_Request *sends;   /* (size) sends of mine or the verdict, which r's buffers back */
    int n_sends;
    int ran; /* a comm's roll call runs once: its collectives stop at the first timeout */
};

rollcall *rollcall_create(pc_err *e) {
    rollcall *r = pc_calloc(1, sizeof *r);
    if (MPI_Comm_dup(MPI_COMM_WORLD, &r->comm) != MPI_SUCCESS) {
        free(r);
        pc_errorf(e, "roll call: MPI_Comm_dup(MPI_COMM_WORLD) failed");
        return NULL;
    }
    MPI_Comm_set_errhandler(r->comm, MPI_ERRORS_RETURN);
    MPI_Comm_rank(r->comm, &r->rank);
    MPI_Comm_size(r->comm, &r->size);
    char host[HOST_LEN] = "";
    if (gethostname(host, sizeof host - 1) != 0 || !host[0]) snprintf(host, sizeof host, "?");
    host[HOST_LEN - 1] = '\0';
    r->hosts = pc_calloc((size_t)r->size, HOST_LEN);
    r->sends = pc_calloc((size_t)r->size, sizeof *r->sends);
    if (MPI_Allgather(host, HOST_LEN, MPI_CHAR, r->hosts, HOST_LEN, MPI_CHAR, r->comm) != MPI_SUCCESS) {
        MPI_Comm_free(&r->comm);
        free(r->hosts);
        free(r->sends);
        free(r);
        pc_errorf(e, "roll call: MPI_Allgather of the host names failed");
        return NULL;
    }
    return r;
}

void rollcall_destroy(rollcall *r) {
    if (!r) return;
    /* a send still in flight (to a rank that hung) reads r's buffers: give it a moment,
     * and leave r to the process's exit if it is still pending */
    double t0 = pc_now();
    int done = 0;
    while (!done && pc_now() - t0 < 1.0) {
        if (MPI_Testall(r->n_sends, r->sends, &done, MPI_STATUSES_IGNORE) != MPI_SUCCESS) break;
        if (!done) nanosleep(&(struct timespec){0, 1000000}, NULL);
    }
    if (!done) return;
    MPI_Comm_free(&r->comm);
    free(r->hosts);
    free(r->sends);
    free(r);
}

double rollcall_grace(double timeout_s) {
    double g = timeout_s / 10;
    return g < 1 ? 1 : g > 30 ? 30 : g;
}

/* Poll the n requests in q (MPI_REQUEST_NULL: done) until all are done or the deadline;
 * then cancel the rest. got[i] = 1 for each that completed with its message. */
static void poll_until(MPI_Request *q, int n, int *got, double deadline) {
    for (;;) {
        int pending = 0;
        for (int i = 0; i < n; i++) {
            if (q[i] == MPI_REQUEST_NULL) continue;
            int flag = 0;
            if (MPI_Test(&q[i], &flag, MPI_STATUS_IGNORE) != MPI_SUCCESS) {
                q[i] = MPI_REQUEST_NULL; /* a failed receive: no answer */
                continue;
            }
            if (flag) got[i] = 1;
            else pending++;
        }
        if (!pending || pc_now() > deadline) break;
        nanosleep(&(struct timespec){0, 1000000}, NULL);
    }
    for (int i = 0; i < n; i++) {
        if (q[i] == MPI_REQUEST_NULL) continue;
        MPI_Status st;
        MPI_Cancel(&q[i]);
        if (MPI_Wait(&q[i], &st) != MPI_SUCCESS) continue;
        int cancelled = 1;
        MPI_Test_cancelled(&st, &cancelled);
        got[i] = !cancelled; /* the message came between the last test and the cancel */
    }
}

/* Append "R (host H)" for rank i to a list of `*count` so far (the first MAX_NAMED). */
static void name_rank(const rollcall *r, int i, const char *extra, char *list, size_t len, int *count) {
    size_t at = strlen(list);
    if (*count < MAX_NAMED && at < len)
        snprintf(list + at, len - at, "%s%d (host %s%s)", *count ? ", " : "", i, r->hosts + (size_t)i * HOST_LEN,
                 extra);
    (*count)++;
}

/* "rank 3 (host a)" / "ranks 3 (host a), 5 (host b) and 2 more", from a list of count. */
static void finish_list(char *out, size_t len, const char *list, int count) {
    if (count > MAX_NAMED) snprintf(out, len, "ranks %s and %d more", list, count - MAX_NAMED);
    else snprintf(out, len, "%s %s", count == 1 ? "rank" : "ranks", list);
}

/* Rank 0: collect the reports of collective seq for `grace` seconds, write the verdict. */
static void collect(rollcall *r, long long seq, double grace) {
    int n = r->size;
    report *got = pc_calloc((size_t)n, sizeof *got);
    MPI_Request *q = pc_calloc((size_t)n, sizeof *q);
    int *answered = pc_calloc((size_t)n, sizeof *answered);
    q[0] = MPI_REQUEST_NULL;
    answered[0] = 1;
    for (int i = 1; i < n; i++)
        if (MPI_Irecv(&got[i], sizeof got[i], MPI_BYTE, i, TAG_REPORT, r->comm, &q[i]) != MPI_SUCCESS)
            q[i] = MPI_REQUEST_NULL;
    poll_until(q, n, answered, pc_now() + grace);

    char missing[512] = "", elsewhere[512] = "", extra[64];
    int n_missing = 0, n_elsewhere = 0;
    for (int i = 1; i < n; i++) {
        if (!answered[i]) {
            name_rank(r, i, "", missing, sizeof missing, &n_missing);
        } else if (got[i].seq != seq) {
            got[i].op[sizeof got[i].op - 1] = '\0';
            snprintf(extra, sizeof extra, ", at collective %lld: %s", got[i].seq, got[i].op);
            name_rank(r, i, extra, elsewhere, sizeof elsewhere, &n_elsewhere);
        }
    }
    char a[640] = "", b[640] = "";
    if (n_missing) {
        finish_list(a, sizeof a, missing, n_missing);
        snprintf(a + strlen(a), sizeof a - strlen(a), " did not answer within %.0f s (hung, stopped or dead)", grace);
    }
    if (n_elsewhere) {
        finish_list(b, sizeof b, elsewhere, n_elsewhere);
        snprintf(b + strlen(b), sizeof b - strlen(b), " timed out elsewhere");
    }
    if (!n_missing && !n_elsewhere)
        snprintf(r->verdict, sizeof r->verdict, "every rank answered from this collective (the stall is in MPI or the "
                                                "network)");
    else
        snprintf(r->verdict, sizeof r->verdict, "%s%s%s", a, a[0] && b[0] ? "; " : "", b);

    /* the verdict to every rank that reported, so that their logs say it too */
    for (int i = 1; i < n; i++) {
        if (!answered[i]) continue;
        MPI_Request *s = &r->sends[r->n_sends];
        if (MPI_Isend(r->verdict, VERDICT_LEN, MPI_CHAR, i, TAG_VERDICT, r->comm, s) == MPI_SUCCESS) r->n_sends++;
    }
    free(got);
    free(q);
    free(answered);
}

void rollcall_run(rollcall *r, long long seq, const char *op, double grace, pc_err *e) {
    if (!r || r->size < 2 || r->ran) return;
    r->ran = 1;
    char tail[VERDICT_LEN + 128];
    if (r->rank == 0) {
        collect(r, seq, grace);
        snprintf(tail, sizeof tail, "; roll call of collective %lld: %s", seq, r->verdict);
    } else {
        memset(&r->mine, 0, sizeof r->mine);
        r->mine.seq = seq;
        snprintf(r->mine.op, sizeof r->mine.op, "%s", op);
        MPI_Request *s = &r->sends[r->n_sends];
        if (MPI_Isend(&r->mine, sizeof r->mine, MPI_BYTE, 0, TAG_REPORT, r->comm, s) == MPI_SUCCESS) r->n_sends++;
        MPI_Request q;
        int got = 0;
        double wait = 2 * grace + 1; /* rank 0 may time out a little later, then collects for grace */
        if (MPI_Irecv(r->verdict, VERDICT_LEN, MPI_CHAR, 0, TAG_VERDICT, r->comm, &q) != MPI_SUCCESS)
            q = MPI_REQUEST_NULL;
        poll_until(&q, 1, &got, pc_now() + wait);
        r->verdict[VERDICT_LEN - 1] = '\0';
        if (got)
            snprintf(tail, sizeof tail, "; roll call of collective %lld by rank 0: %s", seq, r->verdict);
        else
            snprintf(tail, sizeof tail,
                     "; rank 0 (host %s) sent no roll call of collective %lld within %.0f s (it may be hung "
                     "itself, or still waiting in an earlier collective: see its log)",
                     r->hosts, seq, wait);
    }
    size_t at = strlen(e->msg), room = sizeof e->msg - 1 - at, n = strlen(tail); /* cut to fit */
    memcpy(e->msg + at, tail, n < room ? n : room);
    e->msg[at + (n < room ? n : room)] = '\0';
}
