/* data: HDF5 token shards, the deterministic sample order, and a prefetching loader.
 *
 * A shard is an .h5 file with a 1-D dataset /tokens (uint16 or uint32) holding
 * documents concatenated, each followed by eos_id, and the attributes vocab_size (int),
 * eos_id (int) and tokenizer (string), on /tokens or on the root group. A data set is
 * the sorted union of the files matched by a list of globs, read as one token stream:
 * a window may span two shards. Training samples are windows of seq_len+1 tokens whose
 * start is a pure function of (seed, step, global sample index), so the tokens a rank
 * reads do not depend on the number of ranks. Token ids are checked against the shard's
 * vocab_size on every read. */
#ifndef PC_DATA_H
#define PC_DATA_H

#include <stdint.h>

#include "util.h"

typedef struct data_set data_set;
typedef struct data_loader data_loader;

/* What one shard holds (pointers stay valid until data_close). */
typedef struct data_shard_info {
    const char *path;
    int64_t n_tokens;
    int token_bits; /* 16 or 32 */
    int vocab_size;
    int eos_id;
    const char *tokenizer;
} data_shard_info;

/* Expand globs (each sorted; one matching nothing is an error naming it), open and check
 * every shard. vocab_size: the model's (a shard with a larger one is rejected; <= 0 accepts
 * any). min_tokens: the stream must hold at least that many tokens (seq_len + 1). */
int data_open(const char *const *globs, int n_globs, int vocab_size, int64_t min_tokens, data_set **out,
              pc_err *e);
void data_close(data_set *d);

int64_t data_n_tokens(const data_set *d);
int data_n_shards(const data_set *d);
void data_shard_get_info(const data_set *d, int i, data_shard_info *out);

/* Whether the shards of these n sets were made by different tokenizers: a `tokenizer`,
 * `vocab_size` or `eos_id` attribute unlike the first shard's. If so, msg (cap bytes)
 * names the first shard and the first unlike it, with their attributes, and 1 is
 * returned; 0 otherwise (NULL sets are skipped). The attributes are free text and a
 * writer's choice, so callers warn rather than refuse. */
int data_tokenizers_differ(const data_set *const *sets, int n, char *msg, size_t cap);

/* A shard of b that is also one of a's (the same file, by any path), or NULL. */
const char *data_shared_shard(const data_set *a, const data_set *b);

/* Read n tokens starting at global offset into dst (n elements). Fails naming the file and
 * index of any token >= the shard's vocab_size. */
int data_read(data_set *d, int64_t offset, int64_t n, int32_t *dst, pc_err *e);

/* Window start for global sample `sample` (0..global_batch-1) of optimizer step `step`:
 * uniform in [0, n_tokens - seq_len - 1]. Rank r, micro-batch m reads samples
 * r * per_rank + m * micro_batch + (0..micro_batch-1). Returns -1 if n_tokens <= seq_len. */
int64_t data_sample_offset(uint64_t seed, int64_t step, int64_t sample, int64_t n_tokens, int seq_len);

/* Eval windows: window i starts at i * seq_len and holds seq_len + 1 tokens, so the
 * predicted tokens of consecutive windows do not overlap. */
int64_t data_eval_offset(int64_t i, int seq_len);
/* How many such windows fit in n_tokens. */
int64_t data_eval_n_windows(int64_t n_tokens, int seq_len);

/* Fill tokens (micro_batch, seq_len+1) with samples first_sample .. first_sample+micro_batch-1
 * of step, synchronously. */
int data_read_batch(data_set *d, uint64_t seed, int64_t step, int64_t first_sample, int seq_len,
                    int micro_batch, int32_t *tokens, pc_err *e);

/* Loader: data_loader_get returns the requested batch (the prefetched one when it matches,
 * else a synchronous read) and starts reading (step, first_sample + micro_batch) in a
 * background thread. data_loader_hint redirects that prefetch, e.g. to the next step's
 * first micro-batch after the last get of a step. The result is identical with and
 * without prefetch. The loader does not own d. */
int data_loader_create(data_set *d, uint64_t seed, int seq_len, int micro_batch, data_loader **out, pc_err *e);
/* tokens: (micro_batch, seq_len+1) */
int data_loader_get(data_loader *dl, int64_t step, int64_t first_sample, int32_t *tokens, pc_err *e);
void data_loader_hint(data_loader *dl, int64_t step, int64_t first_sample);
/* How many gets were served from a prefetched batch (for tests and stats). */
int64_t data_loader_n_prefetch_hits(const data_loader *dl);
void data_loader_destroy(data_loader *dl);

/* Write a shard: uint16 when vocab_size <= 65536, else uint32; chunked; written to
 * path.tmp, fsync'd, then renamed (path.tmp is removed on any error: nothing is left
 * half-written). Every token must be < vocab_size. */
int data_write_shard(const char *path, const uint32_t *tokens, int64_t n, int vocab_size, int eos_id,
                     const char *tokenizer, pc_err *e);
/* The same for n tokens that fill(ctx, at, len, dst, e) produces, in order, a piece of at
 * most 2^20 at a time into dst (tokens [at, at + len)): one piece of memory for a shard
 * of any size. fill returns 0, or -1 with e set; it runs under the HDF5 lock, so it
 * must not call into this file. */
typedef int (*data_fill_fn)(void *ctx, int64_t at, int64_t len, uint32_t *dst, pc_err *e);
int data_write_shard_fill(const char *path, int64_t n, data_fill_fn fill, void *ctx, int vocab_size, int eos_id,
                          const char *tokenizer, pc_err *e);

#endif
