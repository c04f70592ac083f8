/* rollcall: after a collective timed out, which ranks did not answer (hung, stopped or
 * dead) or were at another one.
 *
 * A comm numbers its collectives (every rank calls them in the same order). When one
 * times out on a rank, that rank reports its number and operation to rank 0 over a
 * communicator of its own (so nothing of the stuck collective is in the way); rank 0
 * collects reports for `grace` seconds, names the ranks that sent none (hung, stopped or
 * dead) or were at another collective, with their hosts, and sends that verdict back, so
 * that every rank that answered logs it too. Point-to-point messages only, polled and
 * bounded in time: a hung rank cannot make it hang. */
#pragma once

#include <stddef.h>

#include "util.h"

typedef struct rollcall rollcall;

/* Collective over MPI_COMM_WORLD (a duplicate of it, and every rank's host name). NULL
 * on failure, with e set. */
rollcall *rollcall_create(pc_err *e);
void rollcall_destroy(rollcall *r);

/* This rank's collective number seq (op) timed out: exchange with rank 0, waiting up to
 * about `grace` seconds (twice that for rank 0's verdict), and append the verdict, or why
 * there is none, to e's message ("; roll call of collective N: ..."). */
void rollcall_run(rollcall *r, long long seq, const char *op, double grace, pc_err *e);

/* The grace period for a watchdog of timeout_s: a tenth of it, 1 to 30 s. */
double rollcall_grace(double timeout_s);
