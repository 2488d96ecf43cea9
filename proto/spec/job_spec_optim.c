/* The bounds of train.loss, train.lr_scheduler and train.optimizer, part of job_spec_validate: in a file of
 * their own so that the rules for the references' losses, schedules and optimizers read in one place. */
#include <string.h>

#include "dpod_error.h"
#include "job_spec.h"

static const char *const loss_names[] = {"sigmoid", "hinge", "ipo"};
static const char *const lr_names[] = {"constant_with_warmup", "cosine", "linear"};
static const char *const optim_names[] = {"adamw", "adafactor"};

static int name_index(const char *s, const char *const *names, int n) {
  for (int i = 0; s && i < n; i++)
    if (strcmp(s, names[i]) == 0) return i;
  return -1;
}

int job_spec_loss_index(const char *name) { return name_index(name, loss_names, 3); }
int job_spec_lr_scheduler_index(const char *name) { return name_index(name, lr_names, 3); }
int job_spec_optimizer_index(const char *name) { return name_index(name, optim_names, 2); }

/* A refused name is quoted up to 32 characters: enough to see the typo, never a pasted file. */
#define QUOTED(s) (int)(strlen(s) > 32 ? 32 : strlen(s)), (s), strlen(s) > 32 ? "..." : ""

int job_spec_validate_optim_(const Dpod__V1__JobSpec *spec, char *err, size_t errlen) {
  const Dpod__V1__TrainSpec *t = spec->train;
  if (!t) return 0;
  const char *loss = t->loss ? t->loss : "sigmoid", *lr = t->lr_scheduler ? t->lr_scheduler : "constant_with_warmup",
             *opt = t->optimizer ? t->optimizer : "adamw";
  if (job_spec_loss_index(loss) < 0)
    return dpod_errf(err, errlen, DPOD_EINVAL, "train.loss: unknown loss '%.*s%s' (expected sigmoid, hinge or ipo)",
                     QUOTED(loss));
  if (t->objective != DPOD__V1__OBJECTIVE__OBJECTIVE_DPO && strcmp(loss, "sigmoid") != 0)
    return dpod_errf(err, errlen, DPOD_EINVAL,
                     "train.loss: '%s' is a preference loss; the sft objective has none (leave train.loss sigmoid)",
                     loss);
  if (job_spec_lr_scheduler_index(lr) < 0)
    return dpod_errf(err, errlen, DPOD_EINVAL,
                     "train.lr_scheduler: unknown schedule '%.*s%s' (expected constant_with_warmup, cosine or linear)",
                     QUOTED(lr));
  int o = job_spec_optimizer_index(opt);
  if (o < 0)
    return dpod_errf(err, errlen, DPOD_EINVAL, "train.optimizer: unknown optimizer '%.*s%s' (expected adamw or adafactor)",
                     QUOTED(opt));
  /* Adafactor has no Adam moments: an Adam setting changed from its default would be silently ignored. */
  if (o == 1) {
    const char *unused = t->adam_beta1 != 0.9 ? "train.adam_beta1" : t->adam_beta2 != 0.999 ? "train.adam_beta2"
                         : t->adam_eps != 1e-8                       ? "train.adam_eps"
                                                                     : NULL;
    if (unused)
      return dpod_errf(err, errlen, DPOD_EINVAL,
                       "%s: not used by train.optimizer adafactor (its second moments are factored, it keeps no "
                       "first moment, and its eps are fixed at (1e-30, 1e-3)); leave it at its default",
                       unused);
  }
  return 0;
}
