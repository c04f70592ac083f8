/* attn_auto: backend.attention auto with bf16 products on CUDA picks, per run, between
 * projcompd's bf16 attention kernels and cuDNN's fused flash attention: each rank times
 * both on its GPU at the run's shape and compares their results; every rank then takes
 * cuDNN only if it loaded and agreed on every rank and is faster on average. */
#ifndef PC_ATTN_AUTO_H
#define PC_ATTN_AUTO_H

#include "run.h"

/* backend.attention auto with bf16 attention on r->be (CUDA) for the run's model shape:
 * the probe on every rank, the choice shared, logged, and set on r->be. Collective. */
int attn_auto_choose(run_ctx *r, const llama_config *lc, pc_err *e);

#endif
