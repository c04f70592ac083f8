/* comm_values: the per-rank test inputs of the comm tests and typed element access
 * (put/get, also used by the NCCL test in tests/gpu).
 *
 * Element i of rank r is a small integer, exact in every reducible dtype (0..10 for u8,
 * -4..6 otherwise), so every reduction has one right answer whatever the order. bf16
 * is moved, never reduced: its elements are 16-bit patterns, handled as the integers
 * 0..65535 (put/get neither round nor convert them), distinct for every rank < 16 and
 * element < 4096 and spread over both bytes and all exponents, NaN patterns included, so
 * that a misplaced, truncated or converted element shows. */
#ifndef PC_TESTS_COMM_VALUES_H
#define PC_TESTS_COMM_VALUES_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>

#include "comm.h"

/* Whether the comm may reduce dtype t (the comm_* wrappers refuse bf16). */
static inline int reducible(comm_dtype t) { return t != COMM_BF16; }

static inline double val(int r, size_t i, comm_dtype t) {
    /* bf16: the rank in the top 4 bits, the element (mod 4096) scrambled by an odd
     * multiplier (a bijection mod 4096) in the low 12 */
    if (t == COMM_BF16) return (double)((((unsigned)r & 15u) << 12) | (((unsigned)i * 2531u) & 0xfffu));
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
    case COMM_BF16: ((uint16_t *)b)[i] = (uint16_t)v; break; /* v: the bit pattern */
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
    case COMM_BF16: return ((const uint16_t *)b)[i]; /* the bit pattern */
    }
    return NAN;
}

/* The pieces of the grouped-collective tests over one buffer of n elements of dtype t at
 * buf: piece k has 5k mod 13 elements (piece 0 is empty), starts 2 elements after the
 * previous one (gaps that must stay untouched) and is rooted at rank (3k + 1) mod size. */
#define GROUP_PIECES 7
typedef struct group_case {
    comm_piece p[GROUP_PIECES];
    size_t off[GROUP_PIECES]; /* piece k's first element */
    size_t n;                 /* the buffer's length */
} group_case;

/* The layout (g->n) for `size` ranks; the pieces point into buf when it is not NULL. */
static inline void group_case_init(group_case *g, int size, void *buf, comm_dtype t) {
    size_t off = 0;
    for (int k = 0; k < GROUP_PIECES; k++) {
        off += 2;
        g->off[k] = off;
        g->p[k] = (comm_piece){buf ? (char *)buf + off * comm_dtype_size(t) : NULL, (size_t)(5 * k % 13),
                               (3 * k + 1) % size};
        off += g->p[k].count;
    }
    g->n = off + 2;
}

/* The piece holding element i, or -1 in a gap. */
static inline int group_piece_of(const group_case *g, size_t i) {
    for (int k = 0; k < GROUP_PIECES; k++)
        if (i >= g->off[k] && i < g->off[k] + g->p[k].count) return k;
    return -1;
}

#endif
