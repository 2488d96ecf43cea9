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
  dpo_pref_loss(DPO_LOSS_SIGMOID, n, model_mse, ref_mse, beta, grad_scale, sums, inside, grad_model_mse);
}

const char *dpo_loss_kind_name(dpo_loss_kind kind) {
  switch (kind) {
    case DPO_LOSS_SIGMOID: return "sigmoid";
    case DPO_LOSS_HINGE: return "hinge";
    case DPO_LOSS_IPO: return "ipo";
  }
  return "?";
}

void dpo_pref_loss(dpo_loss_kind kind, int n, const float *model_mse, const float *ref_mse, double beta,
                   double grad_scale, dpo_loss_sums *sums, float *inside, float *grad_model_mse) {
  for (int i = 0; i < n; i++) {
    double mw = model_mse[i], ml = model_mse[n + i], rw = ref_mse[i], rl = ref_mse[n + i];
    double in = -0.5 * beta * ((mw - ml) - (rw - rl));
    /* The loss and its derivative with respect to inside; d(inside)/d(mw) = -beta/2, d/d(ml) = +beta/2. */
    double loss, dl_din, sat;
    if (kind == DPO_LOSS_HINGE) {
      /* relu(1 - inside); at the kink the gradient is 0, as torch.relu's. */
      loss = in < 1.0 ? 1.0 - in : 0.0;
      dl_din = in < 1.0 ? -1.0 : 0.0;
      sat = in >= 1.0;
    } else if (kind == DPO_LOSS_IPO) {
      /* (h - 1/(2 beta))^2 with h = inside / beta; written from h so that beta^2 is never formed. */
      double h = -0.5 * ((mw - ml) - (rw - rl)), e = h - 0.5 / beta;
      loss = e * e;
      dl_din = 2.0 * e / beta;
      sat = 0;
    } else {
      loss = neg_logsigmoid(in);
      dl_din = -sigmoid(-in); /* d(-logsigmoid(in))/d(in) */
      sat = fabs(in) > DPO_SATURATED_INSIDE;
    }
    sums->loss_sum += loss;
    sums->acc_sum += in > 0 ? 1.0 : 0.0;
    sums->margin_sum += in;
    sums->saturated_sum += sat ? 1.0 : 0.0;
    sums->policy_mse_sum += mw + ml;
    sums->ref_mse_sum += rw + rl;
    if (inside) inside[i] = (float)in;
    if (grad_model_mse) {
      double g = grad_scale * dl_din * -0.5 * beta;
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
