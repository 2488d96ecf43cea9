/* Job files and --set overrides: the input is YAML, then optionally a NUL byte and `key=value` lines,
 * which are applied as dpoctl applies --set. The spec is then normalized and validated, and written back
 * as YAML, which must read back as the same spec (job_spec_write_yaml's promise); a difference aborts. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_util.h"
#include "job_spec.h"

/* The spec as a job file; caller frees. NULL if it cannot be written. */
static char *spec_yaml(const Dpod__V1__JobSpec *s, size_t *len) {
  char *text = NULL;
  FILE *out = open_memstream(&text, len);
  if (!out) return NULL;
  int rc = job_spec_write_yaml(s, out, 0);
  fclose(out);
  if (rc != 0) {
    free(text);
    return NULL;
  }
  return text;
}

/* Written, read back and written again, a spec gives the same text. (Comparing the messages themselves
 * would not do: reading sets the presence flag of every field the file names, and the file names all.) */
static void check_round_trip(const Dpod__V1__JobSpec *spec) {
  size_t len = 0, len2 = 0;
  char *text = spec_yaml(spec, &len), err[512];
  Dpod__V1__JobSpec *back = job_spec_new();
  if (text && back) {
    if (job_spec_parse_yaml(back, text, len, "written", err, sizeof err) != 0) {
      fprintf(stderr, "fuzz_job_spec: the written spec does not read back: %s\n%s", err, text);
      abort();
    }
    char *again = spec_yaml(back, &len2);
    if (again && (len != len2 || memcmp(text, again, len) != 0)) {
      fprintf(stderr, "fuzz_job_spec: the written spec reads back different:\n%s\n---- read back as:\n%s", text,
              again);
      abort();
    }
    free(again);
  }
  if (back) protobuf_c_message_free_unpacked(&back->base, NULL);
  free(text);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  const uint8_t *nul = memchr(data, '\0', size);
  size_t ylen = nul ? (size_t)(nul - data) : size;
  Dpod__V1__JobSpec *spec = job_spec_new();
  if (!spec) return 0;
  char err[512];
  int rc = fuzz_note("job_spec_parse_yaml", job_spec_parse_yaml(spec, (const char *)data, ylen, "input", err, sizeof err), err);
  if (rc == 0 && nul) {
    /* The overrides: one key=value per line, as `dpoctl submit --set key=value` passes them. */
    size_t rest = size - ylen - 1;
    char *sets = malloc(rest + 1);
    if (sets) {
      memcpy(sets, nul + 1, rest);
      sets[rest] = '\0';
      char *save = NULL;
      for (char *line = strtok_r(sets, "\n", &save); line && rc == 0; line = strtok_r(NULL, "\n", &save)) {
        char *eq = strchr(line, '=');
        if (!eq) continue;
        *eq = '\0';
        rc = fuzz_note("job_spec_set", job_spec_set(spec, line, eq + 1, err, sizeof err), err);
      }
      free(sets);
    }
  }
  if (rc == 0 && job_spec_normalize(spec) == 0) {
    fuzz_note("job_spec_validate", job_spec_validate(spec, 8, err, sizeof err), err);
    check_round_trip(spec);
  }
  protobuf_c_message_free_unpacked(&spec->base, NULL);
  return 0;
}
