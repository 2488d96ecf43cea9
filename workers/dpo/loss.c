#include "loss.h"

#include <math.h>

/* -logsigmoid(x) = softplus(-x), written so that neither branch overflows. */
static double neg_logsigmoid(double x) { return x >= 0 ? log1p(exp(-x)) : -x + log1p(exp(x)); }
static double sigmoid(double x) {
  if (x >= 0) return 1.0 / (1.0 + exp(-x));
  double e = exp(x);
  return e / (1.0 + e);
}

void dpo_loss(int n, const float *model_mse, const float *ref_mse, double beta, double grad_scale,
              dpo_loss_sums *sums, float *inside, float *grad_model_mse) {
  for (int i = 0; i < n; i++) {
    double mw = model_mse[i], ml = model_mse[n + i], rw = ref_mse[i], rl = ref_mse[n + i];
    double in = -0.5 * beta * ((mw - ml) - (rw - rl));
    sums->loss_sum += neg_logsigmoid(in);
    sums->acc_sum += in > 0 ? 1.0 : 0.0;
    sums->margin_sum += in;
    sums->saturated_sum += fabs(in) > DPO_SATURATED_INSIDE ? 1.0 : 0.0;
    sums->policy_mse_sum += mw + ml;
    sums->ref_mse_sum += rw + rl;
    if (inside) inside[i] = (float)in;
    if (grad_model_mse) {
      /* d(-logsigmoid(in))/d(in) = -sigmoid(-in); d(in)/d(mw) = -beta/2, d(in)/d(ml) = +beta/2. */
      double g = grad_scale * sigmoid(-in) * 0.5 * beta;
      grad_model_mse[i] = (float)g;
      grad_model_mse[n + i] = (float)-g;
    }
  }
  sums->pairs += n;
  sums->samples += 2 * n;
}

void sft_loss(int n, const float *model_mse, const float *ref_mse, double grad_scale, dpo_loss_sums *sums,
              float *grad_model_mse) {
  for (int i = 0; i < n; i++) {
    sums->loss_sum += model_mse[i];
    sums->policy_mse_sum += model_mse[i];
    if (ref_mse) sums->ref_mse_sum += ref_mse[i];
    if (grad_model_mse) grad_model_mse[i] = (float)grad_scale;
  }
  sums->pairs += n;
  sums->samples += n;
}
