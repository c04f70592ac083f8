/* checkpoint: the trainer's state as checkpoint blocks (common/ckpt), saved and resumed.
 *
 * One block per trained tensor, keyed by its name, holding three arrays of the same
 * length: "param", "adam_m", "adam_v".
 *   pretrain, prune (METHOD_DIRECT): the tensors of the model t->m (t->m.params).
 *   compress (METHOD_PROJECT): the tensors of the projection set t->ps (P_in, P_out, A
 *   and the norm gains, t->ps.params).
 * The moments share the parameters' offsets. compress and prune also store the kept
 * indices (RUN/importance.txt) as the raw entry "importance.txt"; a resumed run uses
 * them instead of scoring again. The manifest records mode, seed, method and a hash of
 * the resolved config. The step is all the rest needs: the learning rate, AdamW's bias
 * correction and the data order are functions of it. */
#include <stdlib.h>
#include <string.h>

#include "checkpoint.h"
#include "ckpt.h"

/* One trained tensor of the method's flat parameter buffer. */
typedef struct state_tensor {
    const char *name;
    int64_t offset, numel;
} state_tensor;

static int n_state_tensors(const trainer *t) {
    return t->method == &METHOD_PROJECT ? t->ps.n_tensors : llama_n_tensors(&t->m);
}

static float *state_params(const trainer *t) { return t->method == &METHOD_PROJECT ? t->ps.params : t->m.params; }

static state_tensor state_tensor_at(const trainer *t, int i) {
    state_tensor s;
    if (t->method == &METHOD_PROJECT) {
        s.name = t->ps.tensors[i].name;
        s.offset = t->ps.tensors[i].offset;
        s.numel = t->ps.tensors[i].numel;
    } else {
        const llama_tensor *lt = llama_tensor_at(&t->m, i);
        s.name = lt->name;
        s.offset = lt->offset;
        s.numel = lt->numel;
    }
    return s;
}

/* Rank that writes state tensor i. pretrain/prune: every rank holds the same replicated
 * state, so the tensors are dealt out (deal_writers) and the ranks write in parallel.
 * compress: each rank holds its own blocks' tensors and writes them; a shared factor
 * replicated on several ranks is written by its lowest holder. */
static int block_owner(const run_ctx *r, const trainer *t, int i) {
    if (t->method == &METHOD_PROJECT) return t->ps.tensors[i].write ? r->rank : -1;
    return t->ckpt_rank_of[i];
}

/* pretrain, prune: the replicated state's tensors dealt out to the ranks by size
 * (pc_deal), so that no rank writes much more than its share (rank 0 wrote all of it,
 * 12 bytes a parameter, while the others waited at the commit under the collective
 * watchdog), nor reads more on a resume. The same on every rank. */
static void deal_writers(const run_ctx *r, trainer *t) {
    int n = n_state_tensors(t);
    int64_t *sizes = pc_malloc(sizeof(int64_t) * (size_t)(n > 0 ? n : 1));
    for (int i = 0; i < n; i++) sizes[i] = state_tensor_at(t, i).numel;
    t->ckpt_rank_of = pc_malloc(sizeof(int) * (size_t)(n > 0 ? n : 1));
    pc_deal(sizes, n, r->world, t->ckpt_rank_of);
    free(sizes);
}

static void ckpt_root(const run_ctx *r, char *out, size_t n) { snprintf(out, n, "%s/checkpoints", r->run_dir); }

/* The largest state tensor, of those `rank` writes (-1: of all). */
static int64_t max_numel(const run_ctx *r, const trainer *t, int rank) {
    int64_t mx = 1;
    for (int i = 0; i < n_state_tensors(t); i++)
        if (rank < 0 || block_owner(r, t, i) == rank) mx = PC_MAX(mx, state_tensor_at(t, i).numel);
    return mx;
}

static void block_of(const trainer *t, int i, float *stage, ckpt_block *b) {
    state_tensor s = state_tensor_at(t, i);
    static const char *arrays[3] = {"param", "adam_m", "adam_v"};
    memset(b, 0, sizeof *b);
    snprintf(b->name, sizeof b->name, "%s", s.name);
    b->n_arrays = 3;
    for (int k = 0; k < 3; k++) {
        snprintf(b->arrays[k].name, sizeof b->arrays[k].name, "%s", arrays[k]);
        b->arrays[k].data = stage + (size_t)k * (size_t)s.numel;
        b->arrays[k].n = s.numel;
    }
}

static void config_hash(const run_ctx *r, char *out, size_t n) {
    char *text = config_resolved_text(&r->cfg);
    snprintf(out, n, "%016llx", (unsigned long long)ckpt_xxh64(text, strlen(text), 0));
    free(text);
}

static int cmp_tensor_name(const void *a, const void *b) {
    return strcmp((*(const st_tensor *const *)a)->name, (*(const st_tensor *const *)b)->name);
}

/* A fingerprint of the model at dir (16 hex digits): every tensor's name, dtype and
 * shape, and 4 KiB of its bytes at its start, middle and end, in name order (so a copy
 * sharded otherwise has the same). Other weights of the same shapes give another one
 * almost surely; it reads about 12 KiB a tensor, not the model. */
static int base_fingerprint(const char *dir, char *out, size_t n, pc_err *e) {
    st_model *st;
    if (st_open(dir, &st, e) != 0) return -1;
    int nt = st_count(st);
    const st_tensor **ts = pc_malloc(sizeof *ts * (size_t)(nt ? nt : 1));
    for (int i = 0; i < nt; i++) ts[i] = st_get(st, i);
    qsort(ts, (size_t)nt, sizeof *ts, cmp_tensor_name);
    ckpt_hash h;
    ckpt_hash_init(&h, 0);
    for (int i = 0; i < nt; i++) {
        const st_tensor *t = ts[i];
        const char *dt = st_dtype_name(t->dtype);
        ckpt_hash_update(&h, t->name, strlen(t->name) + 1);
        ckpt_hash_update(&h, dt, strlen(dt) + 1);
        ckpt_hash_update(&h, t->shape, sizeof(int64_t) * (size_t)t->ndim);
        size_t piece = t->nbytes < 4096 ? t->nbytes : 4096;
        size_t at[3] = {0, (t->nbytes - piece) / 2, t->nbytes - piece};
        for (int k = 0; k < 3 && piece > 0; k++) ckpt_hash_update(&h, t->data + at[k], piece);
    }
    snprintf(out, n, "%016llx", (unsigned long long)ckpt_hash_final(&h));
    free(ts);
    st_close(st);
    return 0;
}

/* A resumed run that reads its base while it trains (compress's frozen slices, a
 * distillation teacher) must read the one its checkpoint was trained from. */
static int check_base(run_ctx *r, const ckpt_manifest *m, const char *path, pc_err *e) {
    const pc_config *c = &r->cfg;
    const char *had = ckpt_meta_get(m, "base");
    if (!had || !c->model.base[0] || (strcmp(c->run.mode, "compress") && !c->distill.enabled)) return 0;
    char now[24];
    if (base_fingerprint(c->model.base, now, sizeof now, e) != 0) return -1;
    if (strcmp(now, had))
        return pc_errorf(e, "%s: model.base '%s' is not the model this checkpoint was trained from (fingerprint %s, "
                            "the checkpoint's %s): resume with that base, or use another run.dir",
                         path, c->model.base, now, had);
    return 0;
}

/* The keys changed since the checkpoint at path was written, named (from its copy of
 * the resolved config; a checkpoint without one compares the hashes). */
static void warn_config_changes(run_ctx *r, const ckpt_manifest *m, const char *path) {
    char *was = NULL, diff[1536];
    size_t len = 0;
    pc_err ignored = {{0}};
    if (ckpt_entry_find(m, "config.resolved.yaml") &&
        ckpt_read_raw(path, m, "config.resolved.yaml", &was, &len, &ignored) == 0) {
        char *now = config_resolved_text(&r->cfg);
        int n = config_resolved_diff(was, now, diff, sizeof diff);
        if (n > 0) LOGW(&r->log, "%s: resuming with %d key(s) changed since it was written: %s", path, n, diff);
        free(now);
        free(was);
        return;
    }
    char hash[32];
    config_hash(r, hash, sizeof hash);
    const char *ch = ckpt_meta_get(m, "config_hash");
    if (!ch || strcmp(ch, hash))
        LOGW(&r->log, "%s: the resolved config differs from the one that wrote this checkpoint; resuming anyway",
             path);
}

int ckpt_save(run_ctx *r, trainer *t, int64_t step, pc_err *e) {
    const pc_config *c = &r->cfg;
    double t0 = pc_now();
    char root[1100];
    ckpt_root(r, root, sizeof root);
    ckpt_writer *w;
    if (t->method != &METHOD_PROJECT && !t->ckpt_rank_of) deal_writers(r, t);
    if (ckpt_write_begin(&w, root, step, r->comm, &r->log, e) != 0) return -1;
    float *stage = pc_alloc_f32((size_t)max_numel(r, t, r->rank) * 3); /* (3, numel) host copy of one block */
    float *params = state_params(t);
    int64_t bytes = 0;
    int ok = 1;
    for (int i = 0; ok && i < n_state_tensors(t); i++) {
        if (block_owner(r, t, i) != r->rank) continue;
        state_tensor s = state_tensor_at(t, i);
        ckpt_block b;
        block_of(t, i, stage, &b);
        be_download(r->be, b.arrays[0].data, params + s.offset, (size_t)s.numel);
        be_download(r->be, b.arrays[1].data, t->adam_m + s.offset, (size_t)s.numel);
        be_download(r->be, b.arrays[2].data, t->adam_v + s.offset, (size_t)s.numel);
        ok = ckpt_write_block(w, &b, e) == 0;
        bytes += 12 * s.numel;
    }
    free(stage);
    if (ok && r->rank == 0 && strcmp(c->run.mode, "pretrain") != 0) { /* compress, prune: the kept indices */
        char path[1200], *text;
        size_t len;
        snprintf(path, sizeof path, "%s/importance.txt", r->run_dir);
        if (pc_read_file(path, &text, &len, e) != 0) { /* a checkpoint without them cannot be resumed */
            ckpt_write_fail(w, e);
        } else {
            ckpt_write_raw(w, "importance.txt", text, len, e);
            free(text);
        }
    }
    if (ok && r->rank == 0) { /* what the state was trained with, for the resume to name what changed */
        char *text = config_resolved_text(c);
        ckpt_write_raw(w, "config.resolved.yaml", text, strlen(text), e);
        free(text);
    } /* a failure is remembered by the writer; the commit below is collective */
    ckpt_kv meta[6];
    memset(meta, 0, sizeof meta);
    int n_meta = 5;
    if (r->rank == 0 && c->model.base[0] && !t->base_print[0] &&
        base_fingerprint(c->model.base, t->base_print, sizeof t->base_print, e) != 0)
        ckpt_write_fail(w, e); /* the commit below is collective */
    if (r->rank == 0 && t->base_print[0]) {
        snprintf(meta[5].key, sizeof meta[5].key, "base");
        snprintf(meta[5].value, sizeof meta[5].value, "%s", t->base_print);
        n_meta = 6;
    }
    snprintf(meta[0].key, sizeof meta[0].key, "mode");
    snprintf(meta[0].value, sizeof meta[0].value, "%s", c->run.mode);
    snprintf(meta[1].key, sizeof meta[1].key, "seed");
    snprintf(meta[1].value, sizeof meta[1].value, "%lld", (long long)c->run.seed);
    snprintf(meta[2].key, sizeof meta[2].key, "method");
    snprintf(meta[2].value, sizeof meta[2].value, "%s", t->method->name);
    snprintf(meta[3].key, sizeof meta[3].key, "config_hash");
    config_hash(r, meta[3].value, sizeof meta[3].value);
    snprintf(meta[4].key, sizeof meta[4].key, "blocks");
    snprintf(meta[4].value, sizeof meta[4].value, "%d", n_state_tensors(t));
    if (ckpt_write_commit(w, meta, n_meta, c->checkpoint.keep, e) != 0)
        return pc_error_wrap(e, "rank %d: checkpoint of step %lld", r->rank, (long long)step);
    LOGI(&r->log, "checkpoint of step %lld written to %s in %.2f s (%.3g MB from this rank)", (long long)step, root,
         pc_now() - t0, (double)bytes / 1e6);
    return 0;
}

/* Where the A tensor of a split matrix lies in the whole A: rows [lo, hi) of a
 * (rows, other) matrix (input-projected, split by rows) or columns [lo, hi) of an
 * (other, cols) one (output-projected, split by columns). */
typedef struct a_slice {
    char base[CKPT_NAME_MAX]; /* "<hf name>.a" */
    int by_cols;
    int64_t lo, hi, other;
} a_slice;

/* The slice geometry of the compress state tensor at `offset` when it is the A of a
 * matrix a plan may cut (proj_split_axis: by its role, so also where the projected side
 * keeps its width, e.g. the embedding when compress.d_model is the base's); 0 otherwise. */
static int a_slice_of(const trainer *t, int64_t offset, a_slice *sl) {
    if (t->method != &METHOD_PROJECT) return 0;
    for (int i = 0; i < t->ps.n_blocks; i++) {
        const proj_block *b = &t->ps.blocks[i];
        if (b->owner != t->ps.rank || b->kind == PROJ_NORM || b->a != offset) continue;
        proj_kind axis = proj_split_axis(b->name);
        if (axis == PROJ_WHOLE) return 0;
        int by_cols = axis == PROJ_COLS;
        memset(sl, 0, sizeof *sl);
        snprintf(sl->base, sizeof sl->base, "%s.a", b->name);
        sl->by_cols = by_cols;
        sl->other = by_cols ? b->d_out_c : b->d_in_c;
        int split = b->kind == axis;
        sl->lo = split ? b->r0 : 0;
        sl->hi = split ? b->r1 : (by_cols ? b->d_in_c : b->d_out_c);
        return 1;
    }
    return 0;
}

/* Fill block `out` (the three arrays of slice sl) from the checkpoint's pieces of the
 * same A: "<base>" (whole) or "<base>[a:b]", copying each overlap. */
static int assemble(const char *path, const ckpt_manifest *m, const a_slice *sl, ckpt_block *out, pc_err *e) {
    size_t bl = strlen(sl->base);
    int64_t covered = 0, width = sl->hi - sl->lo;
    for (int k = 0; k < m->n_entries; k++) {
        const ckpt_entry *en = &m->entries[k];
        long long a = 0, b = -1;
        if (en->kind != CKPT_BLOCK || strncmp(en->name, sl->base, bl)) continue;
        if (en->name[bl] == '[') {
            char tail;
            if (sscanf(en->name + bl, "[%lld:%lld]%c", &a, &b, &tail) != 2 || b <= a) continue;
        } else if (en->name[bl] != '\0') {
            continue;
        }
        /* the piece's element count: (b - a) * other, or the whole tensor's */
        int64_t piece_n = b >= 0 ? (int64_t)(b - a) * sl->other : -1;
        if (piece_n < 0) { /* whole: its extent from the file size (header is small) */
            int64_t hdr = 8 + 8 + (int64_t)bl; /* the block file layout of common/ckpt.h */
            for (int j = 0; j < out->n_arrays; j++) hdr += 12 + (int64_t)strlen(out->arrays[j].name);
            piece_n = (en->size - hdr) / 12;
            b = piece_n / sl->other;
        }
        int64_t lo = PC_MAX(sl->lo, (int64_t)a), hi = PC_MIN(sl->hi, (int64_t)b);
        if (lo >= hi) continue;
        float *buf = pc_alloc_f32((size_t)piece_n * 3);
        ckpt_block pb = *out;
        snprintf(pb.name, sizeof pb.name, "%s", en->name);
        for (int j = 0; j < 3; j++) {
            pb.arrays[j].data = buf + (size_t)j * (size_t)piece_n;
            pb.arrays[j].n = piece_n;
        }
        int rc = ckpt_read_block(path, m, &pb, e);
        for (int j = 0; rc == 0 && j < 3; j++) {
            const float *src = pb.arrays[j].data;
            float *dst = out->arrays[j].data;
            if (!sl->by_cols) /* rows [lo, hi) of (rows, other): contiguous */
                memcpy(dst + (lo - sl->lo) * sl->other, src + (lo - a) * sl->other,
                       sizeof(float) * (size_t)((hi - lo) * sl->other));
            else /* columns [lo, hi) of every one of the `other` rows */
                for (int64_t row = 0; row < sl->other; row++)
                    memcpy(dst + row * width + (lo - sl->lo), src + row * (b - a) + (lo - a),
                           sizeof(float) * (size_t)(hi - lo));
        }
        free(buf);
        if (rc != 0) return -1;
        covered += hi - lo;
    }
    if (covered != width)
        return pc_errorf(e, "%s: the pieces of '%s' cover %lld of its %s [%lld, %lld) this rank needs", path,
                         sl->base, (long long)covered, sl->by_cols ? "columns" : "rows", (long long)sl->lo,
                         (long long)sl->hi);
    return 0;
}

/* The newest valid checkpoint, found by the ranks together (ckpt_find: each checks a
 * share of its files); every rank gets its step (-1: none) and path. */
static int pick(run_ctx *r, int64_t *step, char *path, size_t n, pc_err *e) {
    char root[1100];
    ckpt_root(r, root, sizeof root);
    int f = ckpt_find(root, r->comm, &r->log, step, path, n, e); /* collective: each rank checks a share */
    if (f < 0) return -1;
    if (f == 0) *step = -1;
    return 0;
}

/* The newest valid checkpoint, found (and its checksums verified) once per run. */
static int picked(run_ctx *r, trainer *t, int64_t *step, const char **path, pc_err *e) {
    if (!t->ckpt_picked) {
        if (pick(r, &t->ckpt_step, t->ckpt_path, sizeof t->ckpt_path, e) != 0) return -1;
        t->ckpt_picked = 1;
    }
    *step = t->ckpt_step;
    *path = t->ckpt_path;
    return 0;
}

static int check_meta(run_ctx *r, const ckpt_manifest *m, const char *path, const char *key, const char *want,
                      pc_err *e) {
    const char *have = ckpt_meta_get(m, key);
    if (!have || strcmp(have, want)) /* every checkpoint there is that run's: the directory goes, not this one */
        return pc_errorf(e, "%s: checkpoint has %s '%s', this run has '%s' (use another run.dir, or remove %s/"
                            "checkpoints to start this run over)",
                         path, key, have ? have : "(none)", want, r->run_dir);
    return 0;
}

int ckpt_resume(run_ctx *r, trainer *t, int64_t *start_step, pc_err *e) {
    const pc_config *c = &r->cfg;
    *start_step = 0;
    int64_t step;
    const char *path;
    if (picked(r, t, &step, &path, e) != 0) return -1;
    if (step < 0) return 0;
    ckpt_manifest m;
    if (ckpt_manifest_read(path, &m, e) != 0) return -1;
    char seed[32];
    snprintf(seed, sizeof seed, "%lld", (long long)c->run.seed);
    int rc = check_meta(r, &m, path, "mode", c->run.mode, e);
    if (rc == 0) rc = check_meta(r, &m, path, "seed", seed, e);
    if (rc == 0) rc = check_meta(r, &m, path, "method", t->method->name, e);
    if (rc == 0) rc = check_base(r, &m, path, e);
    if (rc == 0 && r->rank == 0) warn_config_changes(r, &m, path);
    int n_blocks = 0;
    for (int i = 0; i < m.n_entries; i++) n_blocks += m.entries[i].kind == CKPT_BLOCK;
    if (rc == 0 && t->method == &METHOD_DIRECT && n_blocks != n_state_tensors(t))
        rc = pc_errorf(e, "%s: %d blocks, this model trains %d tensors", path, n_blocks, n_state_tensors(t));
    /* pretrain, prune: each rank reads the tensors dealt to it and sends them to the others
     * (every rank read all of the state, world times its size from the file system) */
    int direct = t->method == &METHOD_DIRECT;
    if (direct && !t->ckpt_rank_of) deal_writers(r, t);
    int64_t most = max_numel(r, t, direct ? r->rank : -1); /* of the tensors this rank reads */
    float *stage = rc == 0 ? pc_alloc_f32((size_t)most * 3) : NULL;
    float *params = state_params(t);
    for (int i = 0; rc == 0 && i < n_state_tensors(t); i++) {
        if (direct && t->ckpt_rank_of[i] != r->rank) continue;
        state_tensor s = state_tensor_at(t, i);
        ckpt_block b;
        block_of(t, i, stage, &b);
        a_slice sl;
        if (!ckpt_entry_find(&m, s.name) && a_slice_of(t, s.offset, &sl))
            rc = assemble(path, &m, &sl, &b, e); /* written under another plan: other row/column ranges */
        else
            rc = ckpt_read_block(path, &m, &b, e);
        if (rc != 0) break;
        be_upload(r->be, params + s.offset, b.arrays[0].data, (size_t)s.numel);
        be_upload(r->be, t->adam_m + s.offset, b.arrays[1].data, (size_t)s.numel);
        be_upload(r->be, t->adam_v + s.offset, b.arrays[2].data, (size_t)s.numel);
    }
    free(stage);
    ckpt_manifest_free(&m);
    /* every rank must have restored the same state before training on */
    if (run_agree(r, rc, e, "%s: another rank failed to restore this checkpoint (see its log)", path) != 0)
        return -1;
    for (int i = 0; direct && r->world > 1 && i < n_state_tensors(t); i++) { /* each tensor from its reader */
        state_tensor s = state_tensor_at(t, i);
        float *arrays[3] = {params + s.offset, t->adam_m + s.offset, t->adam_v + s.offset};
        for (int k = 0; k < 3; k++)
            if (comm_broadcast(r->dcomm, arrays[k], (size_t)s.numel, COMM_F32, t->ckpt_rank_of[i], e) != 0)
                return pc_error_wrap(e, "%s: sending %s to the other ranks", path, s.name);
    }
    *start_step = step;
    LOGI(&r->log, "restored %s (step %lld)", path, (long long)step);
    return 0;
}

int ckpt_resume_indices(run_ctx *r, trainer *t, const int *d_ff_c, int *loaded, pc_err *e) {
    *loaded = 0;
    int64_t step;
    const char *path;
    if (picked(r, t, &step, &path, e) != 0) return -1;
    if (step < 0) return 0;
    ckpt_manifest m;
    if (ckpt_manifest_read(path, &m, e) != 0) return -1;
    char *text = NULL;
    size_t len = 0;
    if (check_meta(r, &m, path, "mode", r->cfg.run.mode, e) != 0) { /* another run's: says so itself */
        ckpt_manifest_free(&m);
        return -1;
    }
    int rc = ckpt_read_raw(path, &m, "importance.txt", &text, &len, e);
    const ckpt_entry *en = ckpt_entry_find(&m, "importance.txt");
    if (rc == 0) {
        char file[1500];
        snprintf(file, sizeof file, "%s/%s", path, en->file);
        rc = importance_parse_indices(text, file, &t->base_cfg, r->cfg.compress.d_model, d_ff_c, &t->idx, e);
        if (rc != 0) { /* other widths than it was trained at: say which keys changed */
            warn_config_changes(r, &m, path);
            size_t at = strlen(e->msg);
            snprintf(e->msg + at, sizeof e->msg - at,
                     " (a checkpoint resumes at the widths it was trained at: set compress.d_model and "
                     "compress.d_ff back, or use another run.dir)");
        }
    }
    if (rc == 0 && r->rank == 0) { /* the run directory's copy describes the state being trained */
        char dst[1200];
        snprintf(dst, sizeof dst, "%s/importance.txt", r->run_dir);
        rc = pc_write_file_atomic(dst, text, len, e);
    }
    free(text);
    ckpt_manifest_free(&m);
    if (rc != 0) return pc_error_wrap(e, "resuming the kept indices");
    LOGI(&r->log, "kept indices from %s/importance.txt (not scored again)", path);
    *loaded = 1;
    return 0;
}
