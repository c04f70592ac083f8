/* comm: the collective-communication interface every rank uses.
 *
 * One backend per run: MPI (host buffers; CPU runs and tests) or NCCL (device
 * buffers). Every call is checked; a failure fills pc_err naming the rank and the
 * operation, e.g. "rank 3: all_reduce(f32, 1024 elems) failed: ...". Counts are
 * element counts, never bytes. */
#ifndef PC_COMM_H
#define PC_COMM_H

#include "util.h"

typedef enum {
    COMM_F32 = 0,
    COMM_F64,
    COMM_I32,
    COMM_I64,
    COMM_U8,
    COMM_BF16, /* bf16 bit patterns: broadcast / gather only */
} comm_dtype;
typedef enum { COMM_SUM = 0, COMM_MAX, COMM_MIN } comm_op;

typedef struct comm comm;

/* One piece of a grouped broadcast or reduce: `count` elements at `buf` on every rank,
 * rooted at rank `root`. Every rank passes the same pieces in the same order (buf may
 * differ between ranks). */
typedef struct comm_piece {
    void *buf;
    size_t count;
    int root;
} comm_piece;

typedef struct comm_ops {
    const char *name;
    int (*all_reduce)(comm *c, const void *send, void *recv, size_t count, comm_dtype t, comm_op op, pc_err *e);
    int (*reduce)(comm *c, const void *send, void *recv, size_t count, comm_dtype t, comm_op op, int root, pc_err *e);
    int (*broadcast)(comm *c, void *buf, size_t count, comm_dtype t, int root, pc_err *e);
    /* recv holds size * count elements, rank r's piece at r * count */
    int (*all_gather)(comm *c, const void *send, void *recv, size_t count, comm_dtype t, pc_err *e);
    /* rank r contributes counts[r] elements; recv holds them at displs[r]; send may be
     * recv + displs[rank] (in place) */
    int (*all_gatherv)(comm *c, const void *send, size_t send_count, void *recv, const size_t *counts,
                       const size_t *displs, comm_dtype t, pc_err *e);
    /* send holds size * count elements; rank r receives the reduced piece r */
    int (*reduce_scatter)(comm *c, const void *send, void *recv, size_t count, comm_dtype t, comm_op op, pc_err *e);
    /* Each piece's root copy to every rank, all pieces under one call. */
    int (*broadcast_group)(comm *c, const comm_piece *p, int n, comm_dtype t, pc_err *e);
    /* Each piece summed (op) over ranks into its root's buf, in place; the other ranks'
     * bufs are left as they were. */
    int (*reduce_group)(comm *c, const comm_piece *p, int n, comm_dtype t, comm_op op, pc_err *e);
    /* broadcast_group (reduce = 0) or reduce_group (op) started and left running, so that
     * work can go on meanwhile: the pieces' buffers are the comm's until `wait`. Every rank
     * starts the same groups in the same order. NULL: the wrappers run the group at once. */
    int (*group_start)(comm *c, const comm_piece *p, int n, comm_dtype t, int reduce, comm_op op, pc_err *e);
    /* Complete every started group; the watchdog counts from this call. NULL: nothing runs late. */
    int (*wait)(comm *c, pc_err *e);
    int (*barrier)(comm *c, pc_err *e);
    void (*destroy)(comm *c);
} comm_ops;

struct comm {
    const comm_ops *ops;
    int rank, size;
    double timeout_s; /* watchdog: a collective taking longer fails naming the op (0 = none) */
    uint64_t bytes;   /* payload of every collective so far: the logical buffer (all ranks' data) */
    void *impl;
};

/* MPI backend over MPI_COMM_WORLD (MPI must already be initialised). */
comm *comm_mpi_create(pc_err *e);
/* Largest element count passed to one MPI call (default INT_MAX); larger counts go in
 * pieces. Lowered only to test the piecewise paths. No effect on other backends. */
void comm_mpi_set_max_chunk(comm *c, size_t n);

/* Convenience wrappers: dispatch through c->ops. The reductions (all_reduce, reduce,
 * reduce_scatter, reduce_group, reduce_group_start) refuse COMM_BF16, counting no bytes:
 * bf16 copies are moved, never reduced (reduce in f32). */
int comm_all_reduce(comm *c, const void *send, void *recv, size_t count, comm_dtype t, comm_op op, pc_err *e);
int comm_reduce(comm *c, const void *send, void *recv, size_t count, comm_dtype t, comm_op op, int root, pc_err *e);
int comm_broadcast(comm *c, void *buf, size_t count, comm_dtype t, int root, pc_err *e);
int comm_all_gather(comm *c, const void *send, void *recv, size_t count, comm_dtype t, pc_err *e);
int comm_all_gatherv(comm *c, const void *send, size_t send_count, void *recv, const size_t *counts,
                     const size_t *displs, comm_dtype t, pc_err *e);
int comm_reduce_scatter(comm *c, const void *send, void *recv, size_t count, comm_dtype t, comm_op op, pc_err *e);
int comm_broadcast_group(comm *c, const comm_piece *p, int n, comm_dtype t, pc_err *e);
int comm_reduce_group(comm *c, const comm_piece *p, int n, comm_dtype t, comm_op op, pc_err *e);
int comm_broadcast_group_start(comm *c, const comm_piece *p, int n, comm_dtype t, pc_err *e);
int comm_reduce_group_start(comm *c, const comm_piece *p, int n, comm_dtype t, comm_op op, pc_err *e);
int comm_wait(comm *c, pc_err *e);
int comm_barrier(comm *c, pc_err *e);
void comm_destroy(comm *c);
/* This rank's place on its node (collective): the ranks whose node names are equal share a
 * node; *local is this rank's index among them, in rank order, and *local_size their
 * count; name (NULL or COMM_NODE_NAME_MAX bytes) receives this rank's node name. The
 * node name is $PROJCOMP_NODE when set (for containers that give each rank its own host
 * name), else the host name. Launchers need not say anything. */
#define COMM_NODE_NAME_MAX 256
int comm_node_ranks(comm *c, int *local, int *local_size, char *name, pc_err *e);
/* The ranks that give the same key (its first COMM_NODE_NAME_MAX - 1 bytes; collective):
 * *index is this rank's place among them, in rank order, *count their number. */
int comm_key_ranks(comm *c, const char *key, int *index, int *count, pc_err *e);
size_t comm_dtype_size(comm_dtype t);
/* "f32", "f64", "i32", "i64", "u8", "bf16". */
const char *comm_dtype_name(comm_dtype t);

#endif
