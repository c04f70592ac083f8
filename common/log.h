/* log: per-rank log files RUN/logs/rank-NNNNN.log plus stderr.
 *
 * Every line: "2026-11-24T06:40:01.123Z rank 0 host step 12 LEVEL message".
 * stderr gets rank 0's lines at INFO and above, and every rank's WARN/ERROR. */
#ifndef PC_LOG_H
#define PC_LOG_H

#include "util.h"

typedef enum { LOG_DEBUG = 0, LOG_INFO, LOG_WARN, LOG_ERROR } log_level;

typedef struct pc_log {
    FILE *file;            /* may be NULL before the run directory exists */
    int rank;
    char host[64];
    long step;             /* -1 before training starts */
    log_level stderr_level; /* minimum level echoed to stderr by rank 0 */
    int all_ranks_stderr;   /* echo INFO of every rank too */
} pc_log;

void log_init(pc_log *l, int rank);
/* Open RUN/logs/rank-NNNNN.log (creating RUN/logs) for appending. */
int log_open(pc_log *l, const char *run_dir, pc_err *e);
void log_close(pc_log *l);
void log_msg(pc_log *l, log_level lv, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* Like log_msg, but below WARN only to the file (per-step lines the progress line shows). */
void log_file(pc_log *l, log_level lv, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

#define LOGI(l, ...) log_msg((l), LOG_INFO, __VA_ARGS__)
#define LOGW(l, ...) log_msg((l), LOG_WARN, __VA_ARGS__)
#define LOGE(l, ...) log_msg((l), LOG_ERROR, __VA_ARGS__)
#define LOGD(l, ...) log_msg((l), LOG_DEBUG, __VA_ARGS__)

#endif
