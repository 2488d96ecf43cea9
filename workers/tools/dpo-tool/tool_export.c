/* dpo-tool export: a checkpoint (or any model folder) as a diffusers UNet folder. See model_dir.h. */
#include <getopt.h>
#include <stdio.h>
#include <string.h>

#include "model_dir.h"
#include "tool_data.h"

int tool_export_main(int argc, char **argv) {
  enum { O_VARIANT = 1, O_PIPELINE };
  static const struct option opts[] = {{"variant", required_argument, NULL, O_VARIANT},
                                       {"pipeline", no_argument, NULL, O_PIPELINE},
                                       {"help", no_argument, NULL, 'h'},
                                       {NULL, 0, NULL, 0}};
  model_export_params p = model_export_default_params();
  optind = 0; /* a full reset of GNU getopt, as in the other subcommands */
  int c;
  while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
    switch (c) {
      case O_VARIANT: p.variant = optarg; break;
      case O_PIPELINE: p.pipeline = 1; break;
      case 'h': printf("usage: dpo-tool export %s\n", TOOL_EXPORT_ARGS); return 0;
      default: fprintf(stderr, "usage: dpo-tool export %s\n", TOOL_EXPORT_ARGS); return 2;
    }
  }
  if (argc - optind != 2) {
    fprintf(stderr, "usage: dpo-tool export %s\n", TOOL_EXPORT_ARGS);
    return 2;
  }
  if (*p.variant && strcmp(p.variant, "fp16") != 0) {
    fprintf(stderr, "dpo-tool export: --variant wants fp16, got '%s'\n", p.variant);
    return 2;
  }
  char err[2048], unet_dir[MODEL_PATH_MAX];
  if (model_export(argv[optind], argv[optind + 1], &p, unet_dir, err, sizeof err) != 0) {
    fprintf(stderr, "dpo-tool export: %s\n", err);
    return 1;
  }
  printf("wrote %s (UNet2DConditionModel.from_pretrained(\"%s\"%s%s))\n", unet_dir, p.pipeline ? argv[optind + 1] : unet_dir,
         p.pipeline ? ", subfolder=\"unet\"" : "", *p.variant ? ", variant=\"fp16\"" : "");
  return 0;
}
