/* vexp: the exponentials of the softmax loops, built with -ffast-math so that the
 * compiler calls glibc's vector expf (libmvec) on whole registers. Kept apart from every
 * other kernel so that no other arithmetic changes. */
#include "vexp.h"

#include <math.h>

float vexp_sum(const float *x, int n, float shift) {
    float sum = 0.0f;
    for (int j = 0; j < n; j++) sum += expf(x[j] - shift);
    return sum;
}

void vexp_scaled(float *out, const float *x, int n, float shift, float scale) {
    for (int j = 0; j < n; j++) out[j] = scale * expf(x[j] - shift);
}

void vexp_sigmoid(float *out, const float *x, int n) {
    for (int j = 0; j < n; j++) out[j] = 1.0f / (1.0f + expf(-x[j]));
}
