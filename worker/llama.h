/* llama: a Llama (LlamaForCausalLM) model, forward and backward, written against the
 * backend op table so the same code runs on any device.
 *
 * Parameters live in ONE contiguous f32 buffer and their gradients in another of the
 * same size; a tensor table in Hugging Face naming order gives each tensor's name,
 * shape and offset:
 *   model.embed_tokens.weight [V,d]
 *   per layer i: model.layers.i.input_layernorm.weight [d],
 *     .self_attn.{q_proj [H*hd,d], k_proj [KV*hd,d], v_proj [KV*hd,d], o_proj [d,H*hd]}.weight,
 *     .post_attention_layernorm.weight [d],
 *     .mlp.{gate_proj [f_i,d], up_proj [f_i,d], down_proj [d,f_i]}.weight
 *   model.norm.weight [d]
 *   lm_head.weight [V,d]   (absent when tie_word_embeddings: the head uses the embedding)
 * Because q,k,v and gate,up are adjacent, each pair/triple is used as one fused matrix.
 * Activations are allocated for one micro-batch shape (B,T) at init. */
#ifndef PC_LLAMA_H
#define PC_LLAMA_H

#include "backend.h"
#include "hf_config.h"
#include "safetensors.h"
#include "util.h"

#define LLAMA_TENSORS_PER_LAYER 9
#define LLAMA_NAME_MAX 96

typedef struct llama_tensor {
    char name[LLAMA_NAME_MAX];
    int ndim;         /* 1 or 2 */
    int64_t shape[2];
    int64_t offset;   /* into grads and w16 (and params unless LLAMA_BF16_ONLY), in elements */
    int64_t numel;
    int64_t poff;     /* into params; -1 when the model holds no fp32 copy of it (LLAMA_BF16_ONLY) */
} llama_tensor;

typedef struct llama_acts llama_acts;

/* A stage of the model's tensors (llama_grad_stage) reached by llama_forward (on_weights)
 * or llama_backward (on_grads); see those fields. */
typedef void (*llama_stage_hook)(void *ctx, int stage);

typedef struct llama_model {
    llama_config cfg;
    backend *be;
    int B, T;                 /* micro-batch shape the activations are sized for */
    int n_tensors;
    llama_tensor *tensors;
    int64_t n_params;
    float *params;            /* (n_params_f32) device, tensor i at tensors[i].poff */
    int64_t n_params_f32;     /* n_params, or fewer with LLAMA_BF16_ONLY */
    float *grads;             /* (n_params) device, accumulated by llama_backward; NULL with grad_windows */
    /* grad_windows: two buffers of the largest stage (gwin (2, gwin_n)); stage s's gradients
     * are in window s % 2 at gstage_first[s]'s offset from its start, gstage_n[s] of them */
    float *gwin;
    int64_t gwin_n;
    int64_t *gstage_first, *gstage_n; /* (n_layers + 2) */
    uint16_t *w16;            /* (n_params) device, bf16 copy of params for the weight GEMMs, or NULL */
    float loss_scale;         /* backward differentiates loss_scale * mean loss (default 1) */
    float *logits;            /* (B,T,V) device, or (logits_chunk,V); valid after llama_forward until llama_backward */
    float *rope_cos, *rope_sin; /* (T, hd/2) device */
    int32_t *tokens, *targets;  /* (B,T) device */
    int have_targets;
    int64_t n_valid;          /* valid targets of the last forward */
    int dlogits_ready;        /* logits already hold dlogits (llama_distill): backward skips the xent */
    /* > 0 and below B*T: the head and the loss take this many tokens at a time, so that
     * only (logits_chunk, V) logits exist: llama_forward with targets then also
     * differentiates the head, chunk by chunk (dlogits -> the head's gradient and the final
     * norm's input gradient), which llama_backward continues from; loss_scale must be set
     * before the forward, and llama_distill is not available */
    int logits_chunk;
    int head_done;            /* llama_forward differentiated the head (logits_chunk) */
    int forward_only;         /* llama_init_forward_only: no grads, one layer's activations */
    int recompute;            /* llama_init_recompute: layer inputs kept, the rest recomputed */
    int acts_layer;           /* the layer whose activations the shared buffers hold (-1: none) */
    float loss;               /* mean loss of the last forward */
    /* NULL: none. on_grads(ctx, stage): llama_backward has made the gradients of that
     * stage final, stages in increasing order. on_weights(ctx, n_layers + 1 - stage):
     * llama_forward is about to read that stage's weights for the first time, the
     * embedding first (called with 0), then layer l (1 + l), the final norm and head. */
    llama_stage_hook on_grads, on_weights;
    void *on_grads_ctx, *on_weights_ctx;
    llama_acts *act;
} llama_model;

/* Allocate params, grads and activations for micro-batch (B,T); params and grads are
 * zeroed. Errors name the offending config field. */
int llama_init(llama_model *m, const llama_config *c, backend *be, int B, int T, pc_err *e);
/* A model for forward passes only (a distillation teacher): no gradient buffer and no
 * backward scratch, and every layer's activations in one set of buffers (each layer's
 * are dead once the next has run), so it holds params + one layer's activations +
 * logits. llama_backward on it aborts; llama_layer_acts sees the last layer only. */
int llama_init_forward_only(llama_model *m, const llama_config *c, backend *be, int B, int T, pc_err *e);
/* A trainable model with activation checkpointing: the forward keeps each layer's input
 * (the residual stream, (B,T,d) per layer) and one set of the other layer activations,
 * shared by every layer; llama_backward recomputes each layer's forward from its input
 * before differentiating it. Same results, bit for bit, as llama_init's model, for about
 * one more forward of the decoder layers; llama_layer_acts sees the last layer run. */
int llama_init_recompute(llama_model *m, const llama_config *c, backend *be, int B, int T, pc_err *e);
/* Options of llama_init_opts (zero: llama_init's model). */
enum { LLAMA_F32 = 0, LLAMA_BF16_WEIGHTS, LLAMA_BF16_ONLY };
typedef struct llama_opts {
    int forward_only; /* llama_init_forward_only's model (recompute and logits_chunk do not apply) */
    int recompute;    /* llama_init_recompute's activation checkpointing */
    /* LLAMA_BF16_WEIGHTS: the bf16 copy (llama_use_bf16_weights). LLAMA_BF16_ONLY: the bf16
     * copy, and fp32 values (params) only for the norm gains, for a model whose matrices
     * arrive rounded to bf16 (a compressed model in bf16, a bf16 distillation teacher): 4
     * bytes per matrix parameter less; the matrices' values are w16's (the embedding
     * lookups widen its rows), llama_load_safetensors rounds them into w16 (exact for a
     * bf16 checkpoint), llama_init_random aborts, and llama_save_safetensors widens w16. */
    int weights;
    /* > 0: the head and the loss take this many tokens at a time (see logits_chunk). */
    int logits_chunk;
    /* No whole gradient: llama_backward writes the gradients of stage s (llama_grad_stage)
     * into window s % 2 of two windows the size of the largest stage, so the model holds
     * two stages' gradients instead of n_params. Whoever sets it must take each stage's
     * gradients out in on_grads and zero its window (llama_zero_grad_stage) before stage
     * s + 2 begins; llama_zero_grad zeroes both. Needs an untied model. */
    int grad_windows;
} llama_opts;
int llama_init_opts(llama_model *m, const llama_config *c, backend *be, int B, int T, const llama_opts *o,
                    pc_err *e);
void llama_free(llama_model *m);
/* 1 when the model keeps each layer's q, k, v in bf16 only: the backend's attention_16 took
 * the head_dim when the model was made (backend.h); the rope then goes into the rounding
 * (rope_qkv_16) and attention reads the bf16 values (attention_fwd_16, attention_bwd_16). */
int llama_attention_16(const llama_model *m);
/* Give the model a bf16 copy of its parameters (w16, zeroed), which every weight product
 * then reads through gemm_w16 (MATMUL_BF16's arithmetic) instead of rounding params on
 * each product; embedding lookups and norm gains keep reading params. Whoever changes
 * params calls llama_refresh_w16 before the next forward. A trainable model also keeps
 * the activations read only by products (ln1, ln2, h, lnf) in bf16 only, written rounded
 * by rmsnorm_fwd_16 and swiglu_fwd_16 at half the memory, and the gate|up product's
 * output, which only SwiGLU reads, written in bf16 by gemm_16_to16 (their fp32 buffers, if
 * llama_init made them, are replaced), and gets two bf16 buffers for its backward,
 * (N, widest layer output) and (N, H*hd): each product's output gradient, and the
 * attention output, are rounded once for its two backward products (gemm_16), and the
 * head's dlogits are written in bf16 over the logits (xent_bwd_16, distill_16); every product of the
 * model then has MATMUL_BF16's arithmetic whatever the backend's matmul mode, with the
 * same results as rounding each product's inputs (with bf16 products either way SwiGLU
 * reads the gate|up output rounded to bf16, as bf16 mixed precision keeps a product's
 * output: rounded as it is read where the model holds it in fp32). */
void llama_use_bf16_weights(llama_model *m);
/* w16 = bf16(params), nearest even, for every tensor held in fp32; nothing without a copy. */
void llama_refresh_w16(llama_model *m);
/* Tensor i's fp32 values in params, or NULL when the model holds none (LLAMA_BF16_ONLY). */
float *llama_param(const llama_model *m, int i);

int llama_n_tensors(const llama_model *m);
/* Index of the tensor with HF name `name`, or -1. */
int llama_tensor_index(const llama_model *m, const char *name);
const llama_tensor *llama_tensor_at(const llama_model *m, int i);
const char *llama_tensor_name(const llama_model *m, int i);
int64_t llama_tensor_offset(const llama_model *m, int i);
int64_t llama_tensor_numel(const llama_model *m, int i);
int llama_tensor_ndim(const llama_model *m, int i);
int64_t llama_tensor_dim(const llama_model *m, int i, int axis);

/* Tensor i from tensor `name` of st: the same shape, or a narrower MLP matrix stored
 * zero-padded to cfg.d_ff (the padding must be zero); read as fp32 into buf (the
 * tensor's numel at least), checked finite, and uploaded (rounded into the bf16 copy
 * where the model holds no fp32 values). Errors name the file and the tensor. */
int llama_load_tensor(llama_model *m, int i, const st_model *st, const char *name, float *buf, pc_err *e);
/* Base tensor `name` of st, checked against the shape (ndim, shape) the config gives it:
 * the same, or, for an MLP matrix of a layer narrower than the config's d_ff, zero-padded
 * to d_ff rows (gate, up) or columns (down), as uneven widths are stored. Returns it
 * (*padded: 1 where padded), or NULL with an error naming the file, tensor and shapes. */
const st_tensor *llama_stored_tensor(const st_model *st, const char *name, int ndim, const int64_t *shape,
                                     int64_t d_ff, int *padded, pc_err *e);
/* Its values at that shape (the real part of a padded one, whose padding must be zero)
 * into dst, as fp32, checked finite. */
int llama_read_stored(const st_model *st, const char *name, int ndim, const int64_t *shape, int64_t d_ff, float *dst,
                      pc_err *e);
/* A tied config (tie_word_embeddings) whose file also holds an lm_head.weight: an error
 * unless it is the embedding, bytes for bytes (which of the two a tied model reads would
 * otherwise decide its outputs). */
int llama_check_tied_head(const st_model *st, const llama_config *c, pc_err *e);
/* Load every parameter from a safetensors file or HF model directory (any stored dtype).
 * Each tensor must exist with the exact shape and hold only finite values; errors name
 * the tensor, the expected and found shapes, and the file. */
int llama_load_safetensors(llama_model *m, const char *dir_or_file, pc_err *e);
/* Write dir/model.safetensors (sharded when large) in `dtype` plus dir/config.json. The
 * tensors stream from the backend a piece at a time: the host never holds the model. */
int llama_save_safetensors(const llama_model *m, const char *dir, st_dtype dtype, pc_err *e);

/* normal(0, std) for matrices, ones for norm gains; a pure function of (seed, tensor). */
void llama_init_random(llama_model *m, uint64_t seed, float std);

/* Forward pass over tokens (B,T). With targets (B,T; < 0 ignored) returns the mean
 * loss over valid targets (NAN when none is valid), otherwise 0 (logits only).
 * Logits (B,T,V) are in m->logits afterwards, except with logits_chunk, where the head
 * runs only with targets (and differentiates itself for the next llama_backward). */
float llama_forward(llama_model *m, const int32_t *tokens, const int32_t *targets);
/* The mean loss over valid targets (B,T) alone, for evaluation: llama_forward without any
 * gradient work (with logits_chunk, the head in chunks and no backward may follow). */
float llama_loss(llama_model *m, const int32_t *tokens, const int32_t *targets);
/* llama_loss from the last decoder layer's output x (B*T, d) (device): the final norm,
 * the head and the mean loss over valid targets (B,T) (host); the embedding and the
 * decoder layers are not used. */
float llama_loss_hidden(llama_model *m, const float *x, const int32_t *targets);
/* The decoder layers alone on hidden states x (B*T, d) -> y (B*T, d) (device buffers;
 * no embedding, final norm or head), keeping the activations llama_layer_acts reads. */
void llama_layers_forward(llama_model *m, const float *x, float *y);
/* Backward of loss_scale * (mean loss of the last forward); ADDS into m->grads and
 * overwrites m->logits with dlogits. Needs a forward with targets. */
void llama_backward(llama_model *m);
void llama_zero_grad(llama_model *m);
/* Tensor i's gradient: in grads, or with grad_windows in its stage's window (valid from
 * that stage's backward to the window's zeroing). */
float *llama_grad(const llama_model *m, int i);
/* Zero the window that holds stage s's gradients (grad_windows). */
void llama_zero_grad_stage(llama_model *m, int s);
/* The stage at which llama_backward finishes tensor i's gradient: 0 the head and the final
 * norm, 1 + (n_layers - 1 - l) layer l's tensors, n_layers + 1 the embedding (and a tied
 * head, which accumulates into it). */
int llama_grad_stage(const llama_model *m, int i);
/* Replace the loss of the last forward (with targets) by the distillation loss against
 * teacher logits (B,T,V): (1-alpha) CE + alpha T^2 KL(teacher || student) at temperature
 * T. Returns its mean over valid targets; the next llama_backward differentiates it. The
 * gradient is left in the logits: fp32, or in bf16 (distill_16) on a trainable model with
 * a bf16 weight copy. */
float llama_distill(llama_model *m, const float *teacher_logits, float alpha, float temperature);
void llama_set_loss_scale(llama_model *m, float s);

/* Training FLOPs (forward + backward) per token at sequence length T: 6 x (matmul
 * parameters, head included, embedding lookup excluded) + 12 x n_layers x H x hd x T
 * for attention (the PaLM convention, which counts the full T x T score matrix). */
double llama_flops_per_token(const llama_config *c, int T);

/* Activations of layer l from the last forward (device pointers, N = B*T rows): the two
 * pre-norm outputs ln1, ln2 (N,d) and the gate|up pre-activations gu (N, 2*f_l), as the
 * product wrote them (with bf16 products SwiGLU reads them rounded to bf16). Aborts on a
 * trainable model with a bf16 weight copy, which keeps ln1, ln2 and gu in bf16 only. */
void llama_layer_acts(const llama_model *m, int l, const float **ln1, const float **ln2, const float **gu);

#endif
