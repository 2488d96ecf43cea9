#include "provenance.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "checkpoint.h"
#include "dpod_error.h"
#include "dpod_file.h"
#include "pb_walk.h"

#define PROVENANCE_MANIFEST "manifest.json"
#define PROVENANCE_MANIFEST_MAX ((size_t)64 << 20)

int provenance_dataset_hash(const Dpod__V1__JobSpec *spec, char *hash, size_t len, char *err, size_t errlen) {
  hash[0] = '\0';
  const char *ds = spec->data->dataset;
  if (!ds || strncmp(ds, "builtin:", 8) == 0) return 0;
  char path[4200], *text = NULL;
  size_t n = 0;
  snprintf(path, sizeof path, "%s/" PROVENANCE_MANIFEST, ds);
  int status = dpod_read_file(path, PROVENANCE_MANIFEST_MAX, &text, &n, err, errlen);
  if (status != 0) return status;
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned md_len = 0;
  if (!EVP_Digest(text, n, md, &md_len, EVP_sha256(), NULL) || len < 2 * (size_t)md_len + 1) {
    free(text);
    return dpod_errf(err, errlen, DPOD_EINTERNAL, "%s: cannot compute its SHA-256", path);
  }
  for (unsigned i = 0; i < md_len; i++) snprintf(hash + 2 * i, 3, "%02x", md[i]);
  free(text);
  return 0;
}

/* Every field of a message, present or not (an absent one reads as its default), sub-messages as
 * objects, repeated fields as arrays, enums by name. */
static cJSON *prov_message(const ProtobufCMessage *msg);

static cJSON *prov_value(const ProtobufCFieldDescriptor *f, const void *p) {
  char text[128];
  if (f->type == PROTOBUF_C_TYPE_MESSAGE) {
    const ProtobufCMessage *m = *(ProtobufCMessage *const *)p;
    return m ? prov_message(m) : cJSON_CreateNull();
  }
  if (f->type == PROTOBUF_C_TYPE_STRING) {
    const char *s = *(char *const *)p;
    return cJSON_CreateString(s ? s : "");
  }
  if (f->type == PROTOBUF_C_TYPE_BOOL) return cJSON_CreateBool(*(const protobuf_c_boolean *)p);
  if (f->type == PROTOBUF_C_TYPE_ENUM) return cJSON_CreateString(pb_enum_name(f->descriptor, *(const int *)p, text, sizeof text));
  if (f->type == PROTOBUF_C_TYPE_DOUBLE) return isfinite(*(const double *)p) ? cJSON_CreateNumber(*(const double *)p) : cJSON_CreateNull();
  /* Integers as text when they might not survive a double (seeds are 64-bit). */
  if (pb_format_scalar(f, p, text, sizeof text) != 0) return cJSON_CreateNull();
  if (f->type == PROTOBUF_C_TYPE_UINT64 || f->type == PROTOBUF_C_TYPE_INT64) return cJSON_CreateString(text);
  return cJSON_CreateRaw(text);
}

static cJSON *prov_message(const ProtobufCMessage *msg) {
  cJSON *obj = cJSON_CreateObject();
  const ProtobufCMessageDescriptor *d = msg->descriptor;
  for (unsigned i = 0; obj && i < d->n_fields; i++) {
    const ProtobufCFieldDescriptor *f = &d->fields[i];
    if (f->type == PROTOBUF_C_TYPE_BYTES) continue;
    if (f->label == PROTOBUF_C_LABEL_REPEATED) {
      cJSON *a = cJSON_AddArrayToObject(obj, f->name);
      for (size_t k = 0, n = pb_count(msg, f); a && k < n; k++) cJSON_AddItemToArray(a, prov_value(f, pb_element(msg, f, k)));
    } else {
      cJSON_AddItemToObject(obj, f->name, prov_value(f, pb_member(msg, f)));
    }
  }
  return obj;
}

int provenance_write(const char *dir, uint32_t step, const Dpod__V1__JobSpec *spec, const char *dataset_hash,
                     const char *torch_version, const Dpod__V1__EvalMetrics *eval, char *err, size_t errlen) {
  cJSON *root = cJSON_CreateObject(), *ds = cJSON_CreateObject();
  int status = DPOD_ENOMEM;
  char *text = NULL;
  if (!root || !ds) goto done;
  cJSON_AddStringToObject(root, "format", "dpod-provenance");
  cJSON_AddNumberToObject(root, "version", 1);
  cJSON_AddNumberToObject(root, "step", step);
  cJSON_AddStringToObject(root, "dpod_version", DPOD_VERSION_STRING);
  cJSON_AddStringToObject(root, "torch_version", torch_version ? torch_version : "");
  const Dpod__V1__DataSpec *d = spec->data;
  if (dataset_hash && *dataset_hash) {
    cJSON_AddStringToObject(ds, "path", d->dataset);
    cJSON_AddStringToObject(ds, "manifest_sha256", dataset_hash);
  } else {
    /* The built-in set is a function of these. */
    char seed[32];
    snprintf(seed, sizeof seed, "%llu", (unsigned long long)d->seed);
    cJSON_AddStringToObject(ds, "builtin", d->dataset + strlen("builtin:"));
    cJSON_AddStringToObject(ds, "seed", seed);
    cJSON_AddNumberToObject(ds, "pairs", d->pairs);
    cJSON_AddNumberToObject(ds, "prompts", d->prompts);
    cJSON_AddNumberToObject(ds, "text_len", d->text_len);
  }
  cJSON_AddItemToObject(root, "dataset", ds);
  ds = NULL;
  cJSON_AddItemToObject(root, "spec", prov_message(&spec->base));
  if (eval) {
    /* Only what was measured: an absent metric is not a zero. */
    cJSON *e = cJSON_AddObjectToObject(root, "eval");
    const ProtobufCMessageDescriptor *ed = eval->base.descriptor;
    for (unsigned i = 0; e && i < ed->n_fields; i++)
      if (pb_is_present(&eval->base, &ed->fields[i]))
        cJSON_AddItemToObject(e, ed->fields[i].name, prov_value(&ed->fields[i], pb_member(&eval->base, &ed->fields[i])));
  }
  if (!(text = cJSON_Print(root))) goto done;
  char path[4200];
  snprintf(path, sizeof path, "%s/%s", dir, CKPT_PROVENANCE);
  status = dpod_write_file_atomic(path, text, strlen(text), DPOD_WRITE_NO_DIR_SYNC, err, errlen);
done:
  if (status == DPOD_ENOMEM) dpod_errf(err, errlen, DPOD_ENOMEM, "provenance: out of memory");
  cJSON_free(text);
  cJSON_Delete(ds);
  cJSON_Delete(root);
  return status;
}
