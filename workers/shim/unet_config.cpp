/* Parsing and validating a diffusers UNet2DConditionModel config.json.
 *
 * The rule: every key is either understood, or at a value that changes nothing (null, false, the
 * default), or refused by name. Nothing is silently ignored, because a silently ignored key means a
 * model that loads and quietly computes something other than what diffusers would. */
#include "unet_config.h"

#include <cjson/cJSON.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <set>

#include "dpod_error.h"

const char *const unet_tiny_config_json_ = R"({
  "_class_name": "UNet2DConditionModel",
  "_diffusers_version": "0.31.0",
  "act_fn": "silu",
  "addition_embed_type": null,
  "addition_embed_type_num_heads": 64,
  "addition_time_embed_dim": null,
  "attention_head_dim": 8,
  "attention_type": "default",
  "block_out_channels": [32, 64],
  "center_input_sample": false,
  "class_embed_type": null,
  "class_embeddings_concat": false,
  "conv_in_kernel": 3,
  "conv_out_kernel": 3,
  "cross_attention_dim": 32,
  "cross_attention_norm": null,
  "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
  "downsample_padding": 1,
  "dropout": 0.0,
  "dual_cross_attention": false,
  "encoder_hid_dim": null,
  "encoder_hid_dim_type": null,
  "flip_sin_to_cos": true,
  "freq_shift": 0,
  "in_channels": 4,
  "layers_per_block": 1,
  "mid_block_only_cross_attention": null,
  "mid_block_scale_factor": 1,
  "mid_block_type": "UNetMidBlock2DCrossAttn",
  "norm_eps": 1e-05,
  "norm_num_groups": 8,
  "num_attention_heads": null,
  "num_class_embeds": null,
  "only_cross_attention": false,
  "out_channels": 4,
  "projection_class_embeddings_input_dim": null,
  "resnet_out_scale_factor": 1.0,
  "resnet_skip_time_act": false,
  "resnet_time_scale_shift": "default",
  "reverse_transformer_layers_per_block": null,
  "sample_size": 8,
  "time_cond_proj_dim": null,
  "time_embedding_act_fn": null,
  "time_embedding_dim": null,
  "time_embedding_type": "positional",
  "timestep_post_act": null,
  "transformer_layers_per_block": 1,
  "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
  "upcast_attention": false,
  "use_linear_projection": false
})";

namespace {

struct parse_error {
  int status;
  std::string msg;
};

[[noreturn]] void refuse(const char *key, const std::string &why, int status = DPOD_EUNSUPPORTED) {
  throw parse_error{status, std::string("config key '") + key + "': " + why};
}

std::string show(const cJSON *j) {
  char *s = cJSON_PrintUnformatted(j);
  std::string out = s ? s : "?";
  cJSON_free(s);
  if (out.size() > 80) out = out.substr(0, 77) + "...";
  return out;
}

bool is_int(const cJSON *j) {
  return cJSON_IsNumber(j) && std::isfinite(j->valuedouble) && j->valuedouble == std::floor(j->valuedouble) &&
         std::fabs(j->valuedouble) < 1e9;
}

int get_int(const cJSON *j, const char *key, int min) {
  if (!is_int(j)) refuse(key, "expected an integer, got " + show(j), DPOD_EINVAL);
  int v = (int)j->valuedouble;
  if (v < min) refuse(key, "value " + show(j) + " is below " + std::to_string(min), DPOD_EINVAL);
  return v;
}

/* An integer in [min, max]: for widths whose size nothing else bounds before they are allocated. */
int get_int_in(const cJSON *j, const char *key, int min, int max) {
  int v = get_int(j, key, min);
  if (v > max) refuse(key, "value " + show(j) + " is above " + std::to_string(max), DPOD_EINVAL);
  return v;
}

double get_num(const cJSON *j, const char *key) {
  if (!cJSON_IsNumber(j) || !std::isfinite(j->valuedouble)) refuse(key, "expected a number, got " + show(j), DPOD_EINVAL);
  return j->valuedouble;
}

bool get_bool(const cJSON *j, const char *key) {
  if (!cJSON_IsBool(j)) refuse(key, "expected true or false, got " + show(j), DPOD_EINVAL);
  return cJSON_IsTrue(j);
}

/* An int, or a list with one int per down block. */
std::vector<int> get_per_block(const cJSON *j, const char *key, size_t nblocks, int min, bool *is_list) {
  std::vector<int> out;
  if (cJSON_IsArray(j)) {
    *is_list = true;
    for (const cJSON *e = j->child; e; e = e->next) {
      if (cJSON_IsArray(e)) refuse(key, "nested per-layer lists are not supported: " + show(j));
      out.push_back(get_int(e, key, min));
    }
    if (out.size() != nblocks)
      refuse(key, "has " + std::to_string(out.size()) + " entries but there are " + std::to_string(nblocks) +
                      " down blocks", DPOD_EINVAL);
  } else {
    *is_list = false;
    out.assign(nblocks, get_int(j, key, min));
  }
  return out;
}

void must_be_null(const cJSON *j, const char *key) {
  if (!cJSON_IsNull(j)) refuse(key, "value " + show(j) + " is not supported (only null)");
}

void must_be_false(const cJSON *j, const char *key) {
  if (!cJSON_IsFalse(j)) refuse(key, "value " + show(j) + " is not supported (only false)");
}

void must_be_string(const cJSON *j, const char *key, const char *a, const char *b = nullptr) {
  if (!cJSON_IsString(j) || (std::strcmp(j->valuestring, a) != 0 && (!b || std::strcmp(j->valuestring, b) != 0)))
    refuse(key, "value " + show(j) + " is not supported (only \"" + a + "\")");
}

void must_be_number(const cJSON *j, const char *key, double v) {
  if (!cJSON_IsNumber(j) || j->valuedouble != v)
  {
    char buf[32];
    snprintf(buf, sizeof buf, "%g", v);
    refuse(key, "value " + show(j) + " is not supported (only " + buf + ")");
  }
}

const char *const known_keys[] = {
    "act_fn", "addition_embed_type", "addition_embed_type_num_heads", "addition_time_embed_dim",
    "attention_head_dim", "attention_type", "block_out_channels", "center_input_sample", "class_embed_type",
    "class_embeddings_concat", "conv_in_kernel", "conv_out_kernel", "cross_attention_dim",
    "cross_attention_norm", "down_block_types", "downsample_padding", "dropout", "dual_cross_attention",
    "encoder_hid_dim", "encoder_hid_dim_type", "flip_sin_to_cos", "freq_shift", "in_channels",
    "layers_per_block", "mid_block_only_cross_attention", "mid_block_scale_factor", "mid_block_type",
    "norm_eps", "norm_num_groups", "num_attention_heads", "num_class_embeds", "only_cross_attention",
    "out_channels", "projection_class_embeddings_input_dim", "resnet_out_scale_factor", "resnet_skip_time_act",
    "resnet_time_scale_shift", "reverse_transformer_layers_per_block", "sample_size", "time_cond_proj_dim",
    "time_embedding_act_fn", "time_embedding_dim", "time_embedding_type", "timestep_post_act",
    "transformer_layers_per_block", "up_block_types", "upcast_attention", "use_linear_projection"};

void parse(const cJSON *root, unet_config_ *c) {
  if (!cJSON_IsObject(root)) throw parse_error{DPOD_EFORMAT, "config is not a JSON object"};

  /* Unknown keys first: metadata (leading underscore) is fine, anything else only if it is null. */
  std::set<std::string> known(std::begin(known_keys), std::end(known_keys));
  for (const cJSON *e = root->child; e; e = e->next) {
    const char *k = e->string ? e->string : "";
    if (k[0] == '_' || known.count(k)) continue;
    if (!cJSON_IsNull(e)) refuse(k, "unknown key with value " + show(e) + " is not supported");
  }
  auto get = [&](const char *k) -> const cJSON * {
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(root, k);
    return j;
  };
  const cJSON *j;

  /* Keys that must stay at the value that changes nothing. */
  for (const char *k : {"class_embed_type", "cross_attention_norm", "encoder_hid_dim", "encoder_hid_dim_type",
                        "num_class_embeds", "reverse_transformer_layers_per_block", "time_cond_proj_dim",
                        "time_embedding_act_fn", "timestep_post_act"})
    if ((j = get(k))) must_be_null(j, k);
  for (const char *k : {"class_embeddings_concat", "dual_cross_attention", "resnet_skip_time_act"})
    if ((j = get(k))) must_be_false(j, k);
  if ((j = get("mid_block_only_cross_attention")) && !cJSON_IsNull(j)) must_be_false(j, "mid_block_only_cross_attention");
  if ((j = get("attention_type"))) must_be_string(j, "attention_type", "default");
  if ((j = get("resnet_time_scale_shift"))) must_be_string(j, "resnet_time_scale_shift", "default");
  if ((j = get("time_embedding_type"))) must_be_string(j, "time_embedding_type", "positional");
  if ((j = get("mid_block_type"))) must_be_string(j, "mid_block_type", "UNetMidBlock2DCrossAttn");
  if ((j = get("act_fn"))) {
    must_be_string(j, "act_fn", "silu", "swish");
    c->act_fn = j->valuestring;
  }
  if ((j = get("dropout"))) must_be_number(j, "dropout", 0.0);
  /* diffusers ignores resnet_out_scale_factor for these block types; refuse rather than guess. */
  if ((j = get("resnet_out_scale_factor"))) must_be_number(j, "resnet_out_scale_factor", 1.0);
  if ((j = get("addition_embed_type_num_heads"))) c->addition_embed_type_num_heads = get_int(j, "addition_embed_type_num_heads", 1);

  /* SDXL's added conditioning. diffusers reads the two widths only for text_time (or for a "projection"
   * class embedding, refused above), so without text_time they must be null. */
  if ((j = get("addition_embed_type")) && !cJSON_IsNull(j)) {
    must_be_string(j, "addition_embed_type", "text_time");
    auto width = [&](const char *k) {
      const cJSON *w = get(k);
      if (!w || cJSON_IsNull(w)) refuse(k, "is required with addition_embed_type \"text_time\"", DPOD_EINVAL);
      return get_int_in(w, k, 1, 1 << 16);
    };
    c->addition_time_embed_dim = width("addition_time_embed_dim");
    c->projection_class_embeddings_input_dim = width("projection_class_embeddings_input_dim");
    if (c->text_embeds_dim() < 1)
      refuse("projection_class_embeddings_input_dim",
             std::to_string(c->projection_class_embeddings_input_dim) + " leaves no pooled text embedding after " +
                 std::to_string(unet_num_time_ids_) + " time ids x addition_time_embed_dim " +
                 std::to_string(c->addition_time_embed_dim), DPOD_EINVAL);
  } else {
    for (const char *k : {"addition_time_embed_dim", "projection_class_embeddings_input_dim"})
      if ((j = get(k))) must_be_null(j, k);
  }

  if ((j = get("sample_size")) && !cJSON_IsNull(j)) {
    if (cJSON_IsArray(j)) refuse("sample_size", "non-square sample sizes are not supported: " + show(j));
    c->sample_size = get_int(j, "sample_size", 1);
  }
  if ((j = get("in_channels"))) c->in_channels = get_int(j, "in_channels", 1);
  if ((j = get("out_channels"))) c->out_channels = get_int(j, "out_channels", 1);
  if ((j = get("center_input_sample"))) c->center_input_sample = get_bool(j, "center_input_sample");
  if ((j = get("flip_sin_to_cos"))) c->flip_sin_to_cos = get_bool(j, "flip_sin_to_cos");
  if ((j = get("freq_shift"))) c->freq_shift = get_num(j, "freq_shift");
  if ((j = get("use_linear_projection"))) c->use_linear_projection = get_bool(j, "use_linear_projection");
  /* Upcasting changes nothing in float32; null (SDXL base's value) is diffusers' false. */
  if ((j = get("upcast_attention"))) {
    c->upcast_attention_is_null = cJSON_IsNull(j);
    c->upcast_attention = !c->upcast_attention_is_null && get_bool(j, "upcast_attention");
  }
  if ((j = get("downsample_padding"))) c->downsample_padding = get_int(j, "downsample_padding", 0);
  if ((j = get("mid_block_scale_factor"))) {
    c->mid_block_scale_factor = get_num(j, "mid_block_scale_factor");
    if (c->mid_block_scale_factor == 0) refuse("mid_block_scale_factor", "must not be 0", DPOD_EINVAL);
  }
  if ((j = get("norm_num_groups"))) {
    if (cJSON_IsNull(j)) refuse("norm_num_groups", "null (no normalisation) is not supported");
    c->norm_num_groups = get_int(j, "norm_num_groups", 1);
  }
  if ((j = get("norm_eps"))) c->norm_eps = get_num(j, "norm_eps");
  if ((j = get("time_embedding_dim")) && !cJSON_IsNull(j)) c->time_embedding_dim = get_int(j, "time_embedding_dim", 1);
  for (const char *k : {"conv_in_kernel", "conv_out_kernel"}) {
    if ((j = get(k))) {
      int v = get_int(j, k, 1);
      if (v % 2 == 0) refuse(k, "even kernel sizes are not supported: " + show(j));
      (std::strcmp(k, "conv_in_kernel") == 0 ? c->conv_in_kernel : c->conv_out_kernel) = v;
    }
  }

  /* The block structure. */
  std::vector<std::string> down = {"CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"};
  std::vector<std::string> up = {"UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"};
  auto string_list = [&](const char *k, std::vector<std::string> *out) {
    if (!(j = get(k))) return;
    if (!cJSON_IsArray(j) || !j->child) refuse(k, "expected a non-empty list of block types, got " + show(j), DPOD_EINVAL);
    out->clear();
    for (const cJSON *e = j->child; e; e = e->next) {
      if (!cJSON_IsString(e)) refuse(k, "expected block type names, got " + show(e), DPOD_EINVAL);
      out->push_back(e->valuestring);
    }
  };
  string_list("down_block_types", &down);
  string_list("up_block_types", &up);
  for (auto &s : down) {
    if (s != "CrossAttnDownBlock2D" && s != "DownBlock2D")
      refuse("down_block_types", "block type \"" + s + "\" is not supported (only CrossAttnDownBlock2D, DownBlock2D)");
    c->down_cross.push_back(s == "CrossAttnDownBlock2D");
  }
  for (auto &s : up) {
    if (s != "CrossAttnUpBlock2D" && s != "UpBlock2D")
      refuse("up_block_types", "block type \"" + s + "\" is not supported (only UpBlock2D, CrossAttnUpBlock2D)");
    c->up_cross.push_back(s == "CrossAttnUpBlock2D");
  }
  size_t nb = down.size();
  c->block_out_channels = {320, 640, 1280, 1280};
  if ((j = get("block_out_channels"))) {
    if (!cJSON_IsArray(j)) refuse("block_out_channels", "expected a list, got " + show(j), DPOD_EINVAL);
    c->block_out_channels.clear();
    for (const cJSON *e = j->child; e; e = e->next) c->block_out_channels.push_back(get_int(e, "block_out_channels", 1));
  }
  if (c->block_out_channels.size() != nb)
    refuse("block_out_channels", "has " + std::to_string(c->block_out_channels.size()) + " entries but down_block_types has " +
                                     std::to_string(nb), DPOD_EINVAL);
  if (up.size() != nb)
    refuse("up_block_types", "has " + std::to_string(up.size()) + " entries but down_block_types has " + std::to_string(nb),
           DPOD_EINVAL);

  const cJSON *dflt_layers = cJSON_CreateNumber(2);
  const cJSON *dflt_one = cJSON_CreateNumber(1);
  const cJSON *dflt_cad = cJSON_CreateNumber(1280);
  const cJSON *dflt_heads = cJSON_CreateNumber(8);
  struct guard {
    std::vector<const cJSON *> v;
    ~guard() {
      for (auto p : v) cJSON_Delete((cJSON *)p);
    }
  } g{{dflt_layers, dflt_one, dflt_cad, dflt_heads}};

  c->layers_per_block = get_per_block((j = get("layers_per_block")) ? j : dflt_layers, "layers_per_block", nb, 1,
                                      &c->layers_per_block_is_list);
  c->transformer_layers_per_block =
      get_per_block((j = get("transformer_layers_per_block")) ? j : dflt_one, "transformer_layers_per_block", nb, 1,
                    &c->transformer_layers_is_list);
  c->cross_attention_dim = get_per_block((j = get("cross_attention_dim")) ? j : dflt_cad, "cross_attention_dim", nb, 1,
                                         &c->cross_attention_dim_is_list);
  /* diffusers: num_attention_heads = num_attention_heads or attention_head_dim; both count heads. */
  const cJSON *nah = get("num_attention_heads");
  if (nah && !cJSON_IsNull(nah)) {
    c->heads = get_per_block(nah, "num_attention_heads", nb, 1, &c->heads_is_list);
  } else {
    const cJSON *ahd = get("attention_head_dim");
    if (ahd && cJSON_IsNull(ahd)) refuse("attention_head_dim", "null is not supported");
    c->heads = get_per_block(ahd ? ahd : dflt_heads, "attention_head_dim", nb, 1, &c->heads_is_list);
  }

  if ((j = get("only_cross_attention"))) {
    if (cJSON_IsArray(j)) {
      for (const cJSON *e = j->child; e; e = e->next) must_be_false(e, "only_cross_attention");
    } else {
      must_be_false(j, "only_cross_attention");
    }
  }

  /* Consistency: group norms must divide channels, heads must divide the attention width. */
  for (size_t i = 0; i < nb; i++) {
    int ch = c->block_out_channels[i];
    if (ch % c->norm_num_groups)
      refuse("norm_num_groups", std::to_string(c->norm_num_groups) + " groups do not divide block_out_channels[" +
                                    std::to_string(i) + "] = " + std::to_string(ch), DPOD_EINVAL);
    if (ch % c->heads[i])
      refuse(nah && !cJSON_IsNull(nah) ? "num_attention_heads" : "attention_head_dim",
             std::to_string(c->heads[i]) + " heads do not divide " + std::to_string(ch) + " channels of block " +
                 std::to_string(i), DPOD_EINVAL);
  }
  /* Up block i uses the reversed per-block entries (layout of diffusers' reversed_* lists). */
  for (size_t i = 0; i < nb; i++) {
    size_t r = nb - 1 - i;
    if (c->block_out_channels[r] % c->heads[r])
      refuse("attention_head_dim", "heads do not divide the channels of up block " + std::to_string(i), DPOD_EINVAL);
  }
  if (c->in_channels <= 0 || c->out_channels <= 0) refuse("in_channels", "must be positive", DPOD_EINVAL);
}

void add_per_block(cJSON *o, const char *k, const std::vector<int> &v, bool is_list) {
  if (is_list) {
    cJSON *a = cJSON_AddArrayToObject(o, k);
    for (int x : v) cJSON_AddItemToArray(a, cJSON_CreateNumber(x));
  } else {
    cJSON_AddNumberToObject(o, k, v[0]);
  }
}

}  // namespace

int unet_config_parse_(const char *json, unet_config_ *c, std::string *err) {
  cJSON *root = cJSON_Parse(json);
  if (!root) {
    /* Where, never what: the file may be anything its owner can read. */
    *err = "config is not valid JSON";
    const char *at = cJSON_GetErrorPtr();
    if (at && at >= json) {
      size_t line = 1;
      for (const char *p = json; p < at; p++) line += *p == '\n';
      *err += " (at line " + std::to_string(line) + ", byte " + std::to_string((size_t)(at - json)) + ")";
    }
    return DPOD_EFORMAT;
  }
  int rc = 0;
  try {
    *c = unet_config_{};
    parse(root, c);
  } catch (const parse_error &e) {
    *err = e.msg;
    rc = e.status;
  } catch (const std::exception &e) {
    *err = std::string("config: ") + e.what();
    rc = DPOD_ENOMEM;
  }
  cJSON_Delete(root);
  return rc;
}

std::string unet_config_to_json_(const unet_config_ &c) {
  /* Keys in sorted order, as diffusers writes them. */
  cJSON *o = cJSON_CreateObject();
  cJSON_AddStringToObject(o, "_class_name", "UNet2DConditionModel");
  cJSON_AddStringToObject(o, "_diffusers_version", "0.31.0");
  cJSON_AddStringToObject(o, "act_fn", c.act_fn.c_str());
  /* A positive size, or null for 0. */
  auto add_or_null = [&](const char *k, int v) {
    if (v > 0) cJSON_AddNumberToObject(o, k, v);
    else cJSON_AddNullToObject(o, k);
  };
  if (c.text_time()) cJSON_AddStringToObject(o, "addition_embed_type", "text_time");
  else cJSON_AddNullToObject(o, "addition_embed_type");
  cJSON_AddNumberToObject(o, "addition_embed_type_num_heads", c.addition_embed_type_num_heads);
  add_or_null("addition_time_embed_dim", c.addition_time_embed_dim);
  add_per_block(o, "attention_head_dim", c.heads, c.heads_is_list);
  cJSON_AddStringToObject(o, "attention_type", "default");
  add_per_block(o, "block_out_channels", c.block_out_channels, true);
  cJSON_AddBoolToObject(o, "center_input_sample", c.center_input_sample);
  cJSON_AddNullToObject(o, "class_embed_type");
  cJSON_AddFalseToObject(o, "class_embeddings_concat");
  cJSON_AddNumberToObject(o, "conv_in_kernel", c.conv_in_kernel);
  cJSON_AddNumberToObject(o, "conv_out_kernel", c.conv_out_kernel);
  add_per_block(o, "cross_attention_dim", c.cross_attention_dim, c.cross_attention_dim_is_list);
  cJSON_AddNullToObject(o, "cross_attention_norm");
  cJSON *down = cJSON_AddArrayToObject(o, "down_block_types");
  for (bool x : c.down_cross) cJSON_AddItemToArray(down, cJSON_CreateString(x ? "CrossAttnDownBlock2D" : "DownBlock2D"));
  cJSON_AddNumberToObject(o, "downsample_padding", c.downsample_padding);
  cJSON_AddNumberToObject(o, "dropout", 0.0);
  cJSON_AddFalseToObject(o, "dual_cross_attention");
  cJSON_AddNullToObject(o, "encoder_hid_dim");
  cJSON_AddNullToObject(o, "encoder_hid_dim_type");
  cJSON_AddBoolToObject(o, "flip_sin_to_cos", c.flip_sin_to_cos);
  cJSON_AddNumberToObject(o, "freq_shift", c.freq_shift);
  cJSON_AddNumberToObject(o, "in_channels", c.in_channels);
  add_per_block(o, "layers_per_block", c.layers_per_block, c.layers_per_block_is_list);
  cJSON_AddNullToObject(o, "mid_block_only_cross_attention");
  cJSON_AddNumberToObject(o, "mid_block_scale_factor", c.mid_block_scale_factor);
  cJSON_AddStringToObject(o, "mid_block_type", "UNetMidBlock2DCrossAttn");
  cJSON_AddNumberToObject(o, "norm_eps", c.norm_eps);
  cJSON_AddNumberToObject(o, "norm_num_groups", c.norm_num_groups);
  /* diffusers refuses a non-null num_attention_heads; the head counts live in attention_head_dim. */
  cJSON_AddNullToObject(o, "num_attention_heads");
  cJSON_AddNullToObject(o, "num_class_embeds");
  cJSON_AddFalseToObject(o, "only_cross_attention");
  cJSON_AddNumberToObject(o, "out_channels", c.out_channels);
  add_or_null("projection_class_embeddings_input_dim", c.projection_class_embeddings_input_dim);
  cJSON_AddNumberToObject(o, "resnet_out_scale_factor", 1.0);
  cJSON_AddFalseToObject(o, "resnet_skip_time_act");
  cJSON_AddStringToObject(o, "resnet_time_scale_shift", "default");
  cJSON_AddNullToObject(o, "reverse_transformer_layers_per_block");
  add_or_null("sample_size", c.sample_size);
  cJSON_AddNullToObject(o, "time_cond_proj_dim");
  cJSON_AddNullToObject(o, "time_embedding_act_fn");
  add_or_null("time_embedding_dim", c.time_embedding_dim);
  cJSON_AddStringToObject(o, "time_embedding_type", "positional");
  cJSON_AddNullToObject(o, "timestep_post_act");
  add_per_block(o, "transformer_layers_per_block", c.transformer_layers_per_block, c.transformer_layers_is_list);
  cJSON *up = cJSON_AddArrayToObject(o, "up_block_types");
  for (bool x : c.up_cross) cJSON_AddItemToArray(up, cJSON_CreateString(x ? "CrossAttnUpBlock2D" : "UpBlock2D"));
  if (c.upcast_attention_is_null) cJSON_AddNullToObject(o, "upcast_attention");
  else cJSON_AddBoolToObject(o, "upcast_attention", c.upcast_attention);
  cJSON_AddBoolToObject(o, "use_linear_projection", c.use_linear_projection);
  char *s = cJSON_Print(o);
  std::string out = s ? s : "{}";
  cJSON_free(s);
  cJSON_Delete(o);
  return out + "\n";
}
