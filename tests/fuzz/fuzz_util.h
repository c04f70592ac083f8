/* fuzz_util: helpers shared by the libFuzzer harnesses: a private scratch directory per
 * process, writing fuzz bytes to a file in it, and splitting an input into parts at a
 * separator line. Header-only so each harness is one translation unit. */
#ifndef PC_FUZZ_UTIL_H
#define PC_FUZZ_UTIL_H

#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "util.h"

static inline void fuzz_rm_tree(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *de;
    while ((de = readdir(d))) {
        if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, "..")) continue;
        char p[1024];
        snprintf(p, sizeof p, "%s/%s", dir, de->d_name);
        if (unlink(p) != 0) fuzz_rm_tree(p), rmdir(p);
    }
    closedir(d);
}

/* The process's scratch path (set once; the harnesses are single-threaded). */
static inline char *fuzz_scratch_path(void) {
    static char dir[512];
    return dir;
}

static inline void fuzz_scratch_remove(void) {
    fuzz_rm_tree(fuzz_scratch_path());
    rmdir(fuzz_scratch_path());
}

/* One scratch directory per process (under $TMPDIR, else /dev/shm or /tmp), emptied on
 * every call so an input never sees files left by the previous one; removed at exit. */
static inline const char *fuzz_scratch_dir(void) {
    char *dir = fuzz_scratch_path();
    if (!dir[0]) {
        const char *base = getenv("TMPDIR");
        if (!base || !*base) base = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
        snprintf(dir, 512, "%s/pc-fuzz-XXXXXX", base);
        if (!mkdtemp(dir)) {
            perror("mkdtemp");
            abort();
        }
        atexit(fuzz_scratch_remove);
    }
    fuzz_rm_tree(dir);
    return dir;
}

static inline void fuzz_write(const char *path, const void *data, size_t n) {
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) {
        perror(path);
        abort();
    }
    const char *p = data;
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w <= 0) {
            perror(path);
            abort();
        }
        p += w;
        n -= (size_t)w;
    }
    close(fd);
}

/* Split [data, data+n) at each occurrence of sep (sep included in neither part).
 * Fills at most max parts (the last one holds the rest); returns the number of parts. */
typedef struct fuzz_part {
    const unsigned char *p;
    size_t n;
} fuzz_part;

static inline int fuzz_split(const unsigned char *data, size_t n, const char *sep, fuzz_part *parts, int max) {
    size_t sl = strlen(sep);
    int k = 0;
    size_t start = 0;
    for (size_t i = 0; k < max - 1 && i + sl <= n;) {
        if (memcmp(data + i, sep, sl) == 0) {
            parts[k++] = (fuzz_part){data + start, i - start};
            i += sl;
            start = i;
        } else {
            i++;
        }
    }
    parts[k++] = (fuzz_part){data + start, n - start};
    return k;
}

/* A NUL-terminated copy of a part (caller frees). */
static inline char *fuzz_strndup(const fuzz_part *pt) {
    char *s = pc_malloc(pt->n + 1);
    memcpy(s, pt->p, pt->n);
    s[pt->n] = '\0';
    return s;
}

#define FUZZ_CHECK(cond, ...)                                                                                         \
    do {                                                                                                            \
        if (!(cond)) {                                                                                              \
            fprintf(stderr, "fuzz property violated at %s:%d: %s\n  ", __FILE__, __LINE__, #cond);                  \
            fprintf(stderr, __VA_ARGS__);                                                                           \
            fputc('\n', stderr);                                                                                    \
            abort();                                                                                                \
        }                                                                                                           \
    } while (0)

#endif
