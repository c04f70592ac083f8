/* config_keys: the one table of job-config keys. Parsing, defaults, validation, the
 * resolved-config writer and docs/config.md are all driven from it; adding a key
 * means adding a field to pc_config (config.h) and one row here.
 *
 * Included by config.c only. */
#ifndef PC_CONFIG_KEYS_H
#define PC_CONFIG_KEYS_H

#include <stddef.h>

#include "config.h"

typedef enum {
    PC_CT_INT,         /* int */
    PC_CT_INT64,       /* int64_t */
    PC_CT_DOUBLE,      /* double */
    PC_CT_STRING,      /* char[size] */
    PC_CT_ENUM,        /* char[size], one of .choices */
    PC_CT_BOOL,        /* int 0/1 */
    PC_CT_STRING_LIST, /* char[cap][elem_size] + int count */
    PC_CT_INT_LIST,    /* int or per-layer list: int[cap] + int count (1 = uniform) */
} pc_config_type;

/* Range flags, and what a string names. */
enum {
    PC_K_MIN = 1 << 0,      /* value >= min (> min with PC_K_MIN_EXCL) */
    PC_K_MAX = 1 << 1,      /* value <= max (< max with PC_K_MAX_EXCL) */
    PC_K_MIN_EXCL = 1 << 2,
    PC_K_MAX_EXCL = 1 << 3,
    PC_K_PATH = 1 << 4,     /* a path or glob (string, string list): used as given, so no leading '~' */
};

/* Mode bits for .required. */
enum {
    PC_M_COMPRESS = 1 << 0,
    PC_M_PRUNE = 1 << 1,
    PC_M_PRETRAIN = 1 << 2,
    PC_M_EVAL = 1 << 3,
    PC_M_IMPORTANCE = 1 << 4,
};
#define PC_CONFIG_MODES "compress|prune|pretrain|eval|importance"

typedef struct pc_config_key {
    const char *path;     /* "section.key" */
    pc_config_type type;
    size_t offset;        /* of the field in pc_config */
    size_t size;          /* bytes of the field (string capacity, list storage) */
    size_t elem_size;     /* lists: bytes per element */
    size_t count_offset;  /* lists: offset of the int element count */
    const char *def;      /* default, written as it would be in YAML */
    const char *choices;  /* enum: "a|b|c" */
    double min, max;
    int flags;            /* PC_K_* */
    int required;         /* PC_M_* bits: modes that need the key set */
    const char *alt;      /* a key that satisfies the requirement instead */
    const char *doc;
} pc_config_key;

#define PC_MEMBER_SIZE(m) sizeof(((pc_config *)0)->m)
#define PC_AT(m) .offset = offsetof(pc_config, m), .size = PC_MEMBER_SIZE(m)
#define PC_LIST_AT(m, n) PC_AT(m), .elem_size = PC_MEMBER_SIZE(m[0]), .count_offset = offsetof(pc_config, n)

static const pc_config_key pc_config_keys[] = {
    /* run */
    {.path = "run.dir", .type = PC_CT_STRING, PC_AT(run.dir), .def = "run", .flags = PC_K_PATH,
     .doc = "Run directory: resolved config, logs, metrics, checkpoints and the final model live under it "
            "(not empty)."},
    {.path = "run.mode", .type = PC_CT_ENUM, PC_AT(run.mode), .def = "compress", .choices = PC_CONFIG_MODES,
     .doc = "What to do: compress (Projected Compression), prune (hard pruning then training), "
            "pretrain (from scratch), eval (held-out loss), importance (score channels only)."},
    {.path = "run.seed", .type = PC_CT_INT64, PC_AT(run.seed), .def = "1234", .min = 0, .flags = PC_K_MIN,
     .doc = "Seed of every random choice (initialisation, data order, random importance)."},
    {.path = "run.collective_timeout", .type = PC_CT_DOUBLE, PC_AT(run.collective_timeout), .def = "600", .min = 0,
     .flags = PC_K_MIN,
     .doc = "Watchdog: a collective waiting longer than this many seconds (a peer rank died or hung) ends "
            "the job with an error naming the operation and the ranks that did not answer a roll call (0 = "
            "wait forever)."},
    /* model */
    {.path = "model.base", .type = PC_CT_STRING, PC_AT(model.base), .def = "", .flags = PC_K_PATH,
     .required = PC_M_COMPRESS | PC_M_PRUNE | PC_M_EVAL | PC_M_IMPORTANCE,
     .doc = "Hugging Face model directory (`config.json` and `*.safetensors`) to compress, prune or evaluate."},
    {.path = "model.config", .type = PC_CT_STRING, PC_AT(model.config), .def = "", .flags = PC_K_PATH,
     .required = PC_M_PRETRAIN, .alt = "model.base", .doc = "`config.json` describing the model to pretrain from scratch (pretrain mode)."},
    {.path = "model.dtype", .type = PC_CT_ENUM, PC_AT(model.dtype), .def = "f32", .choices = "bf16|f32",
     .doc = "Storage of the frozen base slices during compress: bf16 halves their memory and is exact for a "
            "bf16 checkpoint (rounded to nearest even otherwise); fp32 and tf32 products use the widened "
            "slice, bf16 products (backend.matmul: bf16) the bf16 slice as stored. Trained tensors and optimizer state are always fp32. With distill, "
            "bf16 also keeps the teacher's matrices in bf16 only (2 bytes per base parameter less per rank: "
            "16 GB for an 8B base) and its products take bf16 operands with fp32 accumulation, as a bf16 "
            "model runs; f32 keeps an fp32 teacher."},
    /* compress */
    {.path = "compress.d_model", .type = PC_CT_INT, PC_AT(compress.d_model), .def = "0", .min = 0,
     .flags = PC_K_MIN, .required = PC_M_COMPRESS | PC_M_PRUNE,
     .doc = "Compressed hidden size d_model' (<= the base hidden_size; 0 = unset: run.mode importance then keeps "
            "every dimension, as compress.d_ff [] keeps the base widths)."},
    {.path = "compress.d_ff", .type = PC_CT_INT_LIST, PC_LIST_AT(compress.d_ff, compress.n_d_ff), .def = "[]",
     .min = 1, .flags = PC_K_MIN,
     .doc = "Compressed MLP width: one int for every layer, or a list with one entry per layer "
            "([] = keep the base widths; no value is refused, as for compress.d_model)."},
    {.path = "compress.importance", .type = PC_CT_ENUM, PC_AT(compress.importance), .def = "activation",
     .choices = "activation|magnitude|random", .doc = "How channels are ranked to initialise the projections."},
    {.path = "compress.calibration_sequences", .type = PC_CT_INT, PC_AT(compress.calibration_sequences),
     .def = "64", .min = 1, .max = 65536, .flags = PC_K_MIN | PC_K_MAX,
     .doc = "Training sequences run through the base model to measure activation importance (a rank holds "
            "the hidden states of its share: sequences / ranks x seq_len x hidden_size floats)."},
    {.path = "compress.store_grads", .type = PC_CT_ENUM, PC_AT(compress.store_grads), .def = "auto",
     .choices = "auto|true|false",
     .doc = "Keep block projection gradients between the norm pass and the update (4 bytes per trainable "
            "parameter kept) instead of recomputing them in the update (2/3 of the projection FLOPs again): "
            "true keeps every block's, false none, auto as many as fit in the device's memory beyond the "
            "plan, with a sixteenth of it left free, the blocks with the most FLOPs per byte first (none when "
            "the size is unknown: a cpu backend without backend.memory_gib). The results are the same "
            "either way; plan.txt's grads column shows what each rank keeps."},
    {.path = "compress.shard_grads", .type = PC_CT_BOOL, PC_AT(compress.shard_grads), .def = "false",
     .doc = "Shard G, the compressed model's gradient: each backward sends every layer's G to the ranks that "
            "own its blocks as soon as that layer is done, so a rank holds two layers' G and its own blocks' "
            "sums instead of all of G (memory: 4 bytes per compressed parameter less; comm: G is reduced "
            "once per micro-batch instead of once per step). Compress mode only."},
    {.path = "compress.split_mb", .type = PC_CT_DOUBLE, PC_AT(compress.split_mb), .def = "0", .min = 0, .max = 1e9,
     .flags = PC_K_MIN | PC_K_MAX,
     .doc = "Sharding: cut a matrix into row/column blocks above this size in MB (0 = automatic: "
            "total base size / ranks / 2)."},
    /* distill */
    {.path = "distill.enabled", .type = PC_CT_BOOL, PC_AT(distill.enabled), .def = "false",
     .doc = "Distil from the base model, held whole on every rank as a forward-only teacher (in bf16 with "
            "model.dtype bf16); true as soon as the distill section (or a `--set distill.*`) is given."},
    {.path = "distill.alpha", .type = PC_CT_DOUBLE, PC_AT(distill.alpha), .def = "0.5", .min = 0, .max = 1,
     .flags = PC_K_MIN | PC_K_MAX, .doc = "Weight of the distillation loss; 1 - alpha weighs the token loss."},
    {.path = "distill.temperature", .type = PC_CT_DOUBLE, PC_AT(distill.temperature), .def = "1.0", .min = 0,
     .flags = PC_K_MIN | PC_K_MIN_EXCL, .doc = "Softmax temperature of teacher and student logits."},
    /* data */
    {.path = "data.train", .type = PC_CT_STRING_LIST, PC_LIST_AT(data.train, data.n_train), .def = "[]",
     .flags = PC_K_PATH, .required = PC_M_COMPRESS | PC_M_PRUNE | PC_M_PRETRAIN | PC_M_IMPORTANCE,
     .doc = "Globs of HDF5 token shards for training (a string or a list)."},
    {.path = "data.valid", .type = PC_CT_STRING_LIST, PC_LIST_AT(data.valid, data.n_valid), .def = "[]",
     .flags = PC_K_PATH, .required = PC_M_EVAL,
     .doc = "Globs of held-out HDF5 token shards for evaluation ([] = none; an empty glob is refused)."},
    {.path = "data.seq_len", .type = PC_CT_INT, PC_AT(data.seq_len), .def = "256", .min = 1, .max = 1048576,
     .flags = PC_K_MIN | PC_K_MAX, .doc = "Tokens per training sequence."},
    /* train */
    {.path = "train.steps", .type = PC_CT_INT64, PC_AT(train.steps), .def = "100", .min = 0, .flags = PC_K_MIN,
     .doc = "Optimizer steps (0 fuses the step-0 model, which equals hard pruning)."},
    {.path = "train.global_batch", .type = PC_CT_INT, PC_AT(train.global_batch), .def = "8", .min = 1,
     .flags = PC_K_MIN,
     .doc = "Sequences per optimizer step over all ranks: a multiple of train.micro_batch (and of ranks x "
            "micro_batch) in the modes that train; eval and importance do not read it."},
    {.path = "train.micro_batch", .type = PC_CT_INT, PC_AT(train.micro_batch), .def = "1", .min = 1,
     .flags = PC_K_MIN, .doc = "Sequences per forward/backward on one rank (gradient accumulation fills the rest)."},
    {.path = "train.lr", .type = PC_CT_DOUBLE, PC_AT(train.lr), .def = "3e-4", .min = 0,
     .flags = PC_K_MIN | PC_K_MIN_EXCL, .doc = "Peak learning rate, reached after warmup."},
    {.path = "train.min_lr_ratio", .type = PC_CT_DOUBLE, PC_AT(train.min_lr_ratio), .def = "0.1", .min = 0,
     .max = 1, .flags = PC_K_MIN | PC_K_MAX, .doc = "Final learning rate of the cosine decay, as a fraction of lr."},
    {.path = "train.warmup_steps", .type = PC_CT_INT, PC_AT(train.warmup_steps), .def = "10", .min = 0,
     .flags = PC_K_MIN, .doc = "Linear warmup steps."},
    {.path = "train.weight_decay", .type = PC_CT_DOUBLE, PC_AT(train.weight_decay), .def = "0.1", .min = 0,
     .flags = PC_K_MIN, .doc = "AdamW decoupled weight decay."},
    {.path = "train.grad_clip", .type = PC_CT_DOUBLE, PC_AT(train.grad_clip), .def = "1.0", .min = 0,
     .flags = PC_K_MIN, .doc = "Clip the global gradient norm to this value (0 = no clipping)."},
    {.path = "train.beta1", .type = PC_CT_DOUBLE, PC_AT(train.beta1), .def = "0.9", .min = 0, .max = 1,
     .flags = PC_K_MIN | PC_K_MAX | PC_K_MAX_EXCL, .doc = "AdamW first-moment decay."},
    {.path = "train.beta2", .type = PC_CT_DOUBLE, PC_AT(train.beta2), .def = "0.95", .min = 0, .max = 1,
     .flags = PC_K_MIN | PC_K_MAX | PC_K_MAX_EXCL, .doc = "AdamW second-moment decay."},
    {.path = "train.on_nonfinite", .type = PC_CT_ENUM, PC_AT(train.on_nonfinite), .def = "stop",
     .choices = "stop|skip",
     .doc = "A NaN/Inf loss or gradient: stop with an error (the last checkpoint stays usable) or skip that "
            "step's update (stops after 10 in a row)."},
    {.path = "train.activation_checkpointing", .type = PC_CT_BOOL, PC_AT(train.activation_checkpointing),
     .def = "false",
     .doc = "Keep only each decoder layer's input during the forward pass and recompute the layer in the "
            "backward pass: activation memory falls from every layer's activations to the residual stream "
            "plus one layer's, for about one more forward pass of the layers; results are unchanged."},
    {.path = "train.logits_chunk", .type = PC_CT_INT, PC_AT(train.logits_chunk), .def = "0", .min = 0,
     .flags = PC_K_MIN,
     .doc = "Tokens of a micro-batch that the output head and the loss take at a time (0: all B x T at once). "
            "With a chunk the logits are never held whole, only (chunk, vocab) of them: for a 128256 vocabulary "
            "and micro-batch 8 x 2048 they take 7.8 GiB whole and 1.0 GiB in chunks of 2048. Nothing is "
            "recomputed: each chunk's loss gradient goes through the head during the forward pass, while its "
            "logits exist; only the head's products get smaller. Results agree to fp32 rounding. Not with "
            "distill (its loss reads all of the teacher's logits)."},
    /* checkpoint */
    {.path = "checkpoint.every_steps", .type = PC_CT_INT, PC_AT(checkpoint.every_steps), .def = "100", .min = 0,
     .flags = PC_K_MIN, .doc = "Write a checkpoint every this many steps, and always on a stop signal and (with at_end) after the last step (0: only those)."},
    {.path = "checkpoint.keep", .type = PC_CT_INT, PC_AT(checkpoint.keep), .def = "2", .min = 1, .flags = PC_K_MIN,
     .doc = "Complete checkpoints kept; older ones are deleted."},
    {.path = "checkpoint.at_end", .type = PC_CT_BOOL, PC_AT(checkpoint.at_end), .def = "true",
     .doc = "Write a checkpoint after the last step (false: none then, even where every_steps falls on it; the "
            "fused model in RUN/final is the result, and a rerun of the command resumes from the newest "
            "checkpoint before it). For runs that need no resume, such as benchmarks: a compress checkpoint "
            "holds 12 bytes per trainable element, 39 GB at the Llama-3.2-1B shape."},
    /* eval */
    {.path = "eval.every_steps", .type = PC_CT_INT, PC_AT(eval.every_steps), .def = "0", .min = 0,
     .flags = PC_K_MIN, .doc = "Evaluate on data.valid every this many steps (0 = only before the first step and at the end)."},
    {.path = "eval.batches", .type = PC_CT_INT, PC_AT(eval.batches), .def = "8", .min = 1, .flags = PC_K_MIN,
     .doc = "Held-out windows per evaluation, in units of train.micro_batch windows (split over the ranks; "
            "fewer when data.valid holds fewer)."},
    {.path = "eval.stream_layers", .type = PC_CT_BOOL, PC_AT(eval.stream_layers), .def = "false",
     .doc = "run.mode eval only: run model.base one decoder layer at a time over the rank's windows, reading each "
            "layer's weights as it is needed, so that a model larger than the device can be evaluated (the "
            "device holds one layer and the head; the host the windows' hidden states, windows / ranks x "
            "seq_len x d_model floats). The same val_loss, bit for bit."},
    /* backend */
    {.path = "backend.device", .type = PC_CT_ENUM, PC_AT(backend.device), .def = "auto",
     .choices = "auto|cpu|cuda|cpu-guarded",
     .doc = "Where tensors live: cuda when built with CUDA and a GPU is visible (auto), else cpu. Each rank takes "
            "GPU (local rank mod GPUs per node). cpu-guarded is the CPU backend with buffers host code cannot touch, "
            "a check of the device code paths on machines without a GPU."},
    {.path = "backend.comm", .type = PC_CT_ENUM, PC_AT(backend.comm), .def = "auto", .choices = "auto|mpi|nccl",
     .doc = "Collectives on device buffers: nccl with the cuda device (auto), else mpi (staged through host memory "
            "when the device is not the CPU). Small host values always go over MPI."},
    {.path = "backend.matmul", .type = PC_CT_ENUM, PC_AT(backend.matmul), .def = "tf32", .choices = "fp32|tf32|bf16",
     .doc = "Inputs of the matrix products (accumulation is fp32 in every mode): fp32 as they are; "
            "tf32 on TF32 tensor cores (cuda; plain fp32 on cpu); bf16 rounded to bf16 (cuda: bf16 tensor cores, "
            "twice TF32's rate; cpu: rounded copies, for checking the numerics). Results are fp32, but with bf16 "
            "those that only one elementwise op reads are rounded to bf16, as bf16 mixed precision keeps them: the "
            "MLP's gate and up outputs, down_proj's input gradient and (with bf16 attention) o_proj's. With bf16 "
            "the trained model keeps a "
            "bf16 copy of its weights (2 bytes per parameter) that the products read; compress gathers W_C in bf16 "
            "(half the bytes) and keeps the compressed matrices in bf16 only (fp32 just for the norm gains: 4 bytes "
            "per parameter less per rank), and the model evaluated and saved holds those bf16 "
            "values. run.mode eval holds the model's matrices in bf16 only as well (embedding rows included, "
            "rounded to nearest even when the checkpoint is not bf16). Attention: backend.attention."},
    {.path = "backend.attention", .type = PC_CT_ENUM, PC_AT(backend.attention), .def = "auto",
     .choices = "auto|fp32|bf16|cudnn",
     .doc = "Attention products: fp32, or bf16 inputs (q, k, v, dO and the probabilities) on tensor cores with fp32 "
            "accumulation and softmax (cuda, head_dim a multiple of 16 up to 128; other shapes and the cpu stay "
            "fp32); auto follows backend.matmul: bf16 with bf16 products, else fp32. cudnn: bf16 as well, by "
            "cuDNN's fused flash attention (cuDNN 9 loaded at run time; a rank without it stops with the reason) "
            "instead of projcompd's kernels; its backward adds dQ atomically, so two runs differ in the last bits "
            "where bf16 repeats bit for bit. auto with bf16 products on cuda chooses between the two at the start "
            "of a run: each rank times a micro-batch's attention forward and backward both ways on random inputs "
            "and compares the results; cuDNN's is taken when it loads and agrees (within 2e-2) on every rank and "
            "its mean time is under 0.95 of the kernels', and the log says which and why (the plan counts "
            "cuDNN's scratch). Set bf16 for runs that repeat bit for bit."},
    {.path = "backend.overlap_comm", .type = PC_CT_BOOL, PC_AT(backend.overlap_comm), .def = "true",
     .doc = "Compress on several ranks: overlap the W_C gather with the step's first forward pass (each layer's "
            "W_C moves while the previous layer computes) and the G reduce with its last backward pass (each "
            "layer's G is reduced to its owners while the earlier layers are differentiated); false runs both "
            "between the passes. The results are the same either way."},
    {.path = "backend.memory_gib", .type = PC_CT_DOUBLE, PC_AT(backend.memory_gib), .def = "0", .min = 0,
     .max = 1e9, .flags = PC_K_MIN | PC_K_MAX,
     .doc = "Memory each rank may use, GiB (0: the device's memory free at start-up, what the context and other "
            "processes on it leave; a cpu backend has none). Compress and "
            "prune check the plan against it before any weight is read, and compress.store_grads auto fills what "
            "the plan leaves of it."},
    {.path = "backend.peak_tflops", .type = PC_CT_DOUBLE, PC_AT(backend.peak_tflops), .def = "0", .min = 0,
     .flags = PC_K_MIN,
     .doc = "Each rank's device peak, TFLOP/s, that the mfu metric divides by (0: the dense bf16 tensor-core peak "
            "of a known NVIDIA GPU, by its name: H100, H200, H800, GH200, A100, A800, L40S, L40, L4, B200, GB200; "
            "none on a cpu backend or another GPU, and then no mfu). mfu is the model's own FLOPs a second (6 per "
            "parameter and token plus attention, the tflops metric without compress's projection work) over the "
            "ranks' summed peaks."},
    {.path = "backend.threads", .type = PC_CT_INT, PC_AT(backend.threads), .def = "0", .min = 0, .flags = PC_K_MIN,
     .doc = "CPU threads per rank for BLAS and the CPU ops (0 = the node's cores divided by its ranks, at most the CPUs the rank is bound to)."},
    /* output */
    {.path = "output.dir", .type = PC_CT_STRING, PC_AT(output.dir), .def = "", .flags = PC_K_PATH,
     .doc = "Where the final HF model is written (\"\" = RUN/final); not model.base's own directory, "
            "nor one holding another run's model (its projcompd.json names the run.dir that wrote it)."},
    {.path = "output.dtype", .type = PC_CT_ENUM, PC_AT(output.dtype), .def = "f32", .choices = "bf16|f32",
     .doc = "dtype of the tensors in the final model.safetensors."},
};

#define PC_CONFIG_N_KEYS ((int)(sizeof pc_config_keys / sizeof pc_config_keys[0]))

#endif
