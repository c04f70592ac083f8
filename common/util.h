/* util: error reporting, checked allocation, small file helpers shared by every module.
 *
 * Errors travel as an int return (0 ok, -1 failed) plus a pc_err filled with one
 * human-readable message that names the file, key, tensor or rank involved. */
#ifndef PC_UTIL_H
#define PC_UTIL_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

typedef struct pc_err {
    char msg[1024];
} pc_err;

/* Fill e (may be NULL) with a printf-style message; always returns -1. */
int pc_errorf(pc_err *e, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Prefix the existing message of e with a printf-style context; returns -1. */
int pc_error_wrap(pc_err *e, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Allocation that aborts the process with a message on failure (out of memory is fatal). */
void *pc_malloc(size_t n);
void *pc_calloc(size_t count, size_t size);
void *pc_realloc(void *p, size_t n);
char *pc_strdup(const char *s);
/* 64-byte aligned, zeroed; free with free(). */
float *pc_alloc_f32(size_t n);

/* Monotonic seconds. */
double pc_now(void);

/* Read a whole file into a NUL-terminated buffer (*len excludes the NUL). */
int pc_read_file(const char *path, char **out, size_t *len, pc_err *e);
/* Write all len bytes to fd (retrying short writes and EINTR); errors name path. */
int pc_write_all(int fd, const void *buf, size_t len, const char *path, pc_err *e);
/* Read exactly len bytes from fd's position (pc_read_all) or at offset off >= 0
 * (pc_pread_all), retrying short reads and EINTR; errors, a file that ends early
 * included, name path. */
int pc_read_all(int fd, void *buf, size_t len, const char *path, pc_err *e);
int pc_pread_all(int fd, void *buf, size_t len, int64_t off, const char *path, pc_err *e);
/* Write buf to path atomically: path.tmp, fsync, rename, fsync of the directory. */
int pc_write_file_atomic(const char *path, const void *buf, size_t len, pc_err *e);
/* fsync a directory so a rename inside it is durable. */
int pc_fsync_dir(const char *dir, pc_err *e);
/* The same for the directory holding path (".", "/" as dirname(3) says). */
int pc_fsync_parent(const char *path, pc_err *e);
/* mkdir -p. */
int pc_mkdirs(const char *path, pc_err *e);
/* rm -rf path (best effort; symbolic links are removed, not followed). */
void pc_rm_rf(const char *path);
/* Join dir and name into out (size n). Returns -1 if truncated. */
int pc_path_join(char *out, size_t n, const char *dir, const char *name);
/* path as a glob(3) pattern matching exactly itself (malloc'd). */
char *pc_glob_escape(const char *path);

/* n items of the given sizes dealt out to `bins` (ranks): the largest first (the lower
 * index on a tie), each to the bin holding the least so far (the lowest on a tie), into
 * owner[i]. The same everywhere it is called with the same sizes. */
void pc_deal(const int64_t *sizes, int n, int bins, int *owner);
/* p's canonical absolute path into out (size n): its longest existing prefix resolved as
 * the kernel resolves it (symbolic links, ".."), the rest normalised lexically. -1 when
 * it does not fit or the working directory is unknown. */
int pc_path_canon(const char *p, char *out, size_t n);
/* 1 when canonical path outer is inner or a directory above it. */
int pc_path_holds(const char *outer, const char *inner);
/* 1 when the existing directory outer is canonical path inner, or a directory above it,
 * by device and inode (another name of it, such as a bind mount). */
int pc_path_holds_inode(const char *outer, const char *inner);

/* splitmix64 / xoshiro-style deterministic RNG (pure function of its state). */
typedef struct pc_rng {
    uint64_t s;
} pc_rng;
void pc_rng_seed(pc_rng *r, uint64_t seed);
uint64_t pc_rng_u64(pc_rng *r);
double pc_rng_uniform(pc_rng *r);     /* [0, 1) */
float pc_rng_normal(pc_rng *r);       /* standard normal (Box-Muller) */
/* Mix several integers into one well-spread 64-bit seed. */
uint64_t pc_hash64(uint64_t a, uint64_t b, uint64_t c, uint64_t d);

/* bf16 / f16 <-> f32 conversion (round to nearest even on the way down). */
float pc_bf16_to_f32(uint16_t h);
uint16_t pc_f32_to_bf16(float f);
float pc_f16_to_f32(uint16_t h);
uint16_t pc_f32_to_f16(float f);

#define PC_ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))
#define PC_MIN(a, b) ((a) < (b) ? (a) : (b))
#define PC_MAX(a, b) ((a) > (b) ? (a) : (b))

#endif
