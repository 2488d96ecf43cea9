/* The Diffusion-DPO and SFT losses and their gradient with respect to the per-sample MSEs. The UNet (in
 * the shim) turns those gradients into parameter gradients, so the loss is written once, here, in double
 * precision, and tested against the reference fixtures. */
#ifndef DPOD_LOSS_H
#define DPOD_LOSS_H

#include <stddef.h>
#include <stdint.h>

/* The batch is laid out as the reference script builds it: winners first, then losers,
 * so model_mse and ref_mse are [2n] with pair i at i (winner) and n + i (loser). */
typedef struct {
  double loss_sum;          /* sum over pairs of -logsigmoid(inside) (dpo) or of winner MSE (sft) */
  double acc_sum;           /* pairs with inside > 0 (a tie counts as wrong) */
  double margin_sum;        /* sum of inside terms */
  double policy_mse_sum;    /* sum over all 2n samples of the policy's MSE */
  double ref_mse_sum;       /* same for the reference */
  double pairs;             /* n */
  double samples;           /* images the MSE sums cover: 2n (dpo) or n (sft) */
  double saturated_sum;     /* dpo: pairs with |inside| > DPO_SATURATED_INSIDE; sft: 0 (no sigmoid) */
} dpo_loss_sums;

/* A pair's sigmoid is saturated when |inside| exceeds this: sigmoid(inside) is then within 4.6e-5 of 0
 * or 1, and the pair's gradient (sigmoid(-inside) * beta/2) is at most 4.6e-5 * beta/2 — it teaches the
 * policy nothing more (right side) or cannot recover without a huge step (wrong side). */
#define DPO_SATURATED_INSIDE 10.0

/* DPO: inside_i = -beta/2 * ((mw - ml) - (rw - rl)), loss = mean_i -logsigmoid(inside_i).
 * Accumulates into *sums (so micro-batches and ranks can be added up), writes inside [n] if non-NULL and
 * grad_model_mse [2n] = d(grad_scale * sum_i -logsigmoid(inside_i)) / d model_mse if non-NULL.
 * With grad_scale = 1 / (pairs in the global batch) the gradients summed over micro-batches and ranks are
 * exactly those of the mean loss over the global batch. */
void dpo_loss(int n, const float *model_mse, const float *ref_mse, double beta, double grad_scale,
              dpo_loss_sums *sums, float *inside, float *grad_model_mse);

/* The preference losses train.loss chooses (all with the inside term above, in our beta convention:
 * inside = -beta/2 * d, d = (mw - ml) - (rw - rl); diffusers' example writes beta_dpo * (ref_diff -
 * model_diff), so its beta_dpo is our beta / 2). Let h = -d / 2 = inside / beta: the implied log-likelihood
 * ratio margin, with the 1/2 of the Gaussian log-likelihood, so that sigmoid is DPO's -logsigmoid(beta h).
 *   DPO_LOSS_SIGMOID  -logsigmoid(inside)                      (dpo_loss; saturated: |inside| > 10)
 *   DPO_LOSS_HINGE    relu(1 - inside)                         diffusers' relu(1 - beta_dpo * logits)
 *                                                              restated; saturated: inside >= 1 (no gradient)
 *   DPO_LOSS_IPO      (h - 1/(2 tau))^2 with tau = beta        the IPO paper's loss on h = (inside / beta);
 *                     = (inside - 1/2)^2 / beta^2              never saturated (saturated_sum stays 0)
 * diffusers' ipo branch reads an undefined args.beta; read as beta_dpo it would be (2h - 1/beta)^2, which is 4x
 * ours: the same minimiser, gradients 4x as large. */
typedef enum { DPO_LOSS_SIGMOID = 0, DPO_LOSS_HINGE = 1, DPO_LOSS_IPO = 2 } dpo_loss_kind;

/* "sigmoid", "hinge", "ipo"; "?" otherwise. Static storage. */
const char *dpo_loss_kind_name(dpo_loss_kind kind);

/* dpo_loss with the loss `kind`: the same sums (loss_sum the chosen loss), inside and grad_model_mse. */
void dpo_pref_loss(dpo_loss_kind kind, int n, const float *model_mse, const float *ref_mse, double beta,
                   double grad_scale, dpo_loss_sums *sums, float *inside, float *grad_model_mse);

/* SFT baseline: the plain denoising loss on winners only; model_mse is [n] (winners only) and ref_mse may
 * be NULL. grad_model_mse [n] = grad_scale. */
void sft_loss(int n, const float *model_mse, const float *ref_mse, double grad_scale, dpo_loss_sums *sums,
              float *grad_model_mse);

#endif
