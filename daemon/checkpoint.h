/* checkpoint: save and resume the complete training state of a run.
 *
 * RUN/checkpoints/step-NNNNNNN/ holds one file per block of trained state (parameters
 * and AdamW moments, keyed by tensor name, not by rank) plus a manifest with checksums;
 * it is written under a temporary name, fsync'd and renamed, and RUN/checkpoints/latest
 * is updated last. A run started with the same command resumes from the newest
 * complete checkpoint that passes its checksums. */
#ifndef PC_CHECKPOINT_H
#define PC_CHECKPOINT_H

#include "trainer.h"

/* Resume from the newest valid checkpoint if any: restores the trained state and sets
 * *start_step to the number of completed steps (0 when starting fresh). */
int ckpt_resume(run_ctx *r, trainer *t, int64_t *start_step, pc_err *e);
/* Write the checkpoint of `step` completed steps (collective: every rank calls it). */
int ckpt_save(run_ctx *r, trainer *t, int64_t step, pc_err *e);
/* compress/prune set-up: when a valid checkpoint exists, load the kept indices stored in
 * it into t->idx (*loaded = 1) instead of scoring importance again; d_ff_c holds the
 * compressed d_ff of every layer. Collective. */
int ckpt_resume_indices(run_ctx *r, trainer *t, const int *d_ff_c, int *loaded, pc_err *e);

#endif
