/* The safetensors reader: st_open() over the input as a file, then every accessor over what it accepted,
 * converting each tensor to float32 (what the worker does with weights), so that a tensor whose bytes do
 * not match its dtype and shape shows up as an out-of-bounds read. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "fuzz_util.h"
#include "safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  const char *dir = fuzz_scratch_dir();
  fuzz_write_file(dir, "input.safetensors", data, size);
  char path[4200], err[512];
  snprintf(path, sizeof path, "%s/input.safetensors", dir);
  st_file *f;
  if (fuzz_note("st_open", st_open(path, &f, err, sizeof err), err) != 0) return 0;
  for (size_t i = 0; i < st_count(f); i++) {
    const st_tensor *t = st_at(f, i);
    if (st_find(f, t->name) != t) abort(); /* names are unique, so the lookup finds this one */
    float *out = malloc(t->numel ? (size_t)t->numel * sizeof(float) : 1);
    if (out) st_to_f32(t, out);
    free(out);
  }
  for (size_t i = 0; i < st_metadata_count(f); i++) {
    const char *k, *v;
    st_metadata_at(f, i, &k, &v);
    if (st_metadata(f, k) == NULL) abort();
  }
  st_close(f);
  return 0;
}
