#include "json_num.h"

int dpo_json_uint(const cJSON *j, uint64_t max, uint64_t *out) {
  if (!cJSON_IsNumber(j)) return -1;
  double d = j->valuedouble;
  if (!(d >= 0) || d > 9007199254740992.0 || d != (double)(uint64_t)d || (uint64_t)d > max) return -1;
  *out = (uint64_t)d;
  return 0;
}
