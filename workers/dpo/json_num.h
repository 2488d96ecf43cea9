/* Whole numbers out of JSON (cJSON holds every number as a double): only an exact integer in range is
 * accepted, so that 1e300, -1 or 2.5 in a file never become a wrapped or truncated count. */
#ifndef DPOD_JSON_NUM_H
#define DPOD_JSON_NUM_H

#include <cjson/cJSON.h>
#include <stdint.h>

/* An integer in [0, max] (and below 2^53, where doubles stop being exact). Returns 0 or -1. */
int dpo_json_uint(const cJSON *j, uint64_t max, uint64_t *out);

#endif
