/* testutil: helpers shared by the C tests (a temporary directory per test; the relative
 * error the backend comparisons report). */
#ifndef PC_TESTUTIL_H
#define PC_TESTUTIL_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

/* Create /tmp/pc-test-<tag>-XXXXXX into dir (size n); 0 on success. */
static inline int test_mkdtemp(char *dir, size_t n, const char *tag) {
    snprintf(dir, n, "/tmp/pc-test-%s-XXXXXX", tag);
    return mkdtemp(dir) ? 0 : -1;
}

/* rm -rf dir; 0 on success. */
static inline int test_rmtree(const char *dir) {
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    return system(cmd) == 0 ? 0 : -1;
}

/* max|ref - got| / max|ref| over n values (max|got| when ref is all zero); NAN when either
 * holds a non-finite value. Near-zero elements do not dominate. */
static inline double test_rel_max_err(const float *ref, const float *got, size_t n) {
    double mx = 0.0, diff = 0.0;
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(got[i]) || !isfinite(ref[i])) return NAN;
        mx = fmax(mx, fabs((double)ref[i]));
        diff = fmax(diff, fabs((double)ref[i] - got[i]));
    }
    return mx > 0.0 ? diff / mx : diff;
}

#endif
