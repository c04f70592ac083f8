/* vexp: vectorised exponentials for the CPU softmax loops (see vexp.c). */
#ifndef PC_VEXP_H
#define PC_VEXP_H

/* sum_j exp(x[j] - shift), accumulated in float lanes. */
float vexp_sum(const float *x, int n, float shift);
/* out[j] = scale * exp(x[j] - shift); out may alias x. */
void vexp_scaled(float *out, const float *x, int n, float shift, float scale);
/* out[j] = 1 / (1 + exp(-x[j])). */
void vexp_sigmoid(float *out, const float *x, int n);

#endif
