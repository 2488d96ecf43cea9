/* The UNet2DConditionModel config, parsed and validated (internal to the shim, C++ only, no torch).
 *
 * Every per-block quantity is expanded to one entry per down block, in down-block order, the way
 * diffusers expands an int to a tuple; `*_is_list` remembers how the value was written so the saved
 * config.json reads like the one that was loaded. */
#ifndef DPOD_UNET_CONFIG_H
#define DPOD_UNET_CONFIG_H

#include <string>
#include <vector>

/* SDXL's time ids: original size (h, w), crop top-left (y, x), target size (h, w). */
constexpr int unet_num_time_ids_ = 6;

struct unet_config_ {
  int sample_size = 0;             /* 0: null in the JSON */
  int in_channels = 4, out_channels = 4;
  bool center_input_sample = false;
  bool flip_sin_to_cos = true;
  double freq_shift = 0;
  std::vector<bool> down_cross;    /* per down block: CrossAttnDownBlock2D (true) or DownBlock2D */
  std::vector<bool> up_cross;      /* per up block: CrossAttnUpBlock2D (true) or UpBlock2D */
  std::vector<int> block_out_channels;
  std::vector<int> layers_per_block;
  bool layers_per_block_is_list = false;
  int downsample_padding = 1;
  double mid_block_scale_factor = 1;
  std::string act_fn = "silu";
  int norm_num_groups = 32;
  double norm_eps = 1e-5;
  std::vector<int> cross_attention_dim;
  bool cross_attention_dim_is_list = false;
  std::vector<int> transformer_layers_per_block;
  bool transformer_layers_is_list = false;
  std::vector<int> heads;          /* number of attention heads per down block (attention_head_dim, or
                                      num_attention_heads where given) */
  bool heads_is_list = false;
  bool use_linear_projection = false;
  bool upcast_attention = false;
  bool upcast_attention_is_null = false; /* SDXL base writes null; it means false */
  int time_embedding_dim = 0;      /* 0: null (block_out_channels[0] * 4) */
  int conv_in_kernel = 3, conv_out_kernel = 3;
  int addition_embed_type_num_heads = 64;
  /* addition_embed_type "text_time" (SDXL): the pooled text embedding and six time ids, each time id
   * through a sinusoidal embedding of addition_time_embed_dim, go through add_embedding into the time
   * embedding. 0 for both: no added conditioning (null in the JSON). */
  int addition_time_embed_dim = 0;
  int projection_class_embeddings_input_dim = 0;

  bool text_time() const { return addition_time_embed_dim > 0; }
  /* Width of the pooled text embedding text_time takes: what the projection's input leaves after the
   * six time-id embeddings. 0 without text_time. */
  int text_embeds_dim() const {
    return text_time() ? projection_class_embeddings_input_dim - unet_num_time_ids_ * addition_time_embed_dim : 0;
  }

  int time_embed_dim() const { return time_embedding_dim > 0 ? time_embedding_dim : block_out_channels[0] * 4; }
};

/* Parses and validates diffusers config.json text. Returns 0 or a negative dpod_status with *err naming
 * the key at fault. */
int unet_config_parse_(const char *json, unet_config_ *c, std::string *err);

/* The full, normalised config as diffusers writes it (sorted keys, every key present). */
std::string unet_config_to_json_(const unet_config_ &c);

/* The built-in tiny config: the shape of ../shared/fixtures/tiny-sd/config.json. */
extern const char *const unet_tiny_config_json_;

#endif
