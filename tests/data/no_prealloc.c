/* no_prealloc: an LD_PRELOAD shim for data-h5py. It plays a file system that cannot
 * preallocate (fallocate fails with EOPNOTSUPP) under a file size limit that getrlimit
 * does not report, so that a shard write runs out of room inside HDF5's own writes,
 * the path common/data.c's reservation cannot cover. No system headers: with 64-bit
 * file offsets they rename these functions to their *64 forms, and both are defined. */
#include <errno.h>
#include <sys/syscall.h>
#include <unistd.h>

typedef struct limit {
    unsigned long cur, max;
} limit; /* struct rlimit on 64-bit Linux */

#define SHIM_EOPNOTSUPP 95 /* Linux's EOPNOTSUPP */
#define SHIM_RLIMIT_FSIZE 1

int fallocate(int fd, int mode, long off, long len);
int fallocate64(int fd, int mode, long off, long len);
int getrlimit(int res, limit *rl);
int getrlimit64(int res, limit *rl);

int fallocate(int fd, int mode, long off, long len) {
    (void)fd, (void)mode, (void)off, (void)len;
    errno = SHIM_EOPNOTSUPP;
    return -1;
}

int fallocate64(int fd, int mode, long off, long len) { return fallocate(fd, mode, off, len); }

int getrlimit(int res, limit *rl) {
    if (res != SHIM_RLIMIT_FSIZE) return (int)syscall(SYS_prlimit64, 0, res, (void *)0, rl); /* the real one */
    rl->cur = rl->max = ~0UL; /* RLIM_INFINITY */
    return 0;
}

int getrlimit64(int res, limit *rl) { return getrlimit(res, rl); }
