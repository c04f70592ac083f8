/* prof: per-region device time from CUDA events (prof.h). */
#include "prof.h"

#include <stdlib.h>
#include <string.h>

#include "cuda_check.h"

#define PROF_PAIRS 1024  /* regions pending before their events are read back */
#define PROF_REGIONS 64  /* distinct region names */

typedef struct prof_region {
    const char *name;
    long calls;
    double ms, flops, bytes;
} prof_region;

struct cu_prof {
    cudaEvent_t ev[2 * PROF_PAIRS]; /* begin, end of each pending slot */
    int region[PROF_PAIRS];         /* the region of each pending slot */
    int n_pending;
    prof_region r[PROF_REGIONS];
    int n_regions;
};

cu_prof *prof_create(void)
{
    cu_prof *p = calloc(1, sizeof *p);
    if (!p) return NULL;
    for (int i = 0; i < 2 * PROF_PAIRS; i++) CUDA_CHECK(cudaEventCreate(&p->ev[i]));
    return p;
}

void prof_destroy(cu_prof *p)
{
    if (!p) return;
    for (int i = 0; i < 2 * PROF_PAIRS; i++) CUDA_CHECK(cudaEventDestroy(p->ev[i]));
    free(p);
}

/* Adds the pending slots' times to their regions. The events complete in stream order,
 * so waiting for the last end waits for all. */
static void harvest(cu_prof *p)
{
    if (p->n_pending == 0) return;
    CUDA_CHECK(cudaEventSynchronize(p->ev[2 * p->n_pending - 1]));
    for (int i = 0; i < p->n_pending; i++) {
        float ms = 0.0f;
        CUDA_CHECK(cudaEventElapsedTime(&ms, p->ev[2 * i], p->ev[2 * i + 1]));
        p->r[p->region[i]].ms += ms;
    }
    p->n_pending = 0;
}

static int region_of(cu_prof *p, const char *name)
{
    for (int i = 0; i < p->n_regions; i++)
        if (p->r[i].name == name || !strcmp(p->r[i].name, name)) return i;
    if (p->n_regions == PROF_REGIONS) return PROF_REGIONS - 1; /* more names than slots: the last one holds the rest */
    p->r[p->n_regions].name = name;
    return p->n_regions++;
}

int prof_begin(cu_prof *p, cudaStream_t s, const char *name, double flops, double bytes)
{
    if (!p) return -1;
    if (p->n_pending == PROF_PAIRS) harvest(p);
    int slot = p->n_pending++, ri = region_of(p, name);
    p->region[slot] = ri;
    p->r[ri].calls++;
    p->r[ri].flops += flops;
    p->r[ri].bytes += bytes;
    CUDA_CHECK(cudaEventRecord(p->ev[2 * slot], s));
    return slot;
}

void prof_end(cu_prof *p, cudaStream_t s, int slot)
{
    if (!p || slot < 0) return;
    CUDA_CHECK(cudaEventRecord(p->ev[2 * slot + 1], s));
}

void prof_reset(cu_prof *p)
{
    if (!p) return;
    harvest(p);
    memset(p->r, 0, sizeof p->r);
    p->n_regions = 0;
}

static int by_time(const void *a, const void *b)
{
    double x = ((const prof_region *)a)->ms, y = ((const prof_region *)b)->ms;
    return (x < y) - (x > y);
}

void prof_report(cu_prof *p, FILE *f, double wall_s)
{
    if (!p) return;
    harvest(p);
    prof_region r[PROF_REGIONS];
    int n = p->n_regions;
    memcpy(r, p->r, sizeof r);
    qsort(r, (size_t)n, sizeof r[0], by_time);
    double total = 0.0;
    for (int i = 0; i < n; i++) total += r[i].ms;
    fprintf(f, "%-28s %8s %10s %7s %10s %9s %9s\n", "region (device time)", "calls", "ms", "share", "ms/call",
            "TFLOP/s", "GB/s");
    for (int i = 0; i < n; i++) {
        double s = r[i].ms * 1e-3;
        fprintf(f, "%-28s %8ld %10.3f %6.1f%% %10.4f", r[i].name, r[i].calls, r[i].ms,
                total > 0 ? 100.0 * r[i].ms / total : 0.0, r[i].calls ? r[i].ms / (double)r[i].calls : 0.0);
        if (r[i].flops > 0 && s > 0) fprintf(f, " %9.1f", r[i].flops / s * 1e-12);
        else fprintf(f, " %9s", "");
        if (r[i].bytes > 0 && s > 0) fprintf(f, " %9.0f", r[i].bytes / s * 1e-9);
        fputc('\n', f);
    }
    fprintf(f, "%-28s %8s %10.3f", "all regions", "", total);
    if (wall_s > 0) fprintf(f, "  (%.1f%% of %.3f ms wall)", 100.0 * total / (wall_s * 1e3), wall_s * 1e3);
    fputc('\n', f);
}
