/* Dynamic loss scaling, as torch.cuda.amp.GradScaler does it, for fp16 training (train.precision fp16).
 *
 * The loss (what the backward starts from: the worker's d loss / d mse) is multiplied by the scale, so
 * that small fp16 gradients do not flush to zero. After the all-reduce every rank unscales the same flat
 * gradient buffer (dpo_loss_scale_unscale) and so sees the same inf/nan; a step whose gradients hold one is
 * skipped (no optimizer update, no step counted) and the scale backed off; growth_interval clean steps in
 * a row grow it. The growth and backoff factors are fixed at GradScaler's 2 and 0.5, and the initial scale
 * is a power of two, so every scale is a power of two and unscaling is exact: without an overflow, a
 * scaled float32 run is bit for bit the unscaled one.
 *
 * Two bounds GradScaler has not: the scale never falls below min_scale (1, DeepSpeed's min_loss_scale:
 * below it a skipped step keeps the scale and only counts) nor grows above max_scale (2^32), so that it
 * stays a finite power of two in any run. Plain C, no torch; the worker owns the one scaler of a job. */
#ifndef DPOD_LOSS_SCALE_H
#define DPOD_LOSS_SCALE_H

#include <stddef.h>
#include <stdint.h>

#define DPO_LOSS_SCALE_INIT 65536.0         /* GradScaler's init_scale, 2^16 */
#define DPO_LOSS_SCALE_INTERVAL 2000u       /* GradScaler's growth_interval */
#define DPO_LOSS_SCALE_MIN 1.0
#define DPO_LOSS_SCALE_MAX 4294967296.0     /* 2^32 */
#define DPO_LOSS_SCALE_INTERVAL_MAX 100000000u /* train.steps' bound */
/* The checkpoint file that carries the scaler's state (checkpoint.h; rank 0 writes it). */
#define CKPT_LOSS_SCALE "loss_scale.json"

typedef struct {
  double init_scale;          /* a power of two in [min_scale, max_scale] */
  uint32_t growth_interval;   /* clean steps in a row before the scale doubles: 1..DPO_LOSS_SCALE_INTERVAL_MAX */
  double growth_factor;       /* 2 (fixed: other values are refused) */
  double backoff_factor;      /* 0.5 (fixed) */
  double min_scale;           /* DPO_LOSS_SCALE_MIN */
  double max_scale;           /* DPO_LOSS_SCALE_MAX */
} dpo_loss_scale_params;

dpo_loss_scale_params dpo_loss_scale_default_params(void);

typedef struct {
  dpo_loss_scale_params p;
  double scale;               /* what the next step's loss is multiplied by */
  uint32_t growth_tracker;    /* clean steps since the scale last changed or a step was skipped */
  uint64_t skipped;           /* steps skipped so far in the run (the lr schedule does not count them) */
} dpo_loss_scaler;

/* What dpo_loss_scaler_update did. */
typedef enum {
  DPO_LOSS_SCALE_KEPT = 0,    /* a clean step; the scale is unchanged */
  DPO_LOSS_SCALE_GREW = 1,    /* a clean step, the growth_interval-th in a row: the scale doubled (or sits at max) */
  DPO_LOSS_SCALE_BACKOFF = 2, /* a skipped step: the scale halved (or sits at min) */
} dpo_loss_scale_event;

/* A scaler at p->init_scale (NULL: the defaults). DPOD_EINVAL, with err naming the parameter, for an
 * initial scale that is not a power of two in [min_scale, max_scale], a growth_interval of 0 or above
 * DPO_LOSS_SCALE_INTERVAL_MAX, or factors other than 2 and 0.5. */
int dpo_loss_scaler_init(dpo_loss_scaler *s, const dpo_loss_scale_params *p, char *err, size_t errlen);

/* g [n] *= 1 / scale, in place. Returns 1 if any element was inf or nan (the step must be skipped), else
 * 0. Every element is multiplied either way, so that the buffer's state does not depend on where the
 * first non-finite value was. */
int dpo_loss_scale_unscale(double scale, float *g, size_t n);

/* One step's verdict: found_nonfinite (from dpo_loss_scale_unscale, after the all-reduce) backs the scale
 * off, resets the growth count and counts the skip; else the growth count advances and at
 * growth_interval the scale grows. */
dpo_loss_scale_event dpo_loss_scaler_update(dpo_loss_scaler *s, int found_nonfinite);

/* The state as one line of JSON (scale, growth_tracker, skipped, and the parameters it was made with),
 * into buf (NUL-terminated). Returns the length, or -1 if buf is too small (256 bytes always suffice). */
int dpo_loss_scaler_to_json(const dpo_loss_scaler *s, char *buf, size_t len);

/* Restores the state from what dpo_loss_scaler_to_json wrote, into a scaler made by dpo_loss_scaler_init
 * with this job's parameters. Refused (DPOD_EFORMAT, err naming `what`, never quoting the text) when the
 * text is not that JSON, the scale is not a power of two within the bounds, the growth count is not below
 * growth_interval, or the file was written with another init_scale or growth_interval; s is unchanged
 * then. */
int dpo_loss_scaler_from_json(dpo_loss_scaler *s, const char *text, const char *what, char *err, size_t errlen);

/* In a checkpoint (rank 0, into the partial directory, like its other files): CKPT_LOSS_SCALE. */
int dpo_loss_scaler_save(const dpo_loss_scaler *s, const char *partial_dir, char *err, size_t errlen);
/* Restores the state from DIR/CKPT_LOSS_SCALE (dpo_loss_scaler_from_json's checks). DPOD_ENOENT, s
 * unchanged, when the checkpoint has none (written without loss scaling, or before it existed). */
int dpo_loss_scaler_load(dpo_loss_scaler *s, const char *dir, char *err, size_t errlen);

#endif
