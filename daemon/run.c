/* run: run-directory setup (with its lock, RUN/.lock), the checks of where the final model
 * goes, metrics.jsonl and the rank-0 progress line. */
#include "run.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <stdarg.h>
#include <stdio.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <string.h>
#include <unistd.h>

#include "json.h"

int run_final_dir(const pc_config *c, char *out, size_t n, pc_err *e) {
    if (c->output.dir[0]) {
        if ((size_t)snprintf(out, n, "%s", c->output.dir) >= n)
            return pc_errorf(e, "output.dir '%s': path too long", c->output.dir);
    } else if (pc_path_join(out, n, c->run.dir, "final") != 0) {
        return pc_errorf(e, "run.dir '%s': path too long", c->run.dir);
    }
    for (size_t k = strlen(out); k > 1 && out[k - 1] == '/'; k--) out[k - 1] = '\0'; /* "out/": its siblings */
    return 0;
}

const char *const run_tokenizer_files[] = {"tokenizer.json",      "tokenizer_config.json", "special_tokens_map.json",
                                           "tokenizer.model",     "vocab.json",            "merges.txt",
                                           "added_tokens.json",   "chat_template.jinja",   "generation_config.json",
                                           NULL};

const char run_provenance_file[] = "projcompd.json";

/* A file projcompd writes into a model directory (llama_save_safetensors, the tokenizer's,
 * its provenance), or one the Hugging Face tools add to a model directory (a model card,
 * the upload cache). */
static int final_file(const char *name) {
    static const char *const model_files[] = {"config.json",    "model.safetensors", "model.safetensors.index.json",
                                              "README.md",      ".gitattributes",    ".cache",
                                              run_provenance_file, NULL};
    for (const char *const *f = model_files; *f; f++)
        if (!strcmp(name, *f)) return 1;
    for (const char *const *f = run_tokenizer_files; *f; f++)
        if (!strcmp(name, *f)) return 1;
    /* model-00001-of-00003.safetensors */
    static const char shard[] = "model-#####-of-#####.safetensors";
    if (strlen(name) != sizeof shard - 1) return 0;
    for (size_t i = 0; shard[i]; i++)
        if (shard[i] == '#' ? name[i] < '0' || name[i] > '9' : name[i] != shard[i]) return 0;
    return 1;
}

int run_provenance_write(const pc_config *c, const char *dir, pc_err *e) {
    char run[PATH_MAX], base[PATH_MAX], path[PATH_MAX + 32];
    if (pc_path_canon(c->run.dir, run, sizeof run) != 0)
        return pc_errorf(e, "run.dir '%s': cannot resolve its path", c->run.dir);
    if (pc_path_join(path, sizeof path, dir, run_provenance_file) != 0)
        return pc_errorf(e, "%s: path too long", dir);
    json_buf b;
    json_buf_init(&b);
    json_buf_puts(&b, "{\"run_dir\": ");
    json_buf_str(&b, run);
    json_buf_puts(&b, ", \"mode\": ");
    json_buf_str(&b, c->run.mode);
    json_buf_puts(&b, ", \"steps\": ");
    json_buf_int(&b, c->train.steps);
    json_buf_puts(&b, ", \"base\": ");
    if (c->model.base[0] && pc_path_canon(c->model.base, base, sizeof base) == 0)
        json_buf_str(&b, base);
    else
        json_buf_puts(&b, "null");
    json_buf_puts(&b, ", \"projcompd\": \"" PC_VERSION "\"}\n");
    int rc = pc_write_file_atomic(path, b.data, b.len, e);
    json_buf_free(&b);
    return rc;
}

int run_final_other_run(const pc_config *c, const char *dir, char *owner, size_t n) {
    char run[PATH_MAX], d[PATH_MAX], path[PATH_MAX + 32];
    if (pc_path_canon(c->run.dir, run, sizeof run) != 0 || pc_path_canon(dir, d, sizeof d) != 0) return 0;
    if (pc_path_holds(run, d)) return 0; /* RUN/final: this run's by its place (a run directory moved keeps it) */
    if (pc_path_join(path, sizeof path, dir, run_provenance_file) != 0) return 0;
    char *text;
    size_t len;
    pc_err ignored;
    json_val *root = NULL;
    if (pc_read_file(path, &text, &len, &ignored) != 0) return 0; /* none: written before provenance was kept */
    int other = 0;
    if (json_parse(text, len, &root, &ignored) == 0) {
        const char *w = json_str(json_get(root, "run_dir"));
        if (w && strcmp(w, run) != 0) {
            other = 1;
            snprintf(owner, n, "%s", w);
        }
    }
    json_free(root);
    free(text);
    return other;
}

int run_final_replaceable(const pc_config *c, const char *dir, pc_err *e) {
    struct stat st;
    if (lstat(dir, &st) != 0)
        return errno == ENOENT ? 0 : pc_errorf(e, "%s: cannot stat the final model's directory: %s", dir, strerror(errno));
    if (!S_ISDIR(st.st_mode))
        return pc_errorf(e, "%s: the final model's directory exists and is %s: set output.dir to a new or empty "
                            "directory",
                         dir, S_ISLNK(st.st_mode) ? "a symbolic link (give the directory's own path)" : "not a directory");
    DIR *d = opendir(dir);
    if (!d) return pc_errorf(e, "%s: cannot list the final model's directory: %s", dir, strerror(errno));
    int n = 0, has_config = 0;
    char odd[256] = "";
    for (struct dirent *de; (de = readdir(d)) != NULL;) {
        if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, "..")) continue;
        n++;
        has_config |= !strcmp(de->d_name, "config.json");
        if (!odd[0] && !final_file(de->d_name)) snprintf(odd, sizeof odd, "%s", de->d_name);
    }
    closedir(d);
    if (n == 0) return 0;
    if (odd[0] || !has_config)
        return pc_errorf(e, "%s: the final model's directory exists and %s%s%s, so it is not a model projcompd wrote: "
                            "the final model replaces its directory whole; set output.dir to a new or empty directory, "
                            "or move this one away",
                         dir, odd[0] ? "holds '" : "has no config.json", odd, odd[0] ? "'" : "");
    char owner[PATH_MAX];
    if (run_final_other_run(c, dir, owner, sizeof owner))
        return pc_errorf(e, "%s: holds the final model of another run (run.dir '%s', by its %s), not of run.dir "
                            "'%s': two runs would replace each other's model; set output.dir to a directory of its "
                            "own, or remove this one to replace it",
                         dir, owner, run_provenance_file, c->run.dir);
    return 0;
}

int run_final_check(const pc_config *c, const char *final_dir, pc_err *e) {
    char f[PATH_MAX], run[PATH_MAX], base[PATH_MAX];
    const char *last = strrchr(final_dir, '/');
    last = last ? last + 1 : final_dir;
    if (!strcmp(last, ".") || !strcmp(last, ".."))
        return pc_errorf(e, "%s: output.dir ends in '%s': name the directory itself (the final model is written "
                            "beside it first, then renamed into place)",
                         final_dir, last);
    if (pc_path_canon(final_dir, f, sizeof f) != 0 || pc_path_canon(c->run.dir, run, sizeof run) != 0)
        return pc_errorf(e, "%s: cannot resolve the final model's path against run.dir '%s'", final_dir, c->run.dir);
    if (c->model.base[0] && pc_path_canon(c->model.base, base, sizeof base) == 0 &&
        (pc_path_holds(f, base) || pc_path_holds_inode(final_dir, base)))
        return pc_errorf(e, "%s: the final model would replace model.base '%s' (its directory is the base's or "
                            "holds it): set output.dir (or run.dir) to another directory",
                         final_dir, c->model.base);
    if (pc_path_holds(f, run) || pc_path_holds_inode(final_dir, run))
        return pc_errorf(e, "%s: output.dir is run.dir '%s' or a directory holding it: the final model replaces its "
                            "directory whole; set output.dir to a directory of its own",
                         final_dir, c->run.dir);
    if (pc_path_holds(run, f)) { /* inside the run directory: not one of its own parts */
        static const char *const parts[] = {"config.resolved.yaml", "logs",     "metrics.jsonl", "importance.txt",
                                            "plan.txt",             "checkpoints", ".lock"};
        const char *sub = f + strlen(run) + (strcmp(run, "/") != 0);
        size_t len = strcspn(sub, "/");
        for (size_t i = 0; i < PC_ARRAY_LEN(parts); i++)
            if (strlen(parts[i]) == len && !strncmp(sub, parts[i], len))
                return pc_errorf(e, "%s: output.dir is the run directory's %s: set output.dir to a directory of its "
                                    "own (the default is RUN/final)",
                                 final_dir, parts[i]);
    }
    return run_final_replaceable(c, final_dir, e);
}

/* Open metrics.jsonl for appending; a last line without its newline (a write cut short
 * by a crash or a full disk in an earlier run) is cut off, so every line stays JSON. */
static int metrics_open(run_ctx *r, const char *path, pc_err *e) {
    int fd = open(path, O_RDWR | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd < 0) return pc_errorf(e, "%s: cannot open: %s", path, strerror(errno));
    off_t end = lseek(fd, 0, SEEK_END), keep = end;
    char buf[4096];
    while (keep > 0) { /* back to just after the last newline */
        off_t at = keep > (off_t)sizeof buf ? keep - (off_t)sizeof buf : 0;
        ssize_t got = pread(fd, buf, (size_t)(keep - at), at);
        if (got != keep - at) {
            close(fd);
            return pc_errorf(e, "%s: cannot read: %s", path, got < 0 ? strerror(errno) : "short read");
        }
        ssize_t i = got;
        while (i > 0 && buf[i - 1] != '\n') i--;
        if (i > 0 || at == 0) {
            keep = at + i;
            break;
        }
        keep = at;
    }
    if (end < 0 || (keep < end && ftruncate(fd, keep) != 0)) {
        pc_errorf(e, "%s: cannot cut its partial last line: %s", path, strerror(errno));
        close(fd);
        return -1;
    }
    if (keep < end)
        LOGW(&r->log, "%s: cut off a partial last line (%lld bytes) left by an interrupted write", path,
             (long long)(end - keep));
    r->metrics_fd = fd;
    r->metrics_size = (int64_t)keep;
    return 0;
}

/* One job a run directory: rank 0 holds a write lock (fcntl) on RUN/.lock for the run's
 * life, released by the kernel however the process ends, so no lock outlives its job.
 * The file names its holder for the message another job gets. 0: locked, or the file
 * system has no locks (*unlocked set, for a warning); -1: e says who holds it. */
static int run_lock(run_ctx *r, int *unlocked, pc_err *e) {
    char path[1100];
    snprintf(path, sizeof path, "%s/.lock", r->run_dir);
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) return pc_errorf(e, "%s: cannot open: %s", path, strerror(errno));
    struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 0};
    if (fcntl(fd, F_SETLK, &fl) != 0) {
        int err = errno;
        if (err != EACCES && err != EAGAIN) { /* ENOLCK and kin: a file system without locks */
            close(fd);
            *unlocked = 1;
            return 0;
        }
        char who[256] = "";
        ssize_t got = pread(fd, who, sizeof who - 1, 0);
        close(fd);
        who[got > 0 ? got : 0] = '\0';
        who[strcspn(who, "\n")] = '\0';
        return pc_errorf(e, "%s is in use by another projcompd job (%s): a run directory takes one job at a time; "
                            "wait for that one or stop it, or give this job another run.dir",
                         r->run_dir, who[0] ? who : "its holder unknown");
    }
    char host[256] = "?", who[512];
    gethostname(host, sizeof host - 1);
    const char *job = getenv("SLURM_JOB_ID");
    int n = snprintf(who, sizeof who, "pid %ld on host %s%s%s, config %s\n", (long)getpid(), host,
                     job ? ", Slurm job " : "", job ? job : "", r->cfg.source);
    if (ftruncate(fd, 0) != 0 || pwrite(fd, who, (size_t)PC_MIN(n, (int)sizeof who - 1), 0) < 0) {
        /* the lock holds all the same; only the next job's message would lack the holder */
    }
    r->lock_fd = fd;
    return 0;
}

int run_open(run_ctx *r, pc_err *e) {
    r->metrics_fd = -1;
    r->lock_fd = -1;
    const pc_config *c = &r->cfg;
    snprintf(r->run_dir, sizeof r->run_dir, "%s", c->run.dir);
    if (run_final_dir(c, r->final_dir, sizeof r->final_dir, e) != 0) return -1;

    r->comm = comm_mpi_create(e);
    if (!r->comm) return -1;
    r->comm->timeout_s = c->run.collective_timeout;

    /* rank 0 creates the directories; the others wait so their log files can open */
    int ok = 1, unlocked = 0;
    pc_err mk = {{0}};
    if (r->rank == 0) {
        char logs[1100];
        snprintf(logs, sizeof logs, "%s/logs", r->run_dir);
        ok = pc_mkdirs(logs, &mk) == 0 && run_lock(r, &unlocked, &mk) == 0;
    }
    if (comm_broadcast(r->comm, &ok, 1, COMM_I32, 0, e) != 0) return -1;
    if (!ok) return pc_errorf(e, "run.dir: %s", r->rank == 0 ? mk.msg : "rank 0 could not open the run directory");

    log_init(&r->log, r->rank);
    if (log_open(&r->log, r->run_dir, e) != 0) return -1;
    LOGI(&r->log, "projcompd %s: mode %s, %d rank(s), config %s, run dir %s", PC_VERSION, c->run.mode, r->world,
         c->source, r->run_dir);
    if (comm_node_ranks(r->comm, &r->local_rank, &r->local_size, r->node, e) != 0) return -1;
    LOGI(&r->log, "node %s: local rank %d of %d", r->node, r->local_rank, r->local_size);
    if (unlocked)
        LOGW(&r->log, "%s/.lock: the file system takes no locks, so nothing stops another job from using this run "
                      "directory at the same time",
             r->run_dir);

    if (r->rank == 0) {
        char path[1100];
        snprintf(path, sizeof path, "%s/config.resolved.yaml", r->run_dir);
        if (config_write_resolved(c, path, e) != 0) return -1;
        snprintf(path, sizeof path, "%s/metrics.jsonl", r->run_dir);
        if (metrics_open(r, path, e) != 0) return -1;
    }
    return 0;
}

void run_close(run_ctx *r) {
    if (r->metrics_fd >= 0) close(r->metrics_fd);
    r->metrics_fd = -1;
    if (r->lock_fd >= 0) close(r->lock_fd); /* the lock goes with it */
    r->lock_fd = -1;
    if (r->dcomm && r->dcomm != r->comm) comm_destroy(r->dcomm); /* before its backend (NCCL) */
    r->dcomm = NULL;
    if (r->be) backend_destroy(r->be);
    r->be = NULL;
    if (r->comm) comm_destroy(r->comm);
    r->comm = NULL;
    log_close(&r->log);
}

void run_metrics(run_ctx *r, const char *json_line) {
    if (r->metrics_fd < 0) return;
    size_t n = strlen(json_line);
    char *line = pc_malloc(n + 1);
    memcpy(line, json_line, n);
    line[n] = '\n';
    ssize_t w = write(r->metrics_fd, line, n + 1);
    int err = w < 0 ? errno : ENOSPC;
    free(line);
    if (w == (ssize_t)(n + 1)) {
        r->metrics_size += (int64_t)w;
        return;
    }
    if (w > 0 && ftruncate(r->metrics_fd, (off_t)r->metrics_size) != 0) err = errno;
    if (!r->metrics_failed)
        LOGW(&r->log, "%s/metrics.jsonl: cannot write a row (%s): rows are lost until it can", r->run_dir,
             strerror(err));
    r->metrics_failed = 1;
}

const char *run_json_number(char *out, size_t n, const char *fmt, double x) {
    if (isfinite(x))
        snprintf(out, n, fmt, x);
    else
        snprintf(out, n, "null");
    return out;
}

void run_progress(run_ctx *r, long step, long total, double loss, double tok_per_s, double mfu, double step_s) {
    if (r->rank != 0) return;
    int tty = isatty(STDERR_FILENO);
    long every = total >= 50 ? total / 25 : 1; /* a log file gets about 25 lines */
    if (!tty && step != 1 && step != total && step % every != 0) return;
    double eta = (double)(total - step) * step_s;
    char m[32] = "";
    if (mfu >= 0) snprintf(m, sizeof m, "  mfu %.1f%%", 100.0 * mfu);
    fprintf(stderr, "%sstep %ld/%ld  loss %.4f  %.0f tok/s%s  %.2f s/step  ETA %02d:%02d:%02d%s", tty ? "\r" : "",
            step, total, loss, tok_per_s, m, step_s, (int)(eta / 3600), (int)(eta / 60) % 60, (int)eta % 60,
            tty && step < total ? "" : "\n");
    fflush(stderr);
}

int run_agree(run_ctx *r, int rc, pc_err *e, const char *fmt, ...) {
    int bad = rc != 0, any = bad;
    pc_err ce = {{0}};
    if (r->world > 1 && comm_all_reduce(r->comm, &bad, &any, 1, COMM_I32, COMM_MAX, &ce) != 0) {
        if (!bad) *e = ce;
        return -1;
    }
    if (!any) return 0;
    if (!bad) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(e->msg, sizeof e->msg, fmt, ap);
        va_end(ap);
    }
    return -1;
}

int run_report_memory(run_ctx *r, pc_err *e) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    double mine[2] = {(double)ru.ru_maxrss / 1024.0, 0}; /* RSS KiB -> MiB, device MiB */
    if (r->be) mine[1] = (double)be_mem_peak(r->be) / (1024.0 * 1024.0);
    if (mine[1] > 0)
        LOGI(&r->log, "peak resident memory %.1f MiB, peak device memory %.1f MiB", mine[0], mine[1]);
    else
        LOGI(&r->log, "peak resident memory %.1f MiB", mine[0]);
    double *all = pc_calloc((size_t)r->world * 2, sizeof(double)); /* (world, 2) */
    if (comm_all_gather(r->comm, mine, all, 2, COMM_F64, e) != 0) {
        free(all);
        return -1;
    }
    if (r->rank == 0) { /* every rank's, however many (a fixed line dropped ranks past about 900) */
        static const char *keys[2] = {"peak_rss_mib", "peak_device_mib"};
        json_buf b;
        json_buf_init(&b);
        for (int k = 0; k < 2; k++) {
            json_buf_printf(&b, "%s\"%s\": [", k ? "], " : "{", keys[k]);
            for (int i = 0; i < r->world; i++) json_buf_printf(&b, "%s%.1f", i ? ", " : "", all[2 * i + k]);
        }
        json_buf_puts(&b, "]}");
        run_metrics(r, b.data);
        json_buf_free(&b);
    }
    free(all);
    return 0;
}
