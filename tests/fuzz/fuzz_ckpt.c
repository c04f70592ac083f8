/* fuzz_ckpt: libFuzzer harness for the checkpoint reader (MANIFEST, block and raw files).
 *
 * Input layout: the MANIFEST text, then up to four files separated by "\n--file--\n",
 * each "NAME\n" followed by its bytes, written into CKPT/step-0000012/ when NAME is a
 * plain file name. So the fuzzer can get past the checksums, the harness fills in
 * placeholders: in a "file" line, "@size" and "@hash" become the size and XXH64 of the
 * named file, and in the "end" line "@hash" becomes the XXH64 of the text before it.
 *
 * Properties: a manifest that verifies lists files that exist with the stated sizes; a
 * block entry reads back (ckpt_read_block) exactly when its file header matches the
 * shape asked for; a raw entry reads back its bytes; ckpt_find picks this checkpoint
 * exactly when it verifies. Sanitizers stay quiet throughout. */
#include <inttypes.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "ckpt.h"
#include "fuzz_util.h"

#define FSEP "\n--file--\n"

static int plain_name(const char *s) {
    if (!*s || !strcmp(s, ".") || !strcmp(s, "..") || strlen(s) > 200) return 0;
    for (const char *p = s; *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') || strchr("._-", *p)))
            return 0;
    return 1;
}

/* Replace "@size"/"@hash" placeholders (see above); returns a new string. */
static char *fill_placeholders(const char *text, const char *dir) {
    size_t cap = strlen(text) * 2 + 64, n = 0;
    char *out = pc_malloc(cap);
    const char *p = text;
    while (*p) {
        const char *nl = strchr(p, '\n');
        size_t ll = nl ? (size_t)(nl - p) : strlen(p);
        char line[1024], rep[1200];
        snprintf(line, sizeof line, "%.*s", (int)(ll < 1023 ? ll : 1023), p);
        const char *src = p;
        size_t sl = ll;
        char kind[16], name[256], file[256], size[32], hash[32];
        if (ll < 1023 && sscanf(line, "file %15s %255s %255s %31s %31s", kind, name, file, size, hash) == 5 &&
            (!strcmp(size, "@size") || !strcmp(hash, "@hash"))) {
            char path[1024];
            snprintf(path, sizeof path, "%s/%s", dir, file);
            char *buf = NULL;
            size_t len = 0;
            pc_err e;
            if (plain_name(file) && pc_read_file(path, &buf, &len, &e) == 0) {
                if (!strcmp(size, "@size")) snprintf(size, sizeof size, "%zu", len);
                if (!strcmp(hash, "@hash")) snprintf(hash, sizeof hash, "%016" PRIx64, ckpt_xxh64(buf, len, 0));
                free(buf);
            }
            snprintf(rep, sizeof rep, "file %s %s %s %s %s", kind, name, file, size, hash);
            src = rep, sl = strlen(rep);
        } else if (ll < 1023 && !strncmp(line, "end ", 4) && strstr(line, "@hash")) {
            char cnt[32] = "0";
            sscanf(line, "end %31s", cnt);
            snprintf(rep, sizeof rep, "end %s %016" PRIx64, cnt, ckpt_xxh64(out, n, 0));
            src = rep, sl = strlen(rep);
        }
        while (n + sl + 2 > cap) out = pc_realloc(out, cap *= 2);
        memcpy(out + n, src, sl);
        n += sl;
        if (nl) out[n++] = '\n';
        p = nl ? nl + 1 : p + ll;
    }
    out[n] = '\0';
    return out;
}

/* The shape a block file declares (magic, name, array names and counts), as a caller
 * that knows it would ask; 0 when the header cannot be parsed or is implausible (a name
 * holding a NUL byte is no C string a caller could pass). */
static int block_shape(const char *path, ckpt_block *b, float **bufs) {
    char *t = NULL;
    size_t len = 0;
    pc_err e;
    if (pc_read_file(path, &t, &len, &e) != 0) return 0;
    const unsigned char *p = (const unsigned char *)t, *end = p + len;
    uint32_t nl, na;
    int ok = 0;
    if (len < 16 || memcmp(p, "PCCKBLK1", 8)) goto out;
    memcpy(&nl, p + 8, 4);
    memcpy(&na, p + 12, 4);
    p += 16;
    if (na > CKPT_MAX_ARRAYS || nl >= CKPT_NAME_MAX || (size_t)(end - p) < nl || memchr(p, 0, nl)) goto out;
    memset(b, 0, sizeof *b);
    memcpy(b->name, p, nl);
    p += nl;
    b->n_arrays = (int)na;
    for (uint32_t i = 0; i < na; i++) {
        uint32_t an;
        int64_t cnt;
        if ((size_t)(end - p) < 4) goto out;
        memcpy(&an, p, 4);
        p += 4;
        if (an >= sizeof b->arrays[i].name || (size_t)(end - p) < an + 8 || memchr(p, 0, an)) goto out;
        memcpy(b->arrays[i].name, p, an);
        p += an;
        memcpy(&cnt, p, 8);
        p += 8;
        if (cnt < 0 || cnt > (1 << 16)) goto out;
        b->arrays[i].n = cnt;
        bufs[i] = pc_calloc((size_t)cnt + 1, sizeof(float));
        b->arrays[i].data = bufs[i];
    }
    ok = 1;
out:
    free(t);
    return ok;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *root = fuzz_scratch_dir();
    char ckdir[700], step_dir[800], path[1200];
    snprintf(ckdir, sizeof ckdir, "%s/ckpt", root);
    snprintf(step_dir, sizeof step_dir, "%s/step-0000012", ckdir);
    mkdir(ckdir, 0700);
    mkdir(step_dir, 0700);
    fuzz_part parts[5];
    int n = fuzz_split(data, size, FSEP, parts, 5);
    for (int k = 1; k < n; k++) {
        const unsigned char *nlp = memchr(parts[k].p, '\n', parts[k].n);
        if (!nlp) continue;
        fuzz_part name = {parts[k].p, (size_t)(nlp - parts[k].p)};
        char *fname = fuzz_strndup(&name);
        if (plain_name(fname) && strcmp(fname, "MANIFEST")) {
            snprintf(path, sizeof path, "%s/%s", step_dir, fname);
            fuzz_write(path, nlp + 1, parts[k].n - name.n - 1);
        }
        free(fname);
    }
    char *raw = fuzz_strndup(&parts[0]);
    char *manifest = fill_placeholders(raw, step_dir);
    free(raw);
    snprintf(path, sizeof path, "%s/MANIFEST", step_dir);
    fuzz_write(path, manifest, strlen(manifest));
    free(manifest);

    ckpt_manifest m;
    pc_err e = {{0}};
    int verified = ckpt_verify(step_dir, &m, &e) == 0;
    if (!verified) FUZZ_CHECK(e.msg[0] != '\0', "verify failed without a message");
    if (verified) {
        for (int i = 0; i < m.n_entries; i++) {
            const ckpt_entry *en = &m.entries[i];
            struct stat st;
            snprintf(path, sizeof path, "%s/%s", step_dir, en->file);
            FUZZ_CHECK(stat(path, &st) == 0 && st.st_size == en->size, "entry '%s': file %s", en->name, en->file);
            FUZZ_CHECK(ckpt_entry_find(&m, en->name) != NULL, "entry '%s' not found by name", en->name);
            if (en->kind == CKPT_RAW) {
                char *buf = NULL;
                size_t len = 0;
                FUZZ_CHECK(ckpt_read_raw(step_dir, &m, en->name, &buf, &len, &e) == 0 && (int64_t)len == en->size,
                           "raw '%s' does not read back: %s", en->name, e.msg);
                free(buf);
            } else {
                ckpt_block b;
                float *bufs[CKPT_MAX_ARRAYS] = {0};
                if (block_shape(path, &b, bufs)) {
                    int rc = ckpt_read_block(step_dir, &m, &b, &e);
                    if (strcmp(b.name, en->name) == 0) {
                        /* the file was verified against the manifest, and it declares this shape */
                        int64_t want = 16 + (int64_t)strlen(b.name);
                        for (int a = 0; a < b.n_arrays; a++)
                            want += 12 + (int64_t)strlen(b.arrays[a].name) + 4 * b.arrays[a].n;
                        FUZZ_CHECK(rc == 0 || want != en->size,
                                   "block '%s' of its own declared shape does not read: %s", en->name, e.msg);
                    }
                    if (b.n_arrays > 0 && b.arrays[0].n > 0) {
                        b.arrays[0].n--; /* a wrong shape must be refused */
                        FUZZ_CHECK(ckpt_read_block(step_dir, &m, &b, &e) != 0, "block '%s' read with a wrong shape",
                                   en->name);
                    }
                }
                for (int a = 0; a < CKPT_MAX_ARRAYS; a++) free(bufs[a]);
            }
        }
        ckpt_manifest_free(&m);
    }
    int64_t step = -1;
    char found[1200];
    int rc = ckpt_find(ckdir, NULL, NULL, &step, found, sizeof found, &e);
    /* on a readable directory it fails only when the checkpoint there is unusable */
    FUZZ_CHECK(rc >= 0 || strstr(e.msg, "none of the 1 checkpoint(s) verifies"),
               "ckpt_find failed on a readable directory: %s", e.msg);
    if (rc == 1) FUZZ_CHECK(verified && step == 12, "ckpt_find picked step %lld (verified %d)", (long long)step, verified);
    return 0;
}
