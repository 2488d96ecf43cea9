#include "pb_json.h"

#include <inttypes.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "pb_walk.h"

/* Whether field f of msg is on the wire: protobuf-c's own packing rules, which the JSON mapping
 * follows (a field is in the JSON exactly when MessageToJson, parsing the packed message, sees it). */
static int pbj_present(const ProtobufCMessage *msg, const ProtobufCFieldDescriptor *f) {
  const char *base = (const char *)msg;
  const void *member = base + f->offset;
  if (f->label == PROTOBUF_C_LABEL_REPEATED) return pb_count(msg, f) > 0;
  if (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) return *(const uint32_t *)(base + f->quantifier_offset) == f->id;
  if (f->type == PROTOBUF_C_TYPE_MESSAGE || f->type == PROTOBUF_C_TYPE_STRING) {
    const void *p = *(const void *const *)member;
    if (f->label == PROTOBUF_C_LABEL_REQUIRED) return p != NULL;
    return p != NULL && p != f->default_value;
  }
  if (f->label == PROTOBUF_C_LABEL_OPTIONAL) return *(const protobuf_c_boolean *)(base + f->quantifier_offset);
  if (f->label == PROTOBUF_C_LABEL_REQUIRED) return 1;
  /* proto3 without presence: present unless zero (empty for bytes). */
  if (f->type == PROTOBUF_C_TYPE_BYTES) return ((const ProtobufCBinaryData *)member)->len > 0;
  static const char zero[16];
  return memcmp(member, zero, pb_value_size(f)) != 0;
}

static cJSON *pbj_raw(const char *fmt_text) { return cJSON_CreateRaw(fmt_text); }

/* Shortest "%.*g" that reads back as the same value: for a double, as repr() writes it; for a float, as
 * protobuf's ToShortestFloat does (from 6 significant digits up until it reads back as the same float). */
static cJSON *pbj_number(double v, int is_float) {
  if (isnan(v)) return cJSON_CreateString("NaN");
  if (isinf(v)) return cJSON_CreateString(v > 0 ? "Infinity" : "-Infinity");
  char buf[40];
  for (int prec = is_float ? 6 : 1; prec <= 17; prec++) {
    snprintf(buf, sizeof buf, "%.*g", prec, v);
    if (is_float ? strtof(buf, NULL) == (float)v : strtod(buf, NULL) == v) break;
  }
  return pbj_raw(buf);
}

static cJSON *pbj_base64(const ProtobufCBinaryData *b) {
  static const char tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  size_t n = (b->len + 2) / 3 * 4;
  char *s = malloc(n + 1);
  if (!s) return NULL;
  size_t o = 0;
  for (size_t i = 0; i < b->len; i += 3) {
    uint32_t v = (uint32_t)b->data[i] << 16;
    if (i + 1 < b->len) v |= (uint32_t)b->data[i + 1] << 8;
    if (i + 2 < b->len) v |= b->data[i + 2];
    s[o++] = tab[v >> 18 & 63];
    s[o++] = tab[v >> 12 & 63];
    s[o++] = i + 1 < b->len ? tab[v >> 6 & 63] : '=';
    s[o++] = i + 2 < b->len ? tab[v & 63] : '=';
  }
  s[o] = '\0';
  cJSON *j = cJSON_CreateString(s);
  free(s);
  return j;
}

static cJSON *pbj_value(const ProtobufCFieldDescriptor *f, const void *p) {
  char buf[32];
  switch (f->type) {
    case PROTOBUF_C_TYPE_STRING: {
      const char *s = *(char *const *)p;
      return cJSON_CreateString(s ? s : "");
    }
    case PROTOBUF_C_TYPE_BYTES: return pbj_base64(p);
    case PROTOBUF_C_TYPE_BOOL: return cJSON_CreateBool(*(const protobuf_c_boolean *)p);
    case PROTOBUF_C_TYPE_UINT32:
    case PROTOBUF_C_TYPE_FIXED32: snprintf(buf, sizeof buf, "%" PRIu32, *(const uint32_t *)p); return pbj_raw(buf);
    case PROTOBUF_C_TYPE_INT32:
    case PROTOBUF_C_TYPE_SINT32:
    case PROTOBUF_C_TYPE_SFIXED32: snprintf(buf, sizeof buf, "%" PRId32, *(const int32_t *)p); return pbj_raw(buf);
    case PROTOBUF_C_TYPE_UINT64:
    case PROTOBUF_C_TYPE_FIXED64:
      snprintf(buf, sizeof buf, "%" PRIu64, *(const uint64_t *)p);
      return cJSON_CreateString(buf);
    case PROTOBUF_C_TYPE_INT64:
    case PROTOBUF_C_TYPE_SINT64:
    case PROTOBUF_C_TYPE_SFIXED64:
      snprintf(buf, sizeof buf, "%" PRId64, *(const int64_t *)p);
      return cJSON_CreateString(buf);
    case PROTOBUF_C_TYPE_DOUBLE: return pbj_number(*(const double *)p, 0);
    case PROTOBUF_C_TYPE_FLOAT: return pbj_number(*(const float *)p, 1);
    case PROTOBUF_C_TYPE_ENUM: {
      int v = *(const int *)p;
      const ProtobufCEnumValue *ev = protobuf_c_enum_descriptor_get_value(f->descriptor, v);
      if (ev) return cJSON_CreateString(ev->name);
      snprintf(buf, sizeof buf, "%d", v);
      return pbj_raw(buf);
    }
    case PROTOBUF_C_TYPE_MESSAGE: return pb_json_message(*(ProtobufCMessage *const *)p);
    default: return NULL;
  }
}

cJSON *pb_json_message(const ProtobufCMessage *msg) {
  cJSON *obj = cJSON_CreateObject();
  if (!obj) return NULL;
  const ProtobufCMessageDescriptor *d = msg->descriptor;
  for (unsigned i = 0; i < d->n_fields; i++) {
    const ProtobufCFieldDescriptor *f = &d->fields[i];
    if (!pbj_present(msg, f)) continue;
    cJSON *v;
    if (f->label == PROTOBUF_C_LABEL_REPEATED) {
      v = cJSON_CreateArray();
      for (size_t k = 0, n = pb_count(msg, f); v && k < n; k++) {
        cJSON *e = pbj_value(f, pb_element(msg, f, k));
        if (!e) {
          cJSON_Delete(v);
          v = NULL;
          break;
        }
        cJSON_AddItemToArray(v, e);
      }
    } else {
      v = pbj_value(f, pb_member(msg, f));
    }
    if (!v || !cJSON_AddItemToObject(obj, f->name, v)) {
      cJSON_Delete(v);
      cJSON_Delete(obj);
      return NULL;
    }
  }
  return obj;
}

char *pb_json_print(const ProtobufCMessage *msg, int pretty) {
  cJSON *j = pb_json_message(msg);
  if (!j) return NULL;
  char *s = pretty ? cJSON_Print(j) : cJSON_PrintUnformatted(j);
  cJSON_Delete(j);
  return s;
}

/* ---- YAML ---- */

static int pby_scalar(const cJSON *v, FILE *out) {
  if (cJSON_IsRaw(v)) return fputs(v->valuestring, out) < 0 ? -1 : 0;
  if (cJSON_IsObject(v)) return fputs("{}", out) < 0 ? -1 : 0;
  if (cJSON_IsArray(v)) return fputs("[]", out) < 0 ? -1 : 0;
  char *s = cJSON_PrintUnformatted(v);
  if (!s) return -1;
  int rc = fputs(s, out) < 0 ? -1 : 0;
  cJSON_free(s);
  return rc;
}

static int pby_is_block(const cJSON *v) { return (cJSON_IsObject(v) || cJSON_IsArray(v)) && v->child; }

/* Writes the items of a non-empty object or array at `indent` spaces; `first_inline` when the first
 * line goes after a "- " already written. */
static int pby_block(const cJSON *node, FILE *out, int indent, int first_inline) {
  int first = 1;
  for (const cJSON *c = node->child; c; c = c->next, first = 0) {
    if (!(first && first_inline)) fprintf(out, "%*s", indent, "");
    if (cJSON_IsArray(node)) {
      fputs("- ", out);
      if (pby_is_block(c)) {
        if (pby_block(c, out, indent + 2, 1)) return -1;
        continue;
      }
    } else {
      fprintf(out, "%s:", c->string);
      if (pby_is_block(c)) {
        fputc('\n', out);
        if (pby_block(c, out, indent + 2, 0)) return -1;
        continue;
      }
      fputc(' ', out);
    }
    if (pby_scalar(c, out) || fputc('\n', out) == EOF) return -1;
  }
  return 0;
}

int pb_yaml_write(const cJSON *tree, FILE *out) {
  if (!pby_is_block(tree)) return pby_scalar(tree, out) || fputc('\n', out) == EOF ? -1 : 0;
  if (pby_block(tree, out, 0, 0)) return -1;
  return ferror(out) ? -1 : 0;
}
