/* model_setup: pick the backend and build the Llama model a mode trains or evaluates:
 * the shape from model.config (pretrain) or model.base's config.json, weights from
 * model.base's safetensors or a deterministic random init. */
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "attn_auto.h"
#include "backend_cuda.h"
#include "ckpt.h"
#include "comm_nccl.h"
#include "comm_staged.h"
#include "device.h"
#include "mfu.h"
#include "run.h"

/* backend.threads, else the node's cores shared by its ranks, and no more than the CPUs
 * this rank may run on (a launcher that binds ranks, Slurm's --cpus-per-task, taskset):
 * threads beyond those would only take turns. */
static int threads_per_rank(const run_ctx *r) {
    if (r->cfg.backend.threads > 0) return r->cfg.backend.threads;
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    long t = cores / (r->local_size > 0 ? r->local_size : 1);
    cpu_set_t mask;
    if (sched_getaffinity(0, sizeof mask, &mask) == 0 && CPU_COUNT(&mask) < t) t = CPU_COUNT(&mask);
    return t > 0 ? (int)t : 1;
}

/* GPU i's identity for comparing across processes: its PCI bus id, else its index. */
static void gpu_id(int i, char *buf, int n) {
    if (pc_cuda_device_pci(i, buf, n) != 0) snprintf(buf, (size_t)n, "device %d", i);
}

/* backend.device: cuda. The rank's GPU is its place among the ranks of its node that see
 * the same GPUs (by PCI bus id), modulo their number: all the node's GPUs each, or the
 * few a launcher binds to each task (Slurm's --gpu-bind, --gpus-per-task), where the
 * node-wide local rank would put two ranks on one GPU. Ranks sharing a GPU are warned
 * about (NCCL takes one rank per GPU). Collective. */
static int cuda_backend(run_ctx *r, int gpus, int *device, pc_err *e) {
    if (gpus == 0)
        return pc_errorf(e, "%s: backend.device is 'cuda' but rank %d sees no GPU (a build without CUDA, no driver, "
                            "or CUDA_VISIBLE_DEVICES hides them)",
                         r->cfg.source, r->rank);
    ckpt_hash h; /* of the visible GPUs' ids, in order, and of the node's name: keys of a fixed width */
    char id[64], key[COMM_NODE_NAME_MAX + 120];
    ckpt_hash_init(&h, 0);
    for (int i = 0; i < gpus; i++) {
        gpu_id(i, id, sizeof id);
        ckpt_hash_update(&h, id, strlen(id) + 1);
    }
    uint64_t set = ckpt_hash_final(&h), node = ckpt_xxh64(r->node, strlen(r->node), 0);
    int place, peers, at, sharing;
    snprintf(key, sizeof key, "%016llx|%016llx|%s", (unsigned long long)set, (unsigned long long)node, r->node);
    if (comm_key_ranks(r->comm, key, &place, &peers, e) != 0) return -1;
    *device = place % gpus;
    gpu_id(*device, id, sizeof id);
    snprintf(key, sizeof key, "%016llx|%s|%s", (unsigned long long)node, id, r->node);
    if (comm_key_ranks(r->comm, key, &at, &sharing, e) != 0) return -1;
    if (sharing > 1)
        LOGW(&r->log, "GPU %d (%s) of node %s is shared by %d ranks: start one rank per GPU (%d ranks here see these "
                      "%d GPU(s))",
             *device, id, r->node, sharing, peers, gpus);
    char err[256];
    r->be = backend_cuda_create(*device, err, sizeof err);
    if (!r->be) return pc_errorf(e, "rank %d: %s", r->rank, err);
    return 0;
}

/* r->dcomm: collectives on the backend's buffers. */
static int device_comm(run_ctx *r, int cuda, int device, pc_err *e) {
    const char *want = r->cfg.backend.comm;
    if (!strcmp(want, "nccl") && !cuda)
        return pc_errorf(e, "%s: backend.comm is 'nccl' but backend.device is not cuda", r->cfg.source);
    if (r->be->host_memory) {
        r->dcomm = r->comm;
    } else if (cuda && strcmp(want, "mpi") != 0) {
        r->dcomm = comm_nccl_create(r->comm, device, e);
        if (r->dcomm) r->dcomm->timeout_s = r->cfg.run.collective_timeout;
    } else {
        r->dcomm = comm_staged_create(r->comm, r->be, e);
    }
    if (!r->dcomm) return -1;
    if (r->dcomm != r->comm) LOGI(&r->log, "device collectives over %s", r->dcomm->ops->name);
    return 0;
}

int run_backend(run_ctx *r, pc_err *e) {
    const char *dev = r->cfg.backend.device;
    int gpus = pc_cuda_device_count(), device = -1;
    int cuda = !strcmp(dev, "cuda") || (!strcmp(dev, "auto") && gpus > 0);
    int32_t mine[2] = {cuda, !cuda}, any[2]; /* auto: a rank that sees no GPU would train on its CPU, out of step */
    if (comm_all_reduce(r->comm, mine, any, 2, COMM_I32, COMM_MAX, e) != 0) return -1;
    if (any[0] && any[1]) { /* some ranks on the GPU, some not */
        const char *vis = getenv("CUDA_VISIBLE_DEVICES");
        if (cuda)
            return pc_errorf(e, "rank %d: backend.device auto: another rank sees no GPU and would train on its CPU "
                                "(see its message)",
                             r->rank);
        return pc_errorf(e, "rank %d: backend.device auto: this rank sees no GPU (CUDA_VISIBLE_DEVICES %s%s%s) while "
                            "other ranks train on theirs: give every rank a GPU, or set backend.device: cpu",
                         r->rank, vis ? "'" : "unset", vis ? vis : "", vis ? "'" : "");
    }
    if (cuda) {
        if (cuda_backend(r, gpus, &device, e) != 0) return -1;
    } else if (!strcmp(dev, "cpu-guarded")) {
        r->be = backend_guard_create(threads_per_rank(r));
    } else {
        r->be = backend_cpu_create(threads_per_rank(r));
    }
    const char *mm = r->cfg.backend.matmul;
    r->be->ops->set_matmul(r->be, !strcmp(mm, "bf16") ? MATMUL_BF16 : !strcmp(mm, "tf32") ? MATMUL_TF32 : MATMUL_FP32);
    if (cuda && config_attention_bf16(&r->cfg)) backend_cuda_set_attention(r->be, 1);
    if (cuda && config_attention_cudnn(&r->cfg)) {
        char why[512];
        if (backend_cuda_use_cudnn(r->be, why, sizeof why) != 0)
            return pc_errorf(e, "%s: backend.attention is 'cudnn' but rank %d cannot run cuDNN's attention: %s",
                             r->cfg.source, r->rank, why);
    }
    if (cuda && config_attention_may_cudnn(&r->cfg) && !config_attention_cudnn(&r->cfg)) { /* auto */
        llama_config lc;
        if (run_model_config(r, &lc, e) != 0) return -1;
        if (r->be->ops->attention_16(r->be, lc.head_dim) && attn_auto_choose(r, &lc, e) != 0) return -1;
    }
    if (cuda) {
        char name[128] = "?";
        pc_cuda_device_name(device, name, sizeof name);
        LOGI(&r->log, "backend cuda on GPU %d (%s), %s", device, name, r->be->info);
    } else {
        LOGI(&r->log, "backend %s, %s", r->be->ops->name, r->be->info);
    }
    if (mfu_setup(r, cuda, device, e) != 0) return -1;
    return device_comm(r, cuda, device, e);
}

uint64_t run_comm_bytes(const run_ctx *r) {
    return r->comm->bytes + (r->dcomm && r->dcomm != r->comm ? r->dcomm->bytes : 0);
}

int run_model_config(const run_ctx *r, llama_config *lc, pc_err *e) {
    const pc_config *c = &r->cfg;
    if (c->model.base[0]) return hf_config_load(c->model.base, lc, e);
    if (c->model.config[0]) return hf_config_load_file(c->model.config, lc, e);
    return pc_errorf(e, "%s: set model.base (an HF model directory) or model.config (a config.json)", c->source);
}

int run_model_weights(const run_ctx *r, run_model_use use) {
    if (strcmp(r->cfg.backend.matmul, "bf16")) return LLAMA_F32;
    return use == RUN_TRAINED ? LLAMA_BF16_WEIGHTS : LLAMA_BF16_ONLY; /* trained weights keep fp32 values */
}

void run_warn_seq_len(run_ctx *r, const llama_config *lc) {
    static int warned; /* once a process: the teacher and the trained model share the config */
    if (r->rank == 0 && !warned && r->cfg.data.seq_len > lc->max_position_embeddings) {
        LOGW(&r->log, "data.seq_len %d is longer than the model's max_position_embeddings %d: it runs (RoPE has no "
                      "table to outgrow), but positions past %d are ones the model was not trained or meant for",
             r->cfg.data.seq_len, lc->max_position_embeddings, lc->max_position_embeddings);
        warned = 1;
    }
}

int run_llama_init(run_ctx *r, llama_model *m, const llama_config *lc, int B, run_model_use use, pc_err *e) {
    llama_opts o = {.forward_only = use == RUN_EVALUATED,
                    .recompute = r->cfg.train.activation_checkpointing,
                    .logits_chunk = r->cfg.train.logits_chunk,
                    .grad_windows = use == RUN_PROJECTED && r->cfg.compress.shard_grads,
                    .weights = run_model_weights(r, use)};
    if (llama_init_opts(m, lc, r->be, B, r->cfg.data.seq_len, &o, e) != 0) return -1;
    run_warn_seq_len(r, lc);
    if (llama_attention_16(m))
        LOGI(&r->log, "attention on bf16 tensor cores: each layer's q, k, v kept in bf16 only (rotated as rounded)");
    return 0;
}

int run_model(run_ctx *r, llama_model *m, int B, run_model_use use, pc_err *e) {
    const pc_config *c = &r->cfg;
    llama_config lc;
    if (run_model_config(r, &lc, e) != 0) return -1;
    if (hf_config_validate(&lc, c->model.base[0] ? c->model.base : c->model.config, e) != 0) return -1;
    if (!r->be && run_backend(r, e) != 0) return -1;
    if (run_llama_init(r, m, &lc, B, use, e) != 0) return -1;
    if (c->model.base[0]) {
        if (llama_load_safetensors(m, c->model.base, e) != 0) return -1;
        LOGI(&r->log, "loaded %s (%lld parameters)", c->model.base, (long long)hf_config_n_params(&lc));
    } else {
        llama_init_random(m, (uint64_t)c->run.seed, 0.02f);
        LOGI(&r->log, "random init from %s (%lld parameters, seed %lld)", c->model.config,
             (long long)hf_config_n_params(&lc), (long long)c->run.seed);
    }
    llama_refresh_w16(m);
    return 0;
}
