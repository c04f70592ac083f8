/* run: the run context every daemon module receives (no global state), and the run
 * directory layout (RUN/config.resolved.yaml, RUN/logs/, RUN/metrics.jsonl, RUN/final/). */
#ifndef PC_RUN_H
#define PC_RUN_H

#include <signal.h>

#include "backend.h"
#include "comm.h"
#include "config.h"
#include "data.h"
#include "llama.h"
#include "log.h"

typedef struct run_ctx {
    pc_config cfg;
    comm *comm;   /* MPI: host buffers (losses, flags, scores) */
    comm *dcomm;  /* collectives on backend buffers: NCCL, the MPI comm itself (cpu), or MPI staged via host */
    pc_log log;
    backend *be;
    int rank, world;
    int local_rank, local_size; /* this rank's index among the ranks of its node, and their count */
    char node[COMM_NODE_NAME_MAX]; /* its node's name (comm_node_ranks) */
    char run_dir[1024];
    char final_dir[1024];
    int metrics_fd;                   /* rank 0 only: RUN/metrics.jsonl (O_APPEND), else -1 */
    int lock_fd;                      /* rank 0 only: RUN/.lock, write-locked while the run lives, else -1 */
    int64_t metrics_size;             /* its length after the last whole line */
    int metrics_failed;               /* a row could not be written (warned once) */
    volatile sig_atomic_t *stop_flag; /* set by SIGTERM/SIGUSR1 */
    double t_start;
    double peak_tflops; /* the ranks' summed device peak for the mfu metric, 0: unknown (mfu.h) */
} run_ctx;

/* Where the final model goes: output.dir (without trailing slashes), else RUN/final (n
 * bytes at out). */
int run_final_dir(const pc_config *c, char *out, size_t n, pc_err *e);

/* The base's tokenizer files that travel with the final model (NULL-terminated). */
extern const char *const run_tokenizer_files[];
/* 0 when the final model may go to final_dir: neither run.dir, nor a directory holding
 * it or model.base, nor a part of the run directory (RUN/logs, RUN/checkpoints, ...), and
 * absent, empty, or a model projcompd wrote there before (run_final_replaceable); else -1,
 * e saying what is in the way. Checked before any work and again before the save. */
int run_final_check(const pc_config *c, const char *final_dir, pc_err *e);
/* 0 when an existing dir may be replaced by the final model: it is empty, or holds
 * config.json and only files projcompd writes into a model directory, and is not the
 * model of another run (run_final_other_run). */
int run_final_replaceable(const pc_config *c, const char *dir, pc_err *e);

/* The final model's provenance, dir/projcompd.json: {"run_dir": run.dir's canonical path,
 * "mode", "steps", "base": model.base's canonical path or null, "projcompd": version}. */
extern const char run_provenance_file[];
int run_provenance_write(const pc_config *c, const char *dir, pc_err *e);
/* 1 when dir (outside run.dir) holds the provenance of a model another run wrote (another
 * run.dir), its run.dir then in owner (n bytes); 0 when it is this run's, has none (a
 * model written before provenance was kept) or is inside this run's directory. */
int run_final_other_run(const pc_config *c, const char *dir, char *owner, size_t n);

/* Create RUN/ and RUN/logs (rank 0 creates, all wait), open this rank's log, write
 * config.resolved.yaml and open metrics.jsonl on rank 0. */
int run_open(run_ctx *r, pc_err *e);
void run_close(run_ctx *r);

/* Append one JSON object line (already formatted, without newline) to metrics.jsonl, in
 * one write: a row that cannot be written whole (disk full) is cut back off, and the
 * loss of rows is warned about once. */
void run_metrics(run_ctx *r, const char *json_line);
/* x printed with fmt into out as a JSON number, or null when it is not finite (NaN and
 * infinities are not JSON). Returns out. */
const char *run_json_number(char *out, size_t n, const char *fmt, double x);
/* Log this rank's peak RSS and peak device memory (0 on the CPU backend); rank 0 records
 * every rank's in metrics.jsonl as {"peak_rss_mib": [...], "peak_device_mib": [...]} (collective). */
int run_report_memory(run_ctx *r, pc_err *e);
/* Rank 0 progress line on stderr: step/total, loss, tokens/s, mfu (a fraction; < 0: none), ETA. */
void run_progress(run_ctx *r, long step, long total, double loss, double tok_per_s, double mfu, double step_s);

/* Backend from backend.device (auto picks CUDA when a GPU and the CUDA build exist)
 * and r->dcomm from backend.comm. Collective. */
int run_backend(run_ctx *r, pc_err *e);
/* Every rank's verdict on a step that may fail on some (collective over r->comm; nothing
 * to agree on one rank): 0 when rc is 0 on every rank, else -1 with e holding this
 * rank's own error, or, on a rank that did not fail, fmt's message ("... another rank
 * failed (see its log)"), so that every rank stops together. */
int run_agree(run_ctx *r, int rc, pc_err *e, const char *fmt, ...) __attribute__((format(printf, 4, 5)));
/* Payload bytes of every collective so far, host and device comms together. */
uint64_t run_comm_bytes(const run_ctx *r);
/* The model's shape: model.base's config.json, else model.config. */
int run_model_config(const run_ctx *r, llama_config *lc, pc_err *e);
/* What a model is made for: training its weights; training through the projections
 * (its matrices' values arrive from them, rounded to bf16 with backend.matmul bf16, so
 * they are kept in bf16 only: LLAMA_BF16_ONLY); forward passes only (evaluation: no
 * gradients, one layer's activations, and with backend.matmul bf16 the matrices in bf16
 * only as well, loaded rounded: the values its products read). */
typedef enum { RUN_TRAINED = 0, RUN_PROJECTED, RUN_EVALUATED } run_model_use;
/* llama_init of shape lc for micro-batch (B, data.seq_len) on r->be for `use`: a trained
 * model recomputes layer activations in the backward pass when
 * train.activation_checkpointing and takes the head in train.logits_chunk tokens at a
 * time; every model has the bf16 copy of its weights when backend.matmul is bf16 (only
 * that copy of its matrices, unless its weights are trained); a projected model keeps
 * two stages' gradients only (grad_windows) when compress.shard_grads. The log says when
 * the model keeps q, k, v in bf16 only (llama_attention_16). */
int run_llama_init(run_ctx *r, llama_model *m, const llama_config *lc, int B, run_model_use use, pc_err *e);
/* Rank 0 warns, once a process, when data.seq_len exceeds lc's max_position_embeddings
 * (every mode: run_llama_init, the streamed eval, compress, prune and importance's base). */
void run_warn_seq_len(run_ctx *r, const llama_config *lc);
/* llama_opts.weights of a model made for `use` (run_llama_init's): LLAMA_F32 unless
 * backend.matmul is bf16. */
int run_model_weights(const run_ctx *r, run_model_use use);
/* Build the model for micro-batch B and `use` (not RUN_PROJECTED): weights from
 * model.base, or random init (seed). */
int run_model(run_ctx *r, llama_model *m, int B, run_model_use use, pc_err *e);

/* Open data.valid for the model's vocabulary. */
int open_valid(run_ctx *r, int vocab_size, data_set **out, pc_err *e);
/* Rank 0 warns when the shards of train and valid (either may be NULL) were made by
 * different tokenizers (data_tokenizers_differ), or valid holds a shard train trains on. */
void warn_data_sets(run_ctx *r, const data_set *train, const data_set *valid);
/* Mean validation loss over eval.batches micro-batches of windows, reduced over ranks. */
int eval_valid(run_ctx *r, llama_model *m, data_set *valid, double *loss_out, pc_err *e);
/* Log and record {"step", "val_loss", "val_ppl", "params"} in metrics.jsonl. */
void log_eval(run_ctx *r, long step, double val_loss, int64_t n_params);

/* Modes. Each returns 0 on success, -1 with e filled. */
int mode_train(run_ctx *r, pc_err *e); /* pretrain (and later prune/compress) */
int mode_eval(run_ctx *r, pc_err *e);

#endif
