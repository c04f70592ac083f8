/* ckpt: the on-disk checkpoint format, independent of what is being trained.
 *
 * A checkpoint of `step` is the directory CKPT_DIR/step-NNNNNNN/ holding one file per
 * block (a named group of f32 arrays, e.g. a tensor with its AdamW m and v), optional raw
 * files (bytes, e.g. importance.txt) and MANIFEST, a text file:
 *     projcompd-checkpoint 1
 *     step 12
 *     meta <key> <value to end of line>           (run metadata: mode, seed, ...)
 *     file block|raw <name> <file> <bytes> <xxh64 hex>
 *     end <n files> <xxh64 hex of every byte before this line>
 * A block file is "PCCKBLK1", u32 name length, u32 array count, the name, then per
 * array u32 name length, name, i64 element count, then the arrays' f32 data in order
 * (little-endian host layout). File names are derived from entry names (characters
 * outside [A-Za-z0-9._-] become '_', plus a hash suffix when anything was replaced).
 *
 * Writing (collective over `comm`, or single-process with comm NULL): rank 0 creates
 * step-NNNNNNN.tmp-<pid>/; each rank writes the blocks it owns there, each file fsync'd;
 * rank 0 gathers every rank's file list and checksums, writes MANIFEST last, fsyncs the
 * directory, renames it to step-NNNNNNN, fsyncs CKPT_DIR, rewrites CKPT_DIR/latest (the
 * directory name) atomically, then deletes checkpoints beyond `keep` and stale
 * temporaries. Any failure on any rank removes the temporary directory and leaves the
 * previous checkpoints as they were.
 *
 * Reading: ckpt_find picks the newest checkpoint whose manifest and every checksum
 * verify (the ranks of a comm checking a share each); a bad or incomplete one is
 * reported (naming the file) and skipped. Entries are
 * keyed by name, so blocks written by any number of ranks can be read by any other. */
#ifndef PC_CKPT_H
#define PC_CKPT_H

#include "comm.h"
#include "log.h"
#include "util.h"

#define CKPT_NAME_MAX 160
#define CKPT_MAX_ARRAYS 4
#define CKPT_FORMAT_VERSION 1

typedef struct ckpt_array {
    char name[32];
    float *data; /* host memory: written from, or read into */
    int64_t n;   /* elements */
} ckpt_array;

typedef struct ckpt_block {
    char name[CKPT_NAME_MAX];
    int n_arrays;
    ckpt_array arrays[CKPT_MAX_ARRAYS];
} ckpt_block;

typedef struct ckpt_kv {
    char key[64];
    char value[512];
} ckpt_kv;

typedef enum { CKPT_BLOCK = 0, CKPT_RAW = 1 } ckpt_kind;

typedef struct ckpt_entry {
    char name[CKPT_NAME_MAX];
    char file[CKPT_NAME_MAX + 24];
    int32_t kind; /* ckpt_kind */
    int32_t pad;
    int64_t size; /* bytes */
    uint64_t hash;
} ckpt_entry;

typedef struct ckpt_manifest {
    int version;
    int64_t step;
    int n_meta, n_entries;
    ckpt_kv *meta;
    ckpt_entry *entries;
} ckpt_manifest;

/* 64-bit xxHash (XXH64) of a buffer, and its streaming form. */
typedef struct ckpt_hash {
    uint64_t v[4], total;
    unsigned char buf[32];
    size_t nbuf;
    uint64_t seed;
} ckpt_hash;
void ckpt_hash_init(ckpt_hash *h, uint64_t seed);
void ckpt_hash_update(ckpt_hash *h, const void *data, size_t len);
uint64_t ckpt_hash_final(const ckpt_hash *h);
uint64_t ckpt_xxh64(const void *data, size_t len, uint64_t seed);

/* "step-0000012" for step 12 (out: at least 32 bytes). */
void ckpt_dir_name(int64_t step, char *out, size_t n);
/* File name of an entry: safe characters only; blocks get ".blk". */
void ckpt_file_name(const char *name, ckpt_kind kind, char *out, size_t n);

/* ---- writing ---- */
typedef struct ckpt_writer ckpt_writer;

/* Collective: start the checkpoint of `step` under ckpt_dir (created if missing). comm
 * may be NULL (one process); log may be NULL. */
int ckpt_write_begin(ckpt_writer **w, const char *ckpt_dir, int64_t step, comm *c, pc_log *log, pc_err *e);
/* Local: write one block this rank owns (a failure is remembered for the commit). */
int ckpt_write_block(ckpt_writer *w, const ckpt_block *b, pc_err *e);
/* Local: write a raw file (bytes) this rank owns. */
int ckpt_write_raw(ckpt_writer *w, const char *name, const void *buf, size_t len, pc_err *e);
/* Local: a failure outside the writer (e.g. reading what a raw file would hold), e's
 * message, remembered for the commit like a failed write, so that the checkpoint is not
 * published without it. Returns -1. */
int ckpt_write_fail(ckpt_writer *w, pc_err *e);
/* Collective: agree on success, write the manifest (rank 0) with `meta`, publish the
 * checkpoint and prune to `keep` complete checkpoints; on failure anywhere, remove the
 * temporary directory. Frees w. Every rank returns the same status. */
int ckpt_write_commit(ckpt_writer *w, const ckpt_kv *meta, int n_meta, int keep, pc_err *e);

/* ---- reading ---- */

/* Parse ckpt_path/MANIFEST (format, step, entries, the manifest's own checksum). */
int ckpt_manifest_read(const char *ckpt_path, ckpt_manifest *m, pc_err *e);
void ckpt_manifest_free(ckpt_manifest *m);
/* The value of a metadata key, or NULL. */
const char *ckpt_meta_get(const ckpt_manifest *m, const char *key);
/* The entry of `name`, or NULL. */
const ckpt_entry *ckpt_entry_find(const ckpt_manifest *m, const char *name);
/* Read the manifest and check every file's size and checksum. */
int ckpt_verify(const char *ckpt_path, ckpt_manifest *m, pc_err *e);
/* Newest checkpoint under ckpt_dir that verifies: returns 1 with *step set (path of
 * ckpt_dir/step-NNNNNNN in path_out), 0 when there is none, -1 when ckpt_dir cannot be
 * read or none of the checkpoints there verifies (e names the newest's fault). Bad or
 * incomplete checkpoints are logged (LOGW naming the file, on rank 0) and skipped.
 * Collective over comm (NULL: this process alone): rank 0 lists ckpt_dir, and each rank
 * checks the manifest and a share of the files, dealt by size, so that the ranks read a
 * checkpoint once between them, in parallel (rank 0 alone read a 1.5 TB checkpoint of a
 * 70B compression, while the others waited under the collective watchdog); every rank
 * gets the same answer. */
int ckpt_find(const char *ckpt_dir, comm *c, pc_log *log, int64_t *step, char *path_out, size_t n, pc_err *e);
/* Read block b->name into b's arrays: the array names and element counts must match the
 * file; the content's checksum must match the manifest. */
int ckpt_read_block(const char *ckpt_path, const ckpt_manifest *m, ckpt_block *b, pc_err *e);
/* Read a raw entry into a new NUL-terminated buffer (checksum verified). */
int ckpt_read_raw(const char *ckpt_path, const ckpt_manifest *m, const char *name, char **buf, size_t *len,
                  pc_err *e);

#endif
