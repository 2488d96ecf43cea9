/* dpo-tool: the offline companion of dpo-worker.
 *
 *   dpo-tool inspect FILE.safetensors
 *   dpo-tool forward --config C --weights W [--lora L] --inputs I --out O [--threads N]
 *   dpo-tool merge-lora BASE LORA OUT [--config C]   (tool_lora.h)
 *   dpo-tool diff A.safetensors B.safetensors [--atol X]
 *   dpo-tool import | synth | sample ...   (preference datasets and sampling: tool_data.h)
 *
 * One function per subcommand, registered in `commands` below; each parses its own options, prints its
 * own usage and returns a process exit status. Errors go to stderr prefixed with the subcommand. */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "blas_select.h"
#include "dpod_file.h"
#include "dpod_error.h"
#include "model_unet.h"
#include "safetensors.h"
#include "tool_data.h"
#include "tool_lora.h"
#include "unet_shim.h"

typedef struct {
  const char *name;
  int (*run)(int argc, char **argv);
  const char *args;
  const char *summary;
} dpo_tool_command;

static int cmd_inspect(int argc, char **argv);
static int cmd_forward(int argc, char **argv);
static int cmd_diff(int argc, char **argv);

static const dpo_tool_command commands[] = {
    {"inspect", cmd_inspect, "FILE.safetensors",
     "list tensors (name, dtype, shape), the parameter count and the header metadata"},
    {"forward", cmd_forward, "[--config C] --weights FILE|INDEX|FOLDER [--lora L] --inputs I --out O [--threads N]",
     "run the UNet (with L's LoRA adapters) on I's `sample`, `timestep`, `encoder_hidden_states` (SDXL: +`text_embeds`, "
     "`time_ids`); write O"},
    {"diff", cmd_diff, "A.safetensors B.safetensors [--atol X]",
     "largest absolute difference per tensor; exit 1 if names or shapes differ or a difference > X (0)"},
    {"import", tool_import_main, TOOL_IMPORT_ARGS, TOOL_IMPORT_SUMMARY},
    {"synth", tool_synth_main, TOOL_SYNTH_ARGS, TOOL_SYNTH_SUMMARY},
    {"sample", tool_sample_main, TOOL_SAMPLE_ARGS, TOOL_SAMPLE_SUMMARY},
    {"merge-lora", tool_merge_lora_main, TOOL_MERGE_LORA_ARGS, TOOL_MERGE_LORA_SUMMARY},
    {"export", tool_export_main, TOOL_EXPORT_ARGS, TOOL_EXPORT_SUMMARY},
};
#define NCOMMANDS (sizeof commands / sizeof commands[0])

static void usage(FILE *out) {
  fprintf(out, "usage: dpo-tool COMMAND [ARGS]\n\ncommands:\n");
  for (size_t i = 0; i < NCOMMANDS; i++)
    fprintf(out, "  %-8s %s\n           %s\n", commands[i].name, commands[i].args, commands[i].summary);
  fprintf(out, "\n`dpo-tool COMMAND --help` describes one command; `dpo-tool --version` prints the version.\n");
}

static void command_usage(const dpo_tool_command *c, FILE *out) {
  fprintf(out, "usage: dpo-tool %s %s\n  %s\n", c->name, c->args, c->summary);
}

/* The text of a config file the user named, or NULL after saying why. */
static char *read_text(const char *path, const char *what) {
  char *text = NULL, err[1024];
  if (dpod_read_file(path, 1 << 20, &text, NULL, err, sizeof err) != 0) {
    fprintf(stderr, "dpo-tool: %s %s\n", what, err);
    return NULL;
  }
  return text;
}

static void print_shape(FILE *out, const int64_t *shape, int ndim) {
  fputc('[', out);
  for (int i = 0; i < ndim; i++) fprintf(out, "%s%lld", i ? ", " : "", (long long)shape[i]);
  fputc(']', out);
}

/* ---- inspect ---- */

static int cmd_inspect(int argc, char **argv) {
  const dpo_tool_command *self = &commands[0];
  if (argc != 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
    command_usage(self, argc == 2 ? stdout : stderr);
    return argc == 2 ? 0 : 2;
  }
  char err[1024];
  st_file *f = NULL;
  int rc = st_open(argv[1], &f, err, sizeof err);
  if (rc != 0) {
    fprintf(stderr, "dpo-tool inspect: %s (%s)\n", err, dpod_err_name(rc));
    return 1;
  }
  uint64_t params = 0, bytes = 0;
  for (size_t i = 0; i < st_count(f); i++) {
    const st_tensor *t = st_at(f, i);
    printf("%-72s %-5s ", t->name, st_dtype_name(t->dtype));
    print_shape(stdout, t->shape, t->ndim);
    printf("\n");
    params += (uint64_t)t->numel;
    bytes += t->nbytes;
  }
  printf("%zu tensors, %llu parameters, %llu bytes of data\n", st_count(f), (unsigned long long)params,
         (unsigned long long)bytes);
  for (size_t i = 0; i < st_metadata_count(f); i++) {
    const char *k, *v;
    st_metadata_at(f, i, &k, &v);
    printf("metadata %s = %s\n", k, v);
  }
  st_close(f);
  return 0;
}

/* ---- forward ---- */

/* A float32 copy of tensor `name`, checked to have `ndim` dimensions. */
static float *input_f32(const st_file *f, const char *path, const char *name, int ndim, const st_tensor **out) {
  const st_tensor *t = st_find(f, name);
  if (!t) {
    fprintf(stderr, "dpo-tool forward: %s has no tensor '%s'\n", path, name);
    return NULL;
  }
  if (t->ndim != ndim) {
    fprintf(stderr, "dpo-tool forward: %s: '%s' has %d dimensions, expected %d\n", path, name, t->ndim, ndim);
    return NULL;
  }
  if (t->dtype == ST_BOOL || (t->dtype != ST_F32 && t->dtype != ST_F16 && t->dtype != ST_BF16 && t->dtype != ST_F64 &&
                              t->dtype != ST_I64 && t->dtype != ST_I32)) {
    fprintf(stderr, "dpo-tool forward: %s: '%s' has unsupported dtype %s\n", path, name, st_dtype_name(t->dtype));
    return NULL;
  }
  float *v = malloc((size_t)(t->numel ? t->numel : 1) * sizeof(float));
  if (!v || st_to_f32(t, v) != 0) {
    free(v);
    fprintf(stderr, "dpo-tool forward: out of memory converting '%s'\n", name);
    return NULL;
  }
  *out = t;
  return v;
}

/* SDXL's added conditioning from the inputs file: `name` must be [n, cols]. NULL after saying why, naming
 * the tensor and what the config needs. */
static float *added_input_f32(const st_file *f, const char *path, const char *name, int64_t n, int64_t cols,
                              const unet_info *info) {
  const st_tensor *t;
  if (!st_find(f, name)) {
    fprintf(stderr,
            "dpo-tool forward: %s has no tensor '%s': this config has SDXL's added conditioning "
            "(addition_embed_type \"text_time\"), which needs 'text_embeds' [n, %d] and 'time_ids' [n, %d]\n",
            path, name, info->text_embeds_dim, info->num_time_ids);
    return NULL;
  }
  float *v = input_f32(f, path, name, 2, &t);
  if (v && (t->shape[0] != n || t->shape[1] != cols)) {
    fprintf(stderr, "dpo-tool forward: %s: '%s' is ", path, name);
    print_shape(stderr, t->shape, 2);
    fprintf(stderr, ", expected [%lld, %lld]\n", (long long)n, (long long)cols);
    free(v);
    return NULL;
  }
  return v;
}

static int cmd_forward(int argc, char **argv) {
  const dpo_tool_command *self = &commands[1];
  static const struct option opts[] = {
      {"config", required_argument, NULL, 'c'}, {"weights", required_argument, NULL, 'w'},
      {"inputs", required_argument, NULL, 'i'}, {"out", required_argument, NULL, 'o'},
      {"threads", required_argument, NULL, 't'}, {"help", no_argument, NULL, 'h'},
      {"lora", required_argument, NULL, 'l'},     {NULL, 0, NULL, 0},
  };
  const char *config = NULL, *weights = NULL, *inputs = NULL, *outp = NULL, *lora = NULL;
  int threads = 0;
  optind = 1;
  int c;
  while ((c = getopt_long(argc, argv, "c:w:i:o:t:l:h", opts, NULL)) != -1) {
    switch (c) {
      case 'l': lora = optarg; break;
      case 'c': config = optarg; break;
      case 'w': weights = optarg; break;
      case 'i': inputs = optarg; break;
      case 'o': outp = optarg; break;
      case 't': {
        char *end;
        long v = strtol(optarg, &end, 10);
        if (*end || v < 0 || v > 1024) {
          fprintf(stderr, "dpo-tool forward: --threads wants a count, got '%s'\n", optarg);
          return 2;
        }
        threads = (int)v;
        break;
      }
      case 'h': command_usage(self, stdout); return 0;
      default: command_usage(self, stderr); return 2;
    }
  }
  if (optind != argc || !weights || !inputs || !outp) {
    if (optind != argc) fprintf(stderr, "dpo-tool forward: unexpected argument '%s'\n", argv[optind]);
    else fprintf(stderr, "dpo-tool forward: --weights, --inputs and --out are required\n");
    command_usage(self, stderr);
    return 2;
  }

  int status = 1, rc;
  char err[2048];
  char *cfg = NULL;
  unet_t m = NULL;
  st_file *in = NULL;
  float *x = NULL, *t = NULL, *e = NULL, *y = NULL, *text_embeds = NULL, *time_ids = NULL;
  st_writer *w = NULL;

  /* --weights: a file, a sharded checkpoint's index or a model folder, whose config.json stands in for
   * --config (and must agree with it when both are given). */
  model_source src;
  if ((rc = model_source_resolve("--weights", weights, "", &src, err, sizeof err)) != 0) {
    fprintf(stderr, "dpo-tool forward: %s\n", err);
    goto fail;
  }
  if (!config && !*src.config) {
    fprintf(stderr, "dpo-tool forward: --config is required when --weights is a file\n");
    goto fail;
  }
  if (!(cfg = read_text(config ? config : src.config, "config"))) goto fail;
  if (config && *src.config) {
    char *folder_cfg = read_text(src.config, "config");
    rc = folder_cfg ? model_config_agree(cfg, config, folder_cfg, src.config, err, sizeof err) : DPOD_EIO;
    free(folder_cfg);
    if (rc != 0) {
      if (rc != DPOD_EIO) fprintf(stderr, "dpo-tool forward: %s\n", err);
      goto fail;
    }
  }
  unet_params p = unet_default_params();
  p.threads = threads;
  rc = unet_create(cfg, &p, &m, err, sizeof err);
  if (rc != 0) {
    fprintf(stderr, "dpo-tool forward: %s: %s (%s)\n", config ? config : src.config, err, dpod_err_name(rc));
    goto fail;
  }
  if ((rc = model_unet_load(m, &src, err, sizeof err)) != 0) {
    fprintf(stderr, "dpo-tool forward: %s (%s)\n", err, dpod_err_name(rc));
    goto fail;
  }
  if (lora && tool_lora_attach(m, lora, "dpo-tool forward") != 0) goto fail;
  if ((rc = st_open(inputs, &in, err, sizeof err)) != 0) {
    fprintf(stderr, "dpo-tool forward: %s (%s)\n", err, dpod_err_name(rc));
    goto fail;
  }
  const st_tensor *ts, *tt, *te;
  if (!(x = input_f32(in, inputs, "sample", 4, &ts))) goto fail;
  if (!(t = input_f32(in, inputs, "timestep", 1, &tt))) goto fail;
  if (!(e = input_f32(in, inputs, "encoder_hidden_states", 3, &te))) goto fail;
  unet_info info;
  unet_get_info(m, &info);
  int64_t n = ts->shape[0], h = ts->shape[2], wd = ts->shape[3], L = te->shape[1];
  if (ts->shape[1] != info.in_channels || n <= 0 || h <= 0 || wd <= 0 || n > 1 << 20 || h > 1 << 16 || wd > 1 << 16) {
    fprintf(stderr, "dpo-tool forward: %s: 'sample' is ", inputs);
    print_shape(stderr, ts->shape, 4);
    fprintf(stderr, ", expected [n, %d, H, W]\n", info.in_channels);
    goto fail;
  }
  if (tt->shape[0] != n) {
    fprintf(stderr, "dpo-tool forward: %s: 'timestep' has %lld entries for %lld samples\n", inputs,
            (long long)tt->shape[0], (long long)n);
    goto fail;
  }
  if (te->shape[0] != n || te->shape[2] != info.cross_attention_dim || L <= 0 || L > 1 << 20) {
    fprintf(stderr, "dpo-tool forward: %s: 'encoder_hidden_states' is ", inputs);
    print_shape(stderr, te->shape, 3);
    fprintf(stderr, ", expected [%lld, L, %d]\n", (long long)n, info.cross_attention_dim);
    goto fail;
  }
  unet_added_cond added = {NULL, NULL};
  if (info.text_embeds_dim > 0) {
    if (!(text_embeds = added_input_f32(in, inputs, "text_embeds", n, info.text_embeds_dim, &info))) goto fail;
    if (!(time_ids = added_input_f32(in, inputs, "time_ids", n, info.num_time_ids, &info))) goto fail;
    added.text_embeds = text_embeds;
    added.time_ids = time_ids;
  }
  size_t ny = (size_t)n * (size_t)info.out_channels * (size_t)h * (size_t)wd;
  if (!(y = malloc(ny * sizeof(float)))) {
    fprintf(stderr, "dpo-tool forward: out of memory\n");
    goto fail;
  }
  if ((rc = unet_forward_added(m, (int)n, (int)h, (int)wd, (int)L, x, t, e, &added, y)) != 0) {
    fprintf(stderr, "dpo-tool forward: %s (%s)\n", unet_last_error(m), dpod_err_name(rc));
    goto fail;
  }
  int64_t yshape[4] = {n, info.out_channels, h, wd};
  if (!(w = st_writer_new()) || st_writer_add(w, "sample", ST_F32, 4, yshape, y) != 0) {
    fprintf(stderr, "dpo-tool forward: out of memory\n");
    goto fail;
  }
  if ((rc = st_writer_write(w, outp, NULL, err, sizeof err)) != 0) {
    fprintf(stderr, "dpo-tool forward: %s (%s)\n", err, dpod_err_name(rc));
    goto fail;
  }
  status = 0;

fail:
  st_writer_free(w);
  free(x);
  free(t);
  free(e);
  free(y);
  free(text_embeds);
  free(time_ids);
  st_close(in);
  unet_free(m);
  free(cfg);
  return status;
}

/* ---- diff ---- */

/* Compares two weight files tensor by tensor, e.g. the checkpoints of two runs that should agree. */
static int cmd_diff(int argc, char **argv) {
  const dpo_tool_command *self = &commands[2];
  const char *paths[2] = {NULL, NULL};
  double atol = 0;
  int n = 0;
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
      command_usage(self, stdout);
      return 0;
    } else if (strcmp(argv[i], "--atol") == 0 && i + 1 < argc) {
      char *end;
      atol = strtod(argv[++i], &end);
      if (*end || !(atol >= 0)) {
        fprintf(stderr, "dpo-tool diff: --atol wants a number >= 0, got '%s'\n", argv[i]);
        return 2;
      }
    } else if (n < 2) {
      paths[n++] = argv[i];
    } else {
      command_usage(self, stderr);
      return 2;
    }
  }
  if (n != 2) {
    command_usage(self, stderr);
    return 2;
  }
  char err[1024];
  st_file *f[2] = {NULL, NULL};
  int status = 1;
  float *a = NULL, *b = NULL;
  for (int k = 0; k < 2; k++) {
    int rc = st_open(paths[k], &f[k], err, sizeof err);
    if (rc != 0) {
      fprintf(stderr, "dpo-tool diff: %s (%s)\n", err, dpod_err_name(rc));
      goto done;
    }
  }
  if (st_count(f[0]) != st_count(f[1])) {
    fprintf(stderr, "dpo-tool diff: %s holds %zu tensors, %s %zu\n", paths[0], st_count(f[0]), paths[1], st_count(f[1]));
    goto done;
  }
  double worst = 0;
  const char *worst_name = "";
  for (size_t i = 0; i < st_count(f[0]); i++) {
    const st_tensor *ta = st_at(f[0], i), *tb = st_find(f[1], ta->name);
    if (!tb) {
      fprintf(stderr, "dpo-tool diff: %s has no tensor '%s'\n", paths[1], ta->name);
      goto done;
    }
    if (ta->ndim != tb->ndim || memcmp(ta->shape, tb->shape, sizeof(int64_t) * (size_t)ta->ndim) != 0) {
      fprintf(stderr, "dpo-tool diff: '%s' has different shapes\n", ta->name);
      goto done;
    }
    free(a);
    free(b);
    a = malloc(sizeof(float) * (size_t)(ta->numel ? ta->numel : 1));
    b = malloc(sizeof(float) * (size_t)(ta->numel ? ta->numel : 1));
    if (!a || !b || st_to_f32(ta, a) != 0 || st_to_f32(tb, b) != 0) {
      fprintf(stderr, "dpo-tool diff: cannot read '%s' as numbers\n", ta->name);
      goto done;
    }
    double d = 0;
    for (int64_t j = 0; j < ta->numel; j++) {
      double x = fabs((double)a[j] - (double)b[j]);
      if (!(x <= d)) d = x; /* NaN counts as the largest difference */
    }
    if (!(d <= worst)) {
      worst = d;
      worst_name = ta->name;
    }
  }
  printf("%zu tensors; largest absolute difference %.3g (%s)\n", st_count(f[0]), worst, *worst_name ? worst_name : "-");
  status = worst <= atol ? 0 : 1;
done:
  free(a);
  free(b);
  st_close(f[0]);
  st_close(f[1]);
  return status;
}

int main(int argc, char **argv) {
  /* Only the commands that run the UNet need fast sgemm; the rest do not pay for a re-exec. */
  if (argc > 1 && (strcmp(argv[1], "forward") == 0 || strcmp(argv[1], "sample") == 0)) blas_select_kernels(argv, 0);
  if (argc == 2 && strcmp(argv[1], "--version") == 0) {
    printf("dpo-tool %s\n", DPOD_VERSION_STRING);
    return 0;
  }
  if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "help") == 0) {
    usage(argc < 2 ? stderr : stdout);
    return argc < 2 ? 2 : 0;
  }
  for (size_t i = 0; i < NCOMMANDS; i++)
    if (strcmp(argv[1], commands[i].name) == 0) return commands[i].run(argc - 1, argv + 1);
  fprintf(stderr, "dpo-tool: unknown command '%s'\n\n", argv[1]);
  usage(stderr);
  return 2;
}
