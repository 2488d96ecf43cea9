#include "pb_walk.h"

#include <ctype.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "dpod_error.h"

void *pb_member(const ProtobufCMessage *msg, const ProtobufCFieldDescriptor *f) {
  return (char *)msg + f->offset;
}

ProtobufCMessage *pb_sub_ensure(ProtobufCMessage *msg, const ProtobufCFieldDescriptor *f) {
  ProtobufCMessage **sub = pb_member(msg, f);
  if (!*sub) {
    const ProtobufCMessageDescriptor *sd = f->descriptor;
    ProtobufCMessage *m = malloc(sd->sizeof_message);
    if (!m) return NULL;
    protobuf_c_message_init(sd, m);
    *sub = m;
  }
  return *sub;
}

int pb_is_present(const ProtobufCMessage *msg, const ProtobufCFieldDescriptor *f) {
  const char *base = (const char *)msg;
  if (f->label == PROTOBUF_C_LABEL_REPEATED) return pb_count(msg, f) > 0;
  if (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) return *(const uint32_t *)(base + f->quantifier_offset) == f->id;
  if (f->type == PROTOBUF_C_TYPE_STRING || f->type == PROTOBUF_C_TYPE_MESSAGE) return *(void *const *)pb_member(msg, f) != NULL;
  if (f->label == PROTOBUF_C_LABEL_OPTIONAL)
    return *(const protobuf_c_boolean *)(base + f->quantifier_offset) || f->default_value;
  return 1;
}

size_t pb_count(const ProtobufCMessage *msg, const ProtobufCFieldDescriptor *f) {
  if (f->label != PROTOBUF_C_LABEL_REPEATED) return 0;
  return *(const size_t *)((const char *)msg + f->quantifier_offset);
}

size_t pb_value_size(const ProtobufCFieldDescriptor *f) {
  switch (f->type) {
    case PROTOBUF_C_TYPE_UINT64:
    case PROTOBUF_C_TYPE_FIXED64:
    case PROTOBUF_C_TYPE_INT64:
    case PROTOBUF_C_TYPE_SINT64:
    case PROTOBUF_C_TYPE_SFIXED64:
    case PROTOBUF_C_TYPE_DOUBLE: return 8;
    case PROTOBUF_C_TYPE_STRING:
    case PROTOBUF_C_TYPE_MESSAGE: return sizeof(void *);
    case PROTOBUF_C_TYPE_BYTES: return sizeof(ProtobufCBinaryData);
    case PROTOBUF_C_TYPE_BOOL: return sizeof(protobuf_c_boolean);
    default: return 4;
  }
}

const void *pb_element(const ProtobufCMessage *msg, const ProtobufCFieldDescriptor *f, size_t k) {
  const char *arr = *(char *const *)pb_member(msg, f);
  return arr + k * pb_value_size(f);
}

/* ---- enums: "dpo" or "OBJECTIVE_DPO" for Objective.OBJECTIVE_DPO ---- */

/* "JobState" -> "JOB_STATE_", the prefix proto style puts on every value name. */
static void pb_enum_prefix_(const ProtobufCEnumDescriptor *ed, char *buf, size_t len) {
  size_t n = 0;
  const char *s = ed->short_name;
  for (size_t i = 0; s[i] && n + 3 < len; i++) {
    if (i > 0 && isupper((unsigned char)s[i]) && islower((unsigned char)s[i - 1])) buf[n++] = '_';
    buf[n++] = (char)toupper((unsigned char)s[i]);
  }
  buf[n++] = '_';
  buf[n] = '\0';
}

const char *pb_enum_short_name(const ProtobufCEnumDescriptor *ed, const char *full, char *buf, size_t len) {
  char prefix[128];
  pb_enum_prefix_(ed, prefix, sizeof prefix);
  size_t pl = strlen(prefix);
  const char *s = strncmp(full, prefix, pl) == 0 && full[pl] ? full + pl : full;
  size_t n = 0;
  for (; s[n] && n + 1 < len; n++) buf[n] = (char)tolower((unsigned char)s[n]);
  buf[n] = '\0';
  return buf;
}

int pb_enum_parse(const ProtobufCEnumDescriptor *ed, const char *text, int *out) {
  char shortname[128];
  for (unsigned i = 0; i < ed->n_values; i++) {
    const ProtobufCEnumValue *v = &ed->values[i];
    pb_enum_short_name(ed, v->name, shortname, sizeof shortname);
    if (strcasecmp(text, v->name) == 0 || strcasecmp(text, shortname) == 0) {
      *out = v->value;
      return 0;
    }
  }
  return -1;
}

const char *pb_enum_name(const ProtobufCEnumDescriptor *ed, int value, char *buf, size_t len) {
  const ProtobufCEnumValue *v = protobuf_c_enum_descriptor_get_value(ed, value);
  if (!v) {
    snprintf(buf, len, "%d", value);
    return buf;
  }
  return pb_enum_short_name(ed, v->name, buf, len);
}

/* ---- scalars as text ---- */

/* Shortest "%g" form that reads back as the same double. */
static const char *pb_fmt_double_(double v, char *buf, size_t len) {
  for (int prec = 6; prec <= 17; prec++) {
    snprintf(buf, len, "%.*g", prec, v);
    if (strtod(buf, NULL) == v) break;
  }
  /* Keep it a YAML float and make integers look like numbers either way. */
  return buf;
}


int pb_format_scalar(const ProtobufCFieldDescriptor *f, const void *m, char *buf, size_t len) {
  switch (f->type) {
    case PROTOBUF_C_TYPE_STRING: {
      const char *s = *(char *const *)m;
      snprintf(buf, len, "%s", s ? s : "");
      return 0;
    }
    case PROTOBUF_C_TYPE_BOOL: snprintf(buf, len, "%s", *(const protobuf_c_boolean *)m ? "true" : "false"); return 0;
    case PROTOBUF_C_TYPE_UINT32:
    case PROTOBUF_C_TYPE_FIXED32: snprintf(buf, len, "%" PRIu32, *(const uint32_t *)m); return 0;
    case PROTOBUF_C_TYPE_UINT64:
    case PROTOBUF_C_TYPE_FIXED64: snprintf(buf, len, "%" PRIu64, *(const uint64_t *)m); return 0;
    case PROTOBUF_C_TYPE_INT32:
    case PROTOBUF_C_TYPE_SINT32:
    case PROTOBUF_C_TYPE_SFIXED32: snprintf(buf, len, "%" PRId32, *(const int32_t *)m); return 0;
    case PROTOBUF_C_TYPE_INT64:
    case PROTOBUF_C_TYPE_SINT64:
    case PROTOBUF_C_TYPE_SFIXED64: snprintf(buf, len, "%" PRId64, *(const int64_t *)m); return 0;
    case PROTOBUF_C_TYPE_DOUBLE: pb_fmt_double_(*(const double *)m, buf, len); return 0;
    case PROTOBUF_C_TYPE_FLOAT: pb_fmt_double_(*(const float *)m, buf, len); return 0;
    case PROTOBUF_C_TYPE_ENUM: pb_enum_name(f->descriptor, *(const int *)m, buf, len); return 0;
    default: snprintf(buf, len, "?"); return DPOD_EUNSUPPORTED;
  }
}
