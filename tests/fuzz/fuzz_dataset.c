/* The preference dataset opener: the input is split into a dataset directory's files (fuzz_util.h):
 * manifest.json, then four shards the manifest may name (a.safetensors ... d.safetensors; the seeds use
 * a for the prompt table and b for the train split). What dataset_open() accepts is then read in full
 * through the copy functions, which must stay inside the mapped shards. */
#include <stdint.h>
#include <stdlib.h>

#include "dataset.h"
#include "fuzz_util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static const char *const names[] = {"manifest.json", "a.safetensors", "b.safetensors", "c.safetensors",
                                      "d.safetensors"};
  const char *dir = fuzz_scratch_dir();
  fuzz_clear_dir(dir);
  fuzz_write_parts(dir, data, size, names, sizeof names / sizeof names[0]);
  dataset_open_params p = dataset_open_default_params();
  dpo_dataset ds;
  char err[1024];
  if (fuzz_note("dataset_open", dataset_open(dir, &p, &ds, err, sizeof err), err) != 0) return 0;
  float *w = malloc(dataset_image_size(&ds) * sizeof(float));
  float *l = malloc(dataset_image_size(&ds) * sizeof(float));
  float *e = malloc(dataset_prompt_size(&ds) * sizeof(float));
  if (w && l && e) {
    for (size_t i = 0; i < ds.num_pairs; i++) {
      dataset_copy_pair(&ds, i, w, l);
      if (dataset_prompt_index(&ds, i) >= ds.num_prompts) abort();
      dataset_copy_prompt(&ds, i, e);
    }
    dataset_copy_empty_prompt(&ds, e);
  }
  free(w);
  free(l);
  free(e);
  dataset_free(&ds);
  return 0;
}
