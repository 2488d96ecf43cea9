/* A checkpoint's records: the COMPLETE marker (its file list, sizes and CRCs), rank 0's record and the loss
 * scaler's state. The input is split into the files of one checkpoint directory (fuzz_util.h), which is
 * then looked for, verified and read as a resuming worker does: ckpt_find_latest(), ckpt_verify(),
 * ckpt_read_rank_state(), dpo_loss_scaler_load(). */
#include <stdint.h>
#include <stdio.h>
#include <sys/stat.h>

#include "checkpoint.h"
#include "fuzz_util.h"
#include "loss_scale.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static const char *const names[] = {CKPT_MARKER, "rank-00000.json", CKPT_WEIGHTS, "config.json", CKPT_LOSS_SCALE};
  const char *scratch = fuzz_scratch_dir();
  fuzz_quiet_logs();
  fuzz_clear_dir(scratch);
  char run[4200], ckpts[4300], dir[4400], found[4400], err[512];
  snprintf(run, sizeof run, "%s/run", scratch);
  snprintf(ckpts, sizeof ckpts, "%s/checkpoints", run);
  ckpt_dir(run, 1, 0, dir, sizeof dir);
  if (mkdir(run, 0700) != 0 || mkdir(ckpts, 0700) != 0 || mkdir(dir, 0700) != 0) return 0;
  fuzz_write_parts(dir, data, size, names, sizeof names / sizeof names[0]);

  uint32_t step = 0;
  fuzz_note("ckpt_find_latest", ckpt_find_latest(run, &step, found, sizeof found) == 1 ? 0 : -1, "none found");
  fuzz_note("ckpt_verify", ckpt_verify(dir, &step, err, sizeof err), err);
  ckpt_rank_state st;
  fuzz_note("ckpt_read_rank_state", ckpt_read_rank_state(dir, 0, &st, err, sizeof err), err);
  dpo_loss_scaler ls;
  if (dpo_loss_scaler_init(&ls, NULL, err, sizeof err) == 0)
    fuzz_note("dpo_loss_scaler_load", dpo_loss_scaler_load(&ls, dir, err, sizeof err), err);
  return 0;
}
