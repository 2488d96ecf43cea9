/* Gradient checkpointing: the forward's resnets and transformers run without keeping their activations
 * and are run again during backward, as torch.utils.checkpoint(use_reentrant=True) does it and as
 * diffusers' enable_gradient_checkpointing applies it (each resnet and each transformer of a block).
 *
 * Each unit becomes one custom autograd function. Its forward runs the unit with grad mode off (the
 * custom function's own rule) and saves only the unit's inputs. Its backward runs the unit again on
 * detached copies of those inputs with grad mode on, back-propagates the incoming gradient through that
 * fresh graph with a nested (reentrant) backward, and returns the inputs' gradients. The parameters are
 * not inputs of the function: the nested backward accumulates their gradients straight into their .grad,
 * which are views of the flat gradient buffer (or of the LoRA gradient buffer), exactly where the plain
 * backward puts them. Recomputing gives bit-identical activations (the same ops on the same inputs), so the
 * gradients differ from the plain backward's only by the order float32 sums are taken in.
 *
 * Two details the reentrant scheme needs here:
 * - With LoRA the base is frozen, so the first units' inputs need no gradient; a custom function whose
 *   inputs need none is not differentiated at all, and the adapters inside it would get no gradient. An
 *   empty "anchor" input that requires grad (its gradient is never defined) keeps every unit in the graph.
 * - The worker switches the adapters off for the reference forward between the policy's forward and the
 *   backward; the recomputation runs with the adapters as they were when the unit first ran. */
#include <ATen/core/grad_mode.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/custom_function.h>

#include <cstdint>

#include "unet_model.h"

namespace shim {

namespace {

enum unit_kind : int64_t { UNIT_RESNET = 0, UNIT_TRANSFORMER = 1 };

/* The unit itself. skip: the up block's skip connection, or an empty tensor (custom functions refuse
 * undefined inputs). */
at::Tensor run_unit(const unet &m, int64_t kind, const void *unit, const at::Tensor &x, const at::Tensor &skip,
                    const at::Tensor &cond) {
  if (kind == UNIT_RESNET) {
    const resnet_ &r = *static_cast<const resnet_ *>(unit);
    return resnet_unit(m, r, skip.numel() ? at::cat({x, skip}, 1) : x, cond);
  }
  return transformer_unit(m, *static_cast<const transformer_ *>(unit), x, cond);
}

/* Sets the model's adapters on or off for the recomputation and back as they were afterwards. */
struct lora_state_guard_ {
  unet &m;
  bool was;
  lora_state_guard_(unet &model, bool active) : m(model), was(model.lora_active) { m.lora_active = active; }
  ~lora_state_guard_() { m.lora_active = was; }
};

struct ckpt_fn : public torch::autograd::Function<ckpt_fn> {
  /* x [n, C, H, W]; skip [n, C', H, W] or empty; cond temb_act (resnet) or ehs (transformer); anchor: an
   * empty tensor that requires grad. The model and the unit are passed as addresses: both outlive the
   * graph (the model holds the graph it is in). */
  static at::Tensor forward(torch::autograd::AutogradContext *ctx, const at::Tensor &x, const at::Tensor &skip,
                            const at::Tensor &cond, const at::Tensor &anchor, int64_t kind, int64_t unit,
                            int64_t model) {
    (void)anchor;
    const unet &m = *reinterpret_cast<const unet *>((intptr_t)model);
    ctx->save_for_backward({x, skip, cond});
    ctx->saved_data["kind"] = kind;
    ctx->saved_data["unit"] = unit;
    ctx->saved_data["model"] = model;
    ctx->saved_data["lora"] = m.lora_active;
    ctx->saved_data["rg"] = (int64_t)((x.requires_grad() ? 1 : 0) | (skip.requires_grad() ? 2 : 0) |
                                      (cond.requires_grad() ? 4 : 0));
    m.ckpt_forwards++;
    return run_unit(m, kind, reinterpret_cast<const void *>((intptr_t)unit), x, skip, cond);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext *ctx,
                                                 torch::autograd::variable_list grad_out) {
    auto saved = ctx->get_saved_variables();
    const int64_t kind = ctx->saved_data["kind"].toInt();
    const void *unit = reinterpret_cast<const void *>((intptr_t)ctx->saved_data["unit"].toInt());
    unet &m = *reinterpret_cast<unet *>((intptr_t)ctx->saved_data["model"].toInt());
    const int64_t rg = ctx->saved_data["rg"].toInt();
    at::Tensor in[3];
    for (int i = 0; i < 3; i++) {
      in[i] = saved[(size_t)i].detach();
      if (rg & (1 << i)) in[i].requires_grad_(true);
    }
    at::Tensor out;
    {
      lora_state_guard_ lg(m, ctx->saved_data["lora"].toBool());
      at::AutoGradMode on(true);
      out = run_unit(m, kind, unit, in[0], in[1], in[2]);
    }
    m.ckpt_recomputes++;
    torch::autograd::variable_list none(7);
    if (!out.requires_grad() || !grad_out[0].defined()) return none;
    torch::autograd::backward({out}, {grad_out[0]});
    for (int i = 0; i < 3; i++)
      if (rg & (1 << i)) none[(size_t)i] = in[i].grad();
    return none;
  }
};

at::Tensor apply(const unet &m, int64_t kind, const void *unit, const at::Tensor &x, const at::Tensor &skip,
                 const at::Tensor &cond) {
  at::Tensor anchor = at::empty({0}, x.options()).requires_grad_(true);
  at::Tensor s = skip.defined() ? skip : at::empty({0}, x.options());
  return ckpt_fn::apply(x, s, cond, anchor, kind, (int64_t)reinterpret_cast<intptr_t>(unit),
                        (int64_t)reinterpret_cast<intptr_t>(&m));
}

}  // namespace

bool checkpointing(const unet &m) { return m.grad_ckpt && at::GradMode::is_enabled(); }

at::Tensor checkpoint_resnet(const unet &m, const resnet_ &r, const at::Tensor &x, const at::Tensor &skip,
                             const at::Tensor &temb_act) {
  return apply(m, UNIT_RESNET, &r, x, skip, temb_act);
}

at::Tensor checkpoint_transformer(const unet &m, const transformer_ &t, const at::Tensor &x, const at::Tensor &ehs) {
  return apply(m, UNIT_TRANSFORMER, &t, x, at::Tensor(), ehs);
}

}  // namespace shim
