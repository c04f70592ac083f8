/* prof: where a CUDA backend's device time goes, op by op, from CUDA events.
 *
 * A region is the work one op (or one part of an op: a GEMM's operand rounding, its
 * cuBLAS product) puts on the backend's stream between prof_begin and prof_end: an event
 * is recorded on the stream at each end, so the stream runs as it would unprofiled (no
 * synchronisation per op) and the time is the device's. Regions of the same name add up,
 * with the FLOPs and the bytes of memory traffic their callers state, so the report
 * gives each one's share of the time and its rate against the device's peaks.
 * Events are read back in batches (when PROF_PAIRS regions are pending, and at the
 * report), after waiting for the last one. Everything is a no-op on a NULL profiler. */
#ifndef PC_CUDA_PROF_H
#define PC_CUDA_PROF_H

#include <cuda_runtime.h>
#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct cu_prof cu_prof;

cu_prof *prof_create(void);
void prof_destroy(cu_prof *p);
/* Starts region `name` (a string that outlives the profiler) on stream s; returns the
 * slot to pass to prof_end, or -1 when p is NULL. */
int prof_begin(cu_prof *p, cudaStream_t s, const char *name, double flops, double bytes);
void prof_end(cu_prof *p, cudaStream_t s, int slot);
/* Forgets every region so far (after waiting for the pending ones). */
void prof_reset(cu_prof *p);
/* The table, sorted by time: region, calls, ms, share of all regions' time, ms per
 * call, TFLOP/s and GB/s where FLOPs and bytes were stated; with wall_s > 0 also the
 * regions' total against that wall time (the rest: host work and gaps between ops). */
void prof_report(cu_prof *p, FILE *f, double wall_s);

#ifdef __cplusplus
}
#endif

#endif
