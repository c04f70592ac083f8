/* distill_check: the CPU backend's distillation loss and gradient on given logits, for
 * comparison with torch autograd (test_distill.py).
 *
 *   distill_check IN.safetensors OUT.safetensors ALPHA T SCALE
 *
 * IN holds "student" (N,V), "teacher" (N,V) and "targets" (N) as f32 (-1 = ignored);
 * OUT gets "loss_sum" (1) and "dlogits" (N,V). */
#include <stdio.h>
#include <stdlib.h>

#include "backend.h"
#include "safetensors.h"

int main(int argc, char **argv) {
    if (argc != 6) {
        fprintf(stderr, "usage: distill_check IN.safetensors OUT.safetensors ALPHA T SCALE\n");
        return 2;
    }
    pc_err e = {{0}};
    st_model *in;
    if (st_open(argv[1], &in, &e) != 0) {
        fprintf(stderr, "distill_check: %s\n", e.msg);
        return 1;
    }
    const st_tensor *s = st_find(in, "student");
    if (!s || s->ndim != 2) return fprintf(stderr, "distill_check: no 2-D 'student'\n"), 1;
    int N = (int)s->shape[0], V = (int)s->shape[1];
    float *z = pc_alloc_f32((size_t)N * V), *t = pc_alloc_f32((size_t)N * V), *tg = pc_alloc_f32((size_t)N);
    if (st_read_f32(in, "student", z, (size_t)N * V, &e) || st_read_f32(in, "teacher", t, (size_t)N * V, &e) ||
        st_read_f32(in, "targets", tg, (size_t)N, &e)) {
        fprintf(stderr, "distill_check: %s\n", e.msg);
        return 1;
    }
    int32_t *targets = pc_malloc(sizeof(int32_t) * (size_t)N);
    for (int n = 0; n < N; n++) targets[n] = (int32_t)tg[n];
    backend *be = backend_cpu_create(1);
    float loss = (float)be->ops->distill(be, z, t, targets, N, V, (float)atof(argv[3]), (float)atof(argv[4]),
                                         (float)atof(argv[5]));
    st_item items[2] = {{.name = "loss_sum", .ndim = 1, .shape = {1}, .data = &loss},
                        {.name = "dlogits", .ndim = 2, .shape = {N, V}, .data = z}};
    if (st_write(argv[2], items, 2, ST_F32, &e) != 0) {
        fprintf(stderr, "distill_check: %s\n", e.msg);
        return 1;
    }
    backend_destroy(be);
    st_close(in);
    free(z);
    free(t);
    free(tg);
    free(targets);
    return 0;
}
