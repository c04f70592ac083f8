/* model_setup: pick the backend and build the Llama model a mode trains or evaluates:
 * the shape from model.config (pretrain) or model.base's config.json, weights from
 * model.base's safetensors or a deterministic random init. */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "device.h"
#include "run.h"

static int threads_per_rank(const run_ctx *r) {
    if (r->cfg.backend.threads > 0) return r->cfg.backend.threads;
    const char *local = getenv("OMPI_COMM_WORLD_LOCAL_SIZE");
    if (!local) local = getenv("SLURM_NTASKS_PER_NODE");
    int per_node = local ? atoi(local) : 1;
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    int t = (int)(cores / (per_node > 0 ? per_node : 1));
    return t > 0 ? t : 1;
}

int run_backend(run_ctx *r, pc_err *e) {
    const char *dev = r->cfg.backend.device;
    int gpus = pc_cuda_device_count();
    if (!strcmp(dev, "cuda"))
        return pc_errorf(e, "%s: backend.device is 'cuda' but this build has no CUDA backend yet (%d GPU(s) seen); "
                            "use backend.device: cpu",
                         r->cfg.source, gpus);
    if (gpus > 0)
        LOGW(&r->log, "%d GPU(s) seen, but training runs on the CPU backend: projcompd cannot select the CUDA "
                      "backend yet",
             gpus);
    r->be = backend_cpu_create(threads_per_rank(r));
    LOGI(&r->log, "backend %s, %d thread(s)", r->be->ops->name, r->be->threads);
    return 0;
}

int run_model_config(const run_ctx *r, llama_config *lc, pc_err *e) {
    const pc_config *c = &r->cfg;
    if (c->model.base[0]) return hf_config_load(c->model.base, lc, e);
    if (c->model.config[0]) return hf_config_load_file(c->model.config, lc, e);
    return pc_errorf(e, "%s: set model.base (an HF model directory) or model.config (a config.json)", c->source);
}

int run_model(run_ctx *r, llama_model *m, int B, pc_err *e) {
    const pc_config *c = &r->cfg;
    llama_config lc;
    if (run_model_config(r, &lc, e) != 0) return -1;
    if (hf_config_validate(&lc, c->model.base[0] ? c->model.base : c->model.config, e) != 0) return -1;
    if (!r->be && run_backend(r, e) != 0) return -1;
    if (llama_init(m, &lc, r->be, B, c->data.seq_len, e) != 0) return -1;
    if (c->model.base[0]) {
        if (llama_load_safetensors(m, c->model.base, e) != 0) return -1;
        LOGI(&r->log, "loaded %s (%lld parameters)", c->model.base, (long long)hf_config_n_params(&lc));
    } else {
        llama_init_random(m, (uint64_t)c->run.seed, 0.02f);
        LOGI(&r->log, "random init from %s (%lld parameters, seed %lld)", c->model.config,
             (long long)hf_config_n_params(&lc), (long long)c->run.seed);
    }
    return 0;
}
