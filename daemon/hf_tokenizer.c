/* hf_tokenizer: client of the projcomp_tokenize.py child process (see its protocol). */
#include "hf_tokenizer.h"

#include <errno.h>
#include <libgen.h>
#include <limits.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

/* dir of this executable + "/projcomp_tokenize.py" */
static int script_path(char *out, size_t n) {
    char exe[PATH_MAX];
    ssize_t len = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (len < 0) return -1;
    exe[len] = '\0';
    return snprintf(out, n, "%s/projcomp_tokenize.py", dirname(exe)) >= (int)n ? -1 : 0;
}

int hf_tokenizer_open(hf_tokenizer *t, const char *python, const char *path, const char *eos_token, int prefix,
                      pc_err *e) {
    memset(t, 0, sizeof *t);
    t->path = path;
    if (!python) python = getenv("PROJCOMP_PYTHON");
    if (!python || !*python) python = "python3";
    char script[PATH_MAX];
    if (script_path(script, sizeof script) != 0) return pc_errorf(e, "cannot locate projcomp_tokenize.py");
    if (access(script, R_OK) != 0) return pc_errorf(e, "%s: missing (it is installed beside projcomp-data)", script);
    int in[2], out[2];
    if (pipe(in) != 0) return pc_errorf(e, "pipe: %s", strerror(errno));
    if (pipe(out) != 0) {
        close(in[0]);
        close(in[1]);
        return pc_errorf(e, "pipe: %s", strerror(errno));
    }
    pid_t pid = fork();
    if (pid < 0) return pc_errorf(e, "fork: %s", strerror(errno));
    if (pid == 0) { /* child: stdin from in[0], stdout to out[1] */
        dup2(in[0], STDIN_FILENO);
        dup2(out[1], STDOUT_FILENO);
        close(in[0]), close(in[1]), close(out[0]), close(out[1]);
        execlp(python, python, script, path, eos_token ? eos_token : "", prefix ? "auto" : "none", (char *)NULL);
        fprintf(stderr, "projcomp-data: cannot run %s: %s\n", python, strerror(errno));
        _exit(127);
    }
    close(in[0]);
    close(out[1]);
    t->pid = pid;
    t->to = fdopen(in[1], "wb");
    t->from = fdopen(out[0], "rb");
    signal(SIGPIPE, SIG_IGN); /* a dead child shows up as a write error, not a signal */
    char line[512];
    if (!t->from || !t->to || !fgets(line, sizeof line, t->from) ||
        sscanf(line, "%d %d %d %255[^\n]", &t->vocab_size, &t->eos_id, &t->bos_id, t->name) != 4 ||
        t->vocab_size <= 0) {
        hf_tokenizer_close(t);
        return pc_errorf(e, "%s: the tokenizer helper (%s) failed; see its message above", path, python);
    }
    return 0;
}

/* fread of n items of size bytes (none: nothing read), or -1. */
static int read_all(hf_tokenizer *t, void *dst, size_t size, size_t n) {
    return n == 0 || fread(dst, size, n, t->from) == n ? 0 : -1;
}

int hf_tokenizer_encode_batch(hf_tokenizer *t, const char *text, const int64_t *off, int k, uint32_t **ids,
                              int64_t *ids_cap, int64_t *counts, pc_err *e) {
    uint32_t hdr = (uint32_t)k;
    int bad = fwrite(&hdr, 4, 1, t->to) != 1;
    for (int j = 0; j < k && !bad; j++) {
        size_t len = (size_t)(off[j + 1] - off[j]);
        hdr = (uint32_t)len;
        bad = len > UINT32_MAX || fwrite(&hdr, 4, 1, t->to) != 1 || fwrite(text + off[j], 1, len, t->to) != len;
    }
    if (bad || fflush(t->to) != 0) return pc_errorf(e, "%s: the tokenizer helper stopped reading", t->path);
    int64_t n = 0;
    for (int j = 0; j < k; j++) {
        uint32_t count;
        if (read_all(t, &count, 4, 1)) return pc_errorf(e, "%s: the tokenizer helper stopped answering", t->path);
        if (n + count > *ids_cap) {
            *ids_cap = PC_MAX(2 * *ids_cap, n + count);
            *ids = pc_realloc(*ids, sizeof(uint32_t) * (size_t)*ids_cap);
        }
        if (read_all(t, *ids + n, 4, count)) return pc_errorf(e, "%s: short answer from the tokenizer helper", t->path);
        counts[j] = count;
        n += count;
    }
    return 0;
}

void hf_tokenizer_close(hf_tokenizer *t) {
    if (t->to) fclose(t->to);
    if (t->from) fclose(t->from);
    if (t->pid > 0) waitpid(t->pid, NULL, 0);
    t->to = t->from = NULL;
    t->pid = 0;
}
