/* provenance: what a checkpoint came from, in a small JSON file inside it (CKPT_PROVENANCE).
 *
 *   {"format": "dpod-provenance", "version": 1, "step": 200,
 *    "dpod_version": "0.9.0", "torch_version": "1.13.0",
 *    "dataset": {"path": "/data/pick", "manifest_sha256": "ab12..."}   or
 *               {"builtin": "synthetic", "seed": 1234, "pairs": 64, "prompts": 8, "text_len": 4},
 *    "spec": {...the normalized JobSpec, every field...},
 *    "eval": {...the EvalMetrics of this step, when there was one...}}
 *
 * Rank 0 writes it into the partial checkpoint directory before COMPLETE, so that it is checksummed
 * with the rest and a checkpoint has it whole or not at all. keep_best reads "eval" back
 * (workers/dpo/checkpoint.c). */
#ifndef DPOD_PROVENANCE_H
#define DPOD_PROVENANCE_H

#include <stddef.h>
#include <stdint.h>

#include "dpod.pb-c.h"

/* The dataset part, computed once per run: for a dataset directory, the SHA-256 of its manifest.json,
 * in hex, into hash (at least 65 bytes); for the built-in one, "". Returns 0, or a status with err
 * naming the file. */
int provenance_dataset_hash(const Dpod__V1__JobSpec *spec, char *hash, size_t len, char *err, size_t errlen);

/* Writes DIR/dpod_provenance.json (atomically, not synced: the checkpoint's commit syncs the directory).
 * `eval` may be NULL. Returns 0, or a status with err saying why. */
int provenance_write(const char *dir, uint32_t step, const Dpod__V1__JobSpec *spec, const char *dataset_hash,
                     const char *torch_version, const Dpod__V1__EvalMetrics *eval, char *err, size_t errlen);

#endif
