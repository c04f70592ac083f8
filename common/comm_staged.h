/* comm_staged: the comm interface (comm.h) for device buffers of a backend, staged
 * through host memory over a comm that works on host buffers (the MPI comm).
 *
 * For collectives on device buffers where no device-native comm exists: a GPU run
 * without NCCL, and the guarded CPU backend (backend_guard_create), whose buffers host
 * code cannot touch. Each collective downloads its input into host staging buffers
 * (grown as needed up to COMM_STAGED_CHUNK, and kept between calls), runs the same
 * collective on the host comm and uploads the result.
 * Staging moves bytes (the backend's raw upload/download), so any element count of any
 * dtype works, bf16 included. */
#ifndef PC_COMM_STAGED_H
#define PC_COMM_STAGED_H

#include "backend.h"
#include "comm.h"
#include "util.h"

/* Staged comm over `host` (borrowed: it must outlive the staged comm, which does not
 * destroy it) for buffers of `be`. Same rank, size and timeout_s as host (timeout_s
 * set on the staged comm applies to its calls); payload is counted in its own bytes,
 * not in host's. NULL and e filled when host or be is NULL. */
comm *comm_staged_create(comm *host, backend *be, pc_err *e);

/* Every collective stages at most this many bytes at a time: a larger one runs in parts,
 * so that host memory stays bounded whatever the payload (a whole model's G). A part
 * holds whole elements, at least one (all_gather and reduce_scatter: at least one of
 * every rank's), so each of the two staging buffers stays within max(chunk, ranks x 8
 * bytes). all_gatherv runs as a grouped broadcast of every rank's piece. */
#define COMM_STAGED_CHUNK ((size_t)256 << 20)
/* Another part size; drops the staging buffers (tests). */
void comm_staged_set_chunk(comm *c, size_t bytes);
/* Bytes of host staging held now (tests). */
size_t comm_staged_held(comm *c);

#endif
