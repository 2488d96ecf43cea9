/* Checkpoints that are whole or absent.
 *
 * A checkpoint is RUN_DIR/checkpoints/step-NNNNNN/ holding
 *   diffusion_pytorch_model.safetensors, config.json   rank 0: the policy, loadable by diffusers
 *   (with LoRA instead: pytorch_lora_weights.safetensors and lora_adapters.safetensors, the adapters)
 *   optimizer.safetensors                              rank 0: the optimizer's state (AdamW moments or
 *                                                      Adafactor's factored moments) and step count
 *   scheduler_config.json                              rank 0: the noise schedule trained with
 *   rank-NNNNN.json                                    every rank: world size, rank, step, data position
 *   dpod_provenance.json                               rank 0: versions, spec, dataset hash, the step's
 *                                                      evaluation (workers/provenance.h)
 *   COMPLETE                                           rank 0, last: step, world size, size and CRC-32 of
 *                                                      every other file
 * The protocol (after llm.c): all files are written into step-NNNNNN.partial/ (each to a temporary name,
 * fsynced and renamed), all ranks meet at a barrier, rank 0 checksums the files, writes COMPLETE, and
 * renames the directory into place. A directory without COMPLETE, or whose files do not match it, is
 * never used or listed; a crash at any point leaves the previous checkpoint as the newest. */
#ifndef DPOD_CHECKPOINT_H
#define DPOD_CHECKPOINT_H

#include <stddef.h>
#include <stdint.h>

#include "diffusers_names.h"

#define CKPT_MARKER "COMPLETE"
#define CKPT_WEIGHTS DIFFUSERS_WEIGHTS_NAME
#define CKPT_OPTIMIZER "optimizer.safetensors"
#define CKPT_PROVENANCE "dpod_provenance.json"
/* With train.lora, in place of the full weights: the adapters as diffusers' save_lora_weights writes
 * them (alpha / rank folded into the up weights; what pipe.load_lora_weights reads) and as trained. */
#define CKPT_LORA_WEIGHTS "pytorch_lora_weights.safetensors"
#define CKPT_LORA_STATE "lora_adapters.safetensors"

/* The per-rank record. */
typedef struct {
  uint32_t world_size;
  uint32_t rank;
  uint32_t step;            /* optimizer steps completed */
  uint64_t data_position;   /* global sampler position of the next pair */
  uint64_t seed;            /* train.seed the run was started with */
} ckpt_rank_state;

/* optimizer.safetensors: flat F32 tensors and, in the metadata, "format" (the kind of state: "dpod-adamw"
 * holds exp_avg and exp_avg_sq, "dpod-adafactor" holds state, row and column means tensor after tensor),
 * "format_version" (CKPT_OPTIM_VERSION; files written before it have none and read as version 1) and
 * "step". */
#define CKPT_OPTIM_VERSION 1
#define CKPT_OPTIM_MAX_TENSORS 4
typedef struct {
  const char *format;                          /* "dpod-adamw", "dpod-adafactor" */
  uint64_t step;                               /* optimizer steps taken (bias correction, beta2 schedule) */
  size_t num_tensors;                          /* 1..CKPT_OPTIM_MAX_TENSORS */
  const char *names[CKPT_OPTIM_MAX_TENSORS];
  float *data[CKPT_OPTIM_MAX_TENSORS];         /* [numel[i]] each, the caller's */
  size_t numel[CKPT_OPTIM_MAX_TENSORS];
} ckpt_optimizer;

/* Writes DIR/optimizer.safetensors (temporary name, fsync, rename) from o's buffers. */
int ckpt_write_optimizer(const char *dir, const ckpt_optimizer *o, char *err, size_t errlen);

/* Reads DIR/optimizer.safetensors into o's buffers and o->step. Refused, naming the file: another format
 * (the run changed train.optimizer), a newer format_version, a missing tensor, a dtype other than F32 or
 * a size other than o->numel[i], a step that is not a count. Nothing is written to o on failure. */
int ckpt_read_optimizer(const char *dir, ckpt_optimizer *o, char *err, size_t errlen);

/* "RUN_DIR/checkpoints/step-NNNNNN" (complete) and the ".partial" twin, into buf. */
void ckpt_dir(const char *run_dir, uint32_t step, int partial, char *buf, size_t len);

/* Rank 0, before anyone writes: an empty RUN_DIR/checkpoints/step-NNNNNN.partial/ (a stale one from a
 * crash is removed first). */
int ckpt_begin(const char *run_dir, uint32_t step, char *err, size_t errlen);

/* Rank 0: writes a text file `name` (a plain name: the scheduler config) into the partial directory, like
 * every other file of it (temporary name, fsync, rename); ckpt_commit then records it. */
int ckpt_write_text(const char *partial_dir, const char *name, const char *text, char *err, size_t errlen);

/* Every rank: writes its record into the partial directory (temporary name, fsync, rename). */
int ckpt_write_rank_state(const char *partial_dir, const ckpt_rank_state *st, char *err, size_t errlen);

/* Rank 0, after the barrier: checks that all `world_size` rank records are there, checksums every file,
 * writes COMPLETE, renames the directory into place and fsyncs its parent. *bytes_out (may be NULL)
 * receives the checkpoint's total size. */
int ckpt_commit(const char *run_dir, uint32_t step, uint32_t world_size, uint64_t *bytes_out, char *err,
                size_t errlen);

/* Whether `dir` is a complete checkpoint whose files match their recorded sizes and checksums. On success
 * *step_out (may be NULL) receives its step. */
int ckpt_verify(const char *dir, uint32_t *step_out, char *err, size_t errlen);

/* The newest complete, verified checkpoint of the run: 1 with its step and path, 0 if there is none.
 * Invalid ones are skipped (and logged). */
int ckpt_find_latest(const char *run_dir, uint32_t *step_out, char *path, size_t len);

/* Reads rank `rank`'s record from a complete checkpoint. */
int ckpt_read_rank_state(const char *dir, uint32_t rank, ckpt_rank_state *st, char *err, size_t errlen);

/* Removes all but the newest `keep_last` complete checkpoints, and stale partial directories older than
 * the newest complete one. `removed` (may be NULL) is called for each complete checkpoint removed, with
 * its step and directory. Returns how many directories were removed. */
int ckpt_prune(const char *run_dir, uint32_t keep_last, void (*removed)(uint32_t step, const char *dir, void *arg),
               void *arg);

/* The same, also keeping the best checkpoint by its evaluation: the one whose provenance file's
 * "eval".`best_field` ("implicit_acc") is lowest (`lower_is_better`) or highest; of equals the oldest.
 * Checkpoints without that value are not candidates. best_field NULL or "": ckpt_prune(). The best is
 * found from the files on disk each time, so it survives any number of resumes. */
int ckpt_prune_keep_best(const char *run_dir, uint32_t keep_last, const char *best_field, int lower_is_better,
                         void (*removed)(uint32_t step, const char *dir, void *arg), void *arg);

/* Reads "eval".`field` from a checkpoint's provenance file. Returns 0 with *value, or DPOD_ENOENT when
 * the file or the value is not there. */
int ckpt_eval_metric(const char *dir, const char *field, double *value);

#endif
