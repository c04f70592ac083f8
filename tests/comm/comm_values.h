/* comm_values: the per-rank test inputs of the comm tests and typed element access
 * (put/get, also used by the NCCL test in tests/gpu).
 *
 * Element i of rank r is a small integer, exact in every dtype (0..10 for u8, -4..6
 * otherwise), so every reduction has one right answer whatever the order. */
#ifndef PC_TESTS_COMM_VALUES_H
#define PC_TESTS_COMM_VALUES_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>

#include "comm.h"

static inline double val(int r, size_t i, comm_dtype t) {
    double v = (double)((r * 7 + (int)i * 3 + 1) % 11);
    return t == COMM_U8 ? v : v - 4;
}

/* b[i] = v as dtype t */
static inline void put(void *b, comm_dtype t, size_t i, double v) {
    switch (t) {
    case COMM_F32: ((float *)b)[i] = (float)v; break;
    case COMM_F64: ((double *)b)[i] = v; break;
    case COMM_I32: ((int32_t *)b)[i] = (int32_t)v; break;
    case COMM_I64: ((int64_t *)b)[i] = (int64_t)v; break;
    case COMM_U8: ((uint8_t *)b)[i] = (uint8_t)v; break;
    }
}

/* b[i] of dtype t as a double */
static inline double get(const void *b, comm_dtype t, size_t i) {
    switch (t) {
    case COMM_F32: return ((const float *)b)[i];
    case COMM_F64: return ((const double *)b)[i];
    case COMM_I32: return ((const int32_t *)b)[i];
    case COMM_I64: return (double)((const int64_t *)b)[i];
    case COMM_U8: return ((const uint8_t *)b)[i];
    }
    return NAN;
}

#endif
