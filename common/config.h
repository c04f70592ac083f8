/* config: the job configuration (YAML, libyaml) as one plain struct.
 *
 * Every key is declared once in config_keys.h (path, type, field, default, allowed
 * values, range, which modes require it, doc line); that table drives defaults,
 * parsing, `--set` overrides, validation, the resolved-config writer and the
 * reference page docs/config.md. Errors name the file and line of the key
 * ("job.yaml:7: unknown key 'train.lrr'; did you mean 'train.lr'?") or the --set
 * option that carried the bad value. */
#ifndef PC_CONFIG_H
#define PC_CONFIG_H

#include <stdint.h>
#include <stdio.h>

#include "util.h"

#define PC_CONFIG_MAX_LAYERS 1024
#define PC_CONFIG_MAX_GLOBS 16
#define PC_CONFIG_MAX_KEYS 64   /* capacity of the per-key origin table below */
#define PC_CONFIG_WHERE_LEN 256 /* "job.yaml:12" or "--set train.lr=3e-4" */

typedef struct pc_config {
    char source[1024]; /* path of the YAML file */
    struct {
        char dir[1024];
        char mode[16]; /* compress|prune|pretrain|eval|importance */
        int64_t seed;
        double collective_timeout; /* seconds, 0 = no watchdog */
    } run;
    struct {
        char base[1024];   /* HF model directory */
        char config[1024]; /* config.json of the model to pretrain from scratch */
        char dtype[8];     /* bf16|f32 */
    } model;
    struct {
        int d_model;                     /* 0: unset */
        int d_ff[PC_CONFIG_MAX_LAYERS];  /* (n_d_ff,) */
        int n_d_ff;                      /* 0 unset, 1 uniform, else one per layer */
        char importance[16];             /* activation|magnitude|random */
        int calibration_sequences;
        double split_mb;                 /* plan: split threshold in MB, 0 = automatic */
        char store_grads[8];             /* auto|true|false: keep block gradients between the two passes */
        int shard_grads;                 /* G reduced to its owners after every backward, never held whole */
    } compress;
    struct {
        int enabled; /* 1 when the distill section (or a --set distill.*) is present */
        double alpha, temperature;
    } distill;
    struct {
        char train[PC_CONFIG_MAX_GLOBS][1024];
        int n_train;
        char valid[PC_CONFIG_MAX_GLOBS][1024];
        int n_valid;
        int seq_len;
    } data;
    struct {
        int64_t steps;
        int global_batch, micro_batch;
        double lr, min_lr_ratio;
        int warmup_steps;
        double weight_decay, grad_clip, beta1, beta2;
        char on_nonfinite[8]; /* stop|skip */
        int activation_checkpointing; /* keep layer inputs only; recompute the rest in backward */
        int logits_chunk;             /* tokens per pass of the output head and loss (0: all at once) */
    } train;
    struct {
        int every_steps, keep;
        int at_end; /* write one after the last step */
    } checkpoint;
    struct {
        int every_steps, batches; /* every_steps 0: only at the end */
        int stream_layers;        /* run.mode eval: model.base one decoder layer at a time */
    } eval;
    struct {
        char device[16]; /* auto|cpu|cuda|cpu-guarded */
        char comm[8];    /* auto|mpi|nccl */
        int threads;     /* 0: automatic */
        char matmul[8];  /* fp32|tf32|bf16: gemm inputs */
        char attention[8]; /* auto|fp32|bf16|cudnn: attention products (cuda); config_attention_bf16, _cudnn */
        int overlap_comm;  /* start each stage's G reduce during the backward */
        double memory_gib; /* per rank, 0: the device's free memory at start-up */
        double peak_tflops; /* per rank, for the mfu metric; 0: by the GPU's name (daemon/mfu.c) */
    } backend;
    struct {
        char dir[1024]; /* "" means RUN/final */
        char dtype[8];  /* bf16|f32 */
    } output;
    /* Where each key got its value, indexed like the key table: "" (default),
     * "job.yaml:12" or "--set train.lr=3e-4". Used to point error messages at the key. */
    char where[PC_CONFIG_MAX_KEYS][PC_CONFIG_WHERE_LEN];
} pc_config;

/* Defaults, then the YAML file at path, then each "--set a.b=value" (value read as a
 * YAML scalar or flow list "[1,2]"), then validation. c is fully overwritten. */
int config_load(pc_config *c, const char *path, const char *const *sets, int n_sets, pc_err *e);
/* Checks that need the base model: compress.d_model <= base_d_model, the d_ff list
 * length equals n_layers, each d_ff <= base_d_ff[layer] (base_d_ff: (n_layers,)). */
int config_check_model(const pc_config *c, int base_d_model, const int *base_d_ff, int n_layers, pc_err *e);
/* Whether run.mode trains a model (pretrain, prune, compress; not eval, importance). */
int config_mode_trains(const char *mode);
/* train.global_batch must be divisible by world_size * train.micro_batch (the modes that
 * train; eval and importance take any rank count). */
int config_check_ranks(const pc_config *c, int world_size, pc_err *e);
/* Write every key (after defaults and overrides) as YAML, atomically; config_load
 * reads it back to the same values. */
int config_write_resolved(const pc_config *c, const char *path, pc_err *e);
/* Same text into a malloc'd NUL-terminated buffer (caller frees). */
char *config_resolved_text(const pc_config *c);
/* The keys whose values differ between two resolved texts (config_resolved_text), as
 * "section.key: old -> new" separated by "; " into out (cap bytes, cut with "..." where
 * longer); a key on one side only shows "(none)" on the other. Returns how many differ. */
int config_resolved_diff(const char *old_text, const char *new_text, char *out, size_t cap);
/* Markdown reference of every key (section, key, type, default, doc). */
void config_print_doc(FILE *f);
/* Per-layer d_ff: the uniform value, or the list entry for that layer; 0 when unset. */
int config_d_ff(const pc_config *c, int layer);
/* 1 when attention runs on bf16 tensor cores (where the device and head_dim allow):
   backend.attention bf16 or cudnn, or auto with backend.matmul bf16. */
int config_attention_bf16(const pc_config *c);
/* 1 when that attention is cuDNN's (backend.attention cudnn). */
int config_attention_cudnn(const pc_config *c);
/* 1 when it may be cuDNN's: backend.attention cudnn, or auto with backend.matmul bf16,
   where a run on CUDA takes cuDNN's if it agrees and is faster (daemon/attn_auto.h). */
int config_attention_may_cudnn(const pc_config *c);
/* compress.store_grads: false, true, auto. */
enum { PC_GRADS_RECOMPUTE = 0, PC_GRADS_KEEP = 1, PC_GRADS_AUTO = 2 };
int config_store_grads(const pc_config *c);

#endif
