/* log: one log file per rank (RUN/logs/rank-NNNNN.log, appended, flushed per line)
 * plus an echo on stderr.
 *
 * Line: "2026-11-24T06:40:01.123Z rank 00000 host step 12 INFO message" (UTC, ms;
 * step '-' before training). The file receives every line at INFO and above (DEBUG
 * too when stderr_level is DEBUG). stderr receives: rank 0's lines at >= stderr_level,
 * every rank's WARN and ERROR, and every rank's lines at >= stderr_level when
 * all_ranks_stderr is set. Each line is written with one stdio call, so lines from
 * threads of one rank do not interleave. */
#include "log.h"

#include <errno.h>
#include <stdarg.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static const char *const level_names[] = {"DEBUG", "INFO", "WARN", "ERROR"};

void log_init(pc_log *l, int rank) {
    memset(l, 0, sizeof *l);
    l->rank = rank;
    l->step = -1;
    l->stderr_level = LOG_INFO;
    if (gethostname(l->host, sizeof l->host) != 0) snprintf(l->host, sizeof l->host, "unknown");
    l->host[sizeof l->host - 1] = '\0';
    char *dot = strchr(l->host, '.');
    if (dot && dot != l->host) *dot = '\0'; /* short host name */
    for (char *p = l->host; *p; p++)
        if (*p == ' ') *p = '_'; /* keep the line's fields space-separated */
}

int log_open(pc_log *l, const char *run_dir, pc_err *e) {
    char dir[4096], path[4096], name[32];
    if (pc_path_join(dir, sizeof dir, run_dir, "logs")) return pc_errorf(e, "%s: run directory path too long", run_dir);
    if (pc_mkdirs(dir, e)) return -1;
    snprintf(name, sizeof name, "rank-%05d.log", l->rank);
    if (pc_path_join(path, sizeof path, dir, name)) return pc_errorf(e, "%s: log path too long", dir);
    FILE *f = fopen(path, "a");
    if (!f) return pc_errorf(e, "%s: cannot open log for appending: %s", path, strerror(errno));
    setvbuf(f, NULL, _IOLBF, 0);
    if (l->file) fclose(l->file);
    l->file = f;
    return 0;
}

void log_close(pc_log *l) {
    if (l->file) {
        fflush(l->file);
        fclose(l->file);
    }
    l->file = NULL;
}

static void log_v(pc_log *l, log_level lv, int echo, const char *fmt, va_list ap) {
    if ((int)lv < LOG_DEBUG || lv > LOG_ERROR) lv = LOG_ERROR;
    int to_file = l->file && (lv >= LOG_INFO || l->stderr_level <= LOG_DEBUG);
    int to_err = lv >= LOG_WARN || (echo && lv >= l->stderr_level && (l->rank == 0 || l->all_ranks_stderr));
    if (!to_file && !to_err) return;

    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    char stamp[40], step[24], line[4096];
    strftime(stamp, sizeof stamp, "%Y-%m-%dT%H:%M:%S", &tm);
    if (l->step < 0)
        snprintf(step, sizeof step, "-");
    else
        snprintf(step, sizeof step, "%ld", l->step);
    int n = snprintf(line, sizeof line, "%s.%03ldZ rank %05d %s step %s %s ", stamp, ts.tv_nsec / 1000000L,
                     l->rank, l->host[0] ? l->host : "-", step, level_names[lv]);
    if (n < 0 || n >= (int)sizeof line) n = 0;
    vsnprintf(line + n, sizeof line - (size_t)n, fmt, ap);
    size_t len = strlen(line);
    while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r')) line[--len] = '\0';
    if (len + 1 < sizeof line) {
        line[len++] = '\n';
        line[len] = '\0';
    } else {
        line[sizeof line - 2] = '\n';
    }
    if (to_file) {
        fputs(line, l->file);
        fflush(l->file);
    }
    if (to_err) fputs(line, stderr);
}

void log_msg(pc_log *l, log_level lv, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    log_v(l, lv, 1, fmt, ap);
    va_end(ap);
}

void log_file(pc_log *l, log_level lv, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    log_v(l, lv, 0, fmt, ap);
    va_end(ap);
}
