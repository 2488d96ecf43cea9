/* Job specs: the YAML and `key=value` mapping onto dpod.v1.JobSpec, and the sanity checks.
 *
 * Nothing here names a JobSpec field by hand except job_spec_validate(): keys are resolved by walking
 * the protobuf-c descriptors, so a field added to dpod.proto is settable from YAML and --set at once.
 * Memory follows protobuf-c's rules (malloc/free, strings that still point at a field's default value
 * are not owned), so every spec we touch stays freeable with protobuf_c_message_free_unpacked(). */
#include "job_spec.h"

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <yaml.h>

#include "dpod_error.h"
#include "dpod_file.h"
#include "dpod_parse.h"
#include "job_names.h"
#include "pb_walk.h"

#define JS_KEY_MAX 256      /* longest dotted key we handle */
#define JS_NAME_MAX 128     /* longest job name */
#define JS_FILE_MAX (1 << 20) /* largest job file */

/* Failures of a job file read `return js_errf(err, errlen, "...", ...)`: all are invalid arguments. */
#define js_errf(err, errlen, ...) dpod_errf((err), (errlen), DPOD_EINVAL, __VA_ARGS__)

/* ----------------------------------------------------------------------------------------------- */
/* Normalization. */

/* Gives an optional field that is not set its default, marked set: a string of its own (protobuf-c
 * neither packs nor frees one that still points at the default), a scalar with its has_ flag. */
static int js_fill_default(ProtobufCMessage *msg, const ProtobufCFieldDescriptor *f) {
  void *member = pb_member(msg, f);
  if (f->type == PROTOBUF_C_TYPE_STRING) {
    char **str = member;
    if (*str && *str != f->default_value) return 0;
    char *copy = strdup(f->default_value ? f->default_value : "");
    if (!copy) return DPOD_ENOMEM;
    *str = copy;
    return 0;
  }
  protobuf_c_boolean *has = (protobuf_c_boolean *)((char *)msg + f->quantifier_offset);
  if (*has) return 0;
  if (f->type == PROTOBUF_C_TYPE_BYTES) {
    ProtobufCBinaryData *b = member;
    if (f->default_value) *b = *(const ProtobufCBinaryData *)f->default_value;
    else b->data = NULL, b->len = 0;
  } else if (f->default_value) {
    memcpy(member, f->default_value, pb_value_size(f));
  } else {
    memset(member, 0, pb_value_size(f));
  }
  *has = 1;
  return 0;
}

static int js_normalize_message(ProtobufCMessage *msg) {
  const ProtobufCMessageDescriptor *d = msg->descriptor;
  for (unsigned i = 0; i < d->n_fields; i++) {
    const ProtobufCFieldDescriptor *f = &d->fields[i];
    if (f->label == PROTOBUF_C_LABEL_REPEATED || (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF)) continue;
    if (f->type != PROTOBUF_C_TYPE_MESSAGE) {
      if (f->label != PROTOBUF_C_LABEL_OPTIONAL) continue;
      int rc = js_fill_default(msg, f);
      if (rc) return rc;
      continue;
    }
    ProtobufCMessage *sub = pb_sub_ensure(msg, f);
    if (!sub) return DPOD_ENOMEM;
    int rc = js_normalize_message(sub);
    if (rc) return rc;
  }
  return 0;
}

int job_spec_normalize(Dpod__V1__JobSpec *spec) {
  if (!spec) return DPOD_EINVAL;
  return js_normalize_message(&spec->base);
}

Dpod__V1__JobSpec *job_spec_new(void) {
  Dpod__V1__JobSpec *spec = malloc(sizeof *spec);
  if (!spec) return NULL;
  dpod__v1__job_spec__init(spec);
  if (job_spec_normalize(spec) != 0) {
    protobuf_c_message_free_unpacked(&spec->base, NULL);
    return NULL;
  }
  return spec;
}

/* ----------------------------------------------------------------------------------------------- */
/* Key lookup, with a suggestion for near misses. */

static size_t js_levenshtein(const char *a, const char *b) {
  size_t la = strlen(a), lb = strlen(b);
  if (la > JS_KEY_MAX || lb > JS_KEY_MAX) return (size_t)-1;
  size_t row[JS_KEY_MAX + 1];
  for (size_t j = 0; j <= lb; j++) row[j] = j;
  for (size_t i = 1; i <= la; i++) {
    size_t diag = row[0];
    row[0] = i;
    for (size_t j = 1; j <= lb; j++) {
      size_t up = row[j];
      size_t cost = a[i - 1] == b[j - 1] ? 0 : 1;
      size_t best = diag + cost;
      if (up + 1 < best) best = up + 1;
      if (row[j - 1] + 1 < best) best = row[j - 1] + 1;
      row[j] = best;
      diag = up;
    }
  }
  return row[lb];
}

typedef struct {
  const char *key;   /* what the user wrote */
  const char *last;  /* its last component */
  char best[JS_KEY_MAX];
  size_t best_dist;
  int same_leaf;     /* best has the same last component ("beta" -> "train.beta") */
} js_suggest;

static void js_suggest_walk(js_suggest *s, const ProtobufCMessageDescriptor *d, const char *prefix) {
  for (unsigned i = 0; i < d->n_fields; i++) {
    const ProtobufCFieldDescriptor *f = &d->fields[i];
    char path[JS_KEY_MAX];
    if (snprintf(path, sizeof path, "%s%s%s", prefix, *prefix ? "." : "", f->name) >= (int)sizeof path) continue;
    int same_leaf = strcmp(f->name, s->last) == 0;
    size_t dist = js_levenshtein(s->key, path);
    if ((same_leaf && !s->same_leaf) || (same_leaf == s->same_leaf && dist < s->best_dist)) {
      snprintf(s->best, sizeof s->best, "%s", path);
      s->best_dist = dist;
      s->same_leaf = same_leaf;
    }
    if (f->type == PROTOBUF_C_TYPE_MESSAGE && f->label != PROTOBUF_C_LABEL_REPEATED)
      js_suggest_walk(s, f->descriptor, path);
  }
}

/* Writes " (did you mean 'train.beta'?)" into buf when some key is close to `key`, else "". */
static const char *js_suggestion(const char *key, char *buf, size_t len) {
  js_suggest s = {.key = key, .best_dist = (size_t)-1};
  const char *dot = strrchr(key, '.');
  s.last = dot ? dot + 1 : key;
  js_suggest_walk(&s, &dpod__v1__job_spec__descriptor, "");
  size_t klen = strlen(key);
  size_t limit = klen / 4 > 2 ? klen / 4 : 2;
  buf[0] = '\0';
  if (s.best[0] && (s.same_leaf || s.best_dist <= limit)) snprintf(buf, len, " (did you mean '%s'?)", s.best);
  return buf;
}

/* Resolves `rel` (a dotted path below `msg`) to the message and field it names, creating sub-messages on
 * the way. `full` is the whole key as the user sees it, for messages. */
static int js_resolve(ProtobufCMessage *msg, const char *rel, const char *full, ProtobufCMessage **out_msg,
                      const ProtobufCFieldDescriptor **out_field, char *err, size_t errlen) {
  char buf[JS_KEY_MAX];
  char hint[JS_KEY_MAX + 32];
  if (!*rel) return js_errf(err, errlen, "key '%s': empty key", full);
  if (snprintf(buf, sizeof buf, "%s", rel) >= (int)sizeof buf) return js_errf(err, errlen, "key '%.64s...': too long", full);
  char *comp = buf;
  for (;;) {
    char *dot = strchr(comp, '.');
    if (dot) *dot = '\0';
    if (!*comp) return js_errf(err, errlen, "key '%s': empty component in dotted key", full);
    const ProtobufCFieldDescriptor *f = protobuf_c_message_descriptor_get_field_by_name(msg->descriptor, comp);
    if (!f) return js_errf(err, errlen, "key '%s': unknown key%s", full, js_suggestion(full, hint, sizeof hint));
    if (!dot) {
      *out_msg = msg;
      *out_field = f;
      return 0;
    }
    if (f->type != PROTOBUF_C_TYPE_MESSAGE || f->label == PROTOBUF_C_LABEL_REPEATED)
      return js_errf(err, errlen, "key '%s': '%s' is a value, not a section", full, comp);
    if (!(msg = pb_sub_ensure(msg, f))) return DPOD_ENOMEM;
    comp = dot + 1;
  }
}

/* ----------------------------------------------------------------------------------------------- */
/* Scalars from text. */

/* Decodes the UTF-8 sequence at s into *cp. Returns its length, or 0 if it is not valid UTF-8 (truncated,
 * overlong, a surrogate, above U+10FFFF). */
static size_t js_utf8_decode(const unsigned char *s, uint32_t *cp) {
  static const uint32_t min[5] = {0, 0, 0x80, 0x800, 0x10000};
  size_t n = s[0] < 0x80 ? 1 : (s[0] & 0xe0) == 0xc0 ? 2 : (s[0] & 0xf0) == 0xe0 ? 3 : (s[0] & 0xf8) == 0xf0 ? 4 : 0;
  if (n == 0) return 0;
  uint32_t c = n == 1 ? s[0] : s[0] & (0x7f >> n);
  for (size_t i = 1; i < n; i++) {
    if ((s[i] & 0xc0) != 0x80) return 0; /* also stops at the terminating NUL */
    c = (c << 6) | (s[i] & 0x3f);
  }
  if (c < min[n] || c > 0x10ffff || (c >= 0xd800 && c <= 0xdfff)) return 0;
  *cp = c;
  return n;
}

static int js_parse_bool(const char *text, protobuf_c_boolean *out) {
  static const char *yes[] = {"true", "yes", "on"}, *no[] = {"false", "no", "off"};
  for (size_t i = 0; i < 3; i++) {
    if (strcasecmp(text, yes[i]) == 0) return *out = 1, 0;
    if (strcasecmp(text, no[i]) == 0) return *out = 0, 0;
  }
  return -1;
}

static void js_mark_present(ProtobufCMessage *msg, const ProtobufCFieldDescriptor *f) {
  if (f->label == PROTOBUF_C_LABEL_OPTIONAL && f->type != PROTOBUF_C_TYPE_STRING &&
      f->type != PROTOBUF_C_TYPE_MESSAGE)
    *(protobuf_c_boolean *)((char *)msg + f->quantifier_offset) = 1;
}

/* Replaces the list of strings `f` (a repeated string field, such as train.lora.target_modules) of `msg`
 * by items[0..n), each checked to be UTF-8 as a single string is. */
static int js_set_strings(ProtobufCMessage *msg, const ProtobufCFieldDescriptor *f, const char *key,
                          const char *const *items, size_t n, char *err, size_t errlen) {
  for (size_t k = 0; k < n; k++) {
    uint32_t cp;
    for (size_t i = 0, len; items[k][i]; i += len)
      if ((len = js_utf8_decode((const unsigned char *)items[k] + i, &cp)) == 0)
        return js_errf(err, errlen, "key '%s': entry %zu is not valid UTF-8 (byte 0x%02x at offset %zu)", key, k,
                       (unsigned char)items[k][i], i);
  }
  char **list = n ? calloc(n, sizeof *list) : NULL;
  if (n && !list) return DPOD_ENOMEM;
  for (size_t k = 0; k < n; k++)
    if (!(list[k] = strdup(items[k]))) {
      for (size_t j = 0; j < k; j++) free(list[j]);
      free(list);
      return DPOD_ENOMEM;
    }
  char ***member = (char ***)((char *)msg + f->offset);
  size_t *count = (size_t *)((char *)msg + f->quantifier_offset);
  for (size_t k = 0; k < *count; k++) free((*member)[k]);
  free(*member);
  *member = list;
  *count = n;
  return 0;
}

/* A list of strings from one value: comma-separated entries, spaces around each dropped ("" is none). */
static int js_set_string_list(ProtobufCMessage *msg, const ProtobufCFieldDescriptor *f, const char *key,
                              const char *text, char *err, size_t errlen) {
  char *copy = strdup(text);
  if (!copy) return DPOD_ENOMEM;
  size_t cap = 1;
  for (const char *p = text; *p; p++) cap += *p == ',';
  const char **items = calloc(cap, sizeof *items);
  if (!items) {
    free(copy);
    return DPOD_ENOMEM;
  }
  size_t n = 0;
  int rc = 0;
  int blank = 1;
  for (const char *p = text; *p; p++) blank &= isspace((unsigned char)*p) != 0;
  for (char *tok = copy, *next; !blank && tok; tok = next) {
    next = strchr(tok, ',');
    if (next) *next++ = '\0';
    while (isspace((unsigned char)*tok)) tok++;
    char *end = tok + strlen(tok);
    while (end > tok && isspace((unsigned char)end[-1])) *--end = '\0';
    if (!*tok) {
      rc = js_errf(err, errlen, "key '%s': empty entry %zu in the list '%s' (entries are separated by commas)", key, n,
                   text);
      break;
    }
    items[n++] = tok;
  }
  if (rc == 0) rc = js_set_strings(msg, f, key, items, n, err, errlen);
  free(items);
  free(copy);
  return rc;
}

/* Sets field `f` of `msg` from `text`; `key` names it in messages. */
static int js_set_scalar(ProtobufCMessage *msg, const ProtobufCFieldDescriptor *f, const char *key, const char *text,
                         char *err, size_t errlen) {
  void *member = (char *)msg + f->offset;
  if (f->label == PROTOBUF_C_LABEL_REPEATED && f->type == PROTOBUF_C_TYPE_STRING)
    return js_set_string_list(msg, f, key, text, err, errlen);
  if (f->label == PROTOBUF_C_LABEL_REPEATED || (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF))
    return js_errf(err, errlen, "key '%s': lists and one-of fields cannot be set from a job file", key);
  switch (f->type) {
    case PROTOBUF_C_TYPE_MESSAGE: {
      const ProtobufCMessageDescriptor *sd = f->descriptor;
      return js_errf(err, errlen, "key '%s': is a section, not a value (set its fields, e.g. '%s.%s')", key, key,
                     sd->n_fields ? sd->fields[0].name : "...");
    }
    case PROTOBUF_C_TYPE_STRING: {
      /* Protobuf strings are UTF-8 (other gRPC implementations refuse a message where one is not), and a
       * job file is UTF-8, so a --set value that is not could neither be sent nor written back. */
      uint32_t cp;
      for (size_t i = 0, n; text[i]; i += n)
        if ((n = js_utf8_decode((const unsigned char *)text + i, &cp)) == 0)
          return js_errf(err, errlen, "key '%s': not valid UTF-8 (byte 0x%02x at offset %zu)", key,
                         (unsigned char)text[i], i);
      char *dup = strdup(text);
      if (!dup) return DPOD_ENOMEM;
      char **p = member;
      if (*p && *p != (const char *)f->default_value) free(*p);
      *p = dup;
      return 0;
    }
    case PROTOBUF_C_TYPE_BOOL: {
      protobuf_c_boolean b;
      if (js_parse_bool(text, &b) != 0)
        return js_errf(err, errlen, "key '%s': expected true or false, got '%s'", key, text);
      *(protobuf_c_boolean *)member = b;
      break;
    }
    case PROTOBUF_C_TYPE_UINT32:
    case PROTOBUF_C_TYPE_FIXED32:
    case PROTOBUF_C_TYPE_UINT64:
    case PROTOBUF_C_TYPE_FIXED64: {
      int is32 = f->type == PROTOBUF_C_TYPE_UINT32 || f->type == PROTOBUF_C_TYPE_FIXED32;
      uint64_t max = is32 ? UINT32_MAX : UINT64_MAX, v;
      int rc = dpod_parse_u64(text, max, &v);
      if (rc == -1 && text[0] == '-')
        return js_errf(err, errlen, "key '%s': must not be negative (got %s)", key, text);
      if (rc == -1) return js_errf(err, errlen, "key '%s': expected a whole number >= 0, got '%s'", key, text);
      if (rc == -2) return js_errf(err, errlen, "key '%s': %s is out of range (max %" PRIu64 ")", key, text, max);
      if (is32)
        *(uint32_t *)member = (uint32_t)v;
      else
        *(uint64_t *)member = v;
      break;
    }
    case PROTOBUF_C_TYPE_INT32:
    case PROTOBUF_C_TYPE_SINT32:
    case PROTOBUF_C_TYPE_SFIXED32:
    case PROTOBUF_C_TYPE_INT64:
    case PROTOBUF_C_TYPE_SINT64:
    case PROTOBUF_C_TYPE_SFIXED64: {
      int is32 = f->type == PROTOBUF_C_TYPE_INT32 || f->type == PROTOBUF_C_TYPE_SINT32 ||
                 f->type == PROTOBUF_C_TYPE_SFIXED32;
      int64_t v;
      int rc = dpod_parse_i64(text, is32 ? INT32_MIN : INT64_MIN, is32 ? INT32_MAX : INT64_MAX, &v);
      if (rc == -1) return js_errf(err, errlen, "key '%s': expected a whole number, got '%s'", key, text);
      if (rc == -2) return js_errf(err, errlen, "key '%s': %s is out of range", key, text);
      if (is32)
        *(int32_t *)member = (int32_t)v;
      else
        *(int64_t *)member = v;
      break;
    }
    case PROTOBUF_C_TYPE_DOUBLE:
    case PROTOBUF_C_TYPE_FLOAT: {
      char *end;
      errno = 0;
      double v = strtod(text, &end);
      if (end == text || *end || isspace((unsigned char)text[0]))
        return js_errf(err, errlen, "key '%s': expected a number, got '%s'", key, text);
      if (!isfinite(v) || errno == ERANGE)
        return js_errf(err, errlen, "key '%s': must be a finite number (got %s)", key, text);
      if (f->type == PROTOBUF_C_TYPE_DOUBLE)
        *(double *)member = v;
      else
        *(float *)member = (float)v;
      break;
    }
    case PROTOBUF_C_TYPE_ENUM: {
      const ProtobufCEnumDescriptor *ed = f->descriptor;
      int v;
      if (pb_enum_parse(ed, text, &v) != 0) {
        char list[256] = "", one[64];
        for (unsigned i = 0; i < ed->n_values; i++) {
          size_t n = strlen(list);
          snprintf(list + n, sizeof list - n, "%s%s", i ? ", " : "",
                   pb_enum_short_name(ed, ed->values[i].name, one, sizeof one));
        }
        return js_errf(err, errlen, "key '%s': unknown value '%s' (expected one of: %s)", key, text, list);
      }
      *(int *)member = v;
      break;
    }
    default:
      return js_errf(err, errlen, "key '%s': fields of this type cannot be set from a job file", key);
  }
  js_mark_present(msg, f);
  return 0;
}

/* Lists of whole numbers (JobSpec.after): what a job file or --set gives replaces the whole list. */
static int js_list_is_numbers(const ProtobufCFieldDescriptor *f) {
  return f->label == PROTOBUF_C_LABEL_REPEATED && (f->type == PROTOBUF_C_TYPE_UINT64 || f->type == PROTOBUF_C_TYPE_UINT32);
}

static void js_list_clear(ProtobufCMessage *msg, const ProtobufCFieldDescriptor *f) {
  void **elems = (void **)((char *)msg + f->offset);
  free(*elems);
  *elems = NULL;
  *(size_t *)((char *)msg + f->quantifier_offset) = 0;
}

/* Appends `text` (one whole number) to list field `f`. */
static int js_list_append(ProtobufCMessage *msg, const ProtobufCFieldDescriptor *f, const char *key, const char *text,
                          char *err, size_t errlen) {
  size_t *n = (size_t *)((char *)msg + f->quantifier_offset);
  void **elems = (void **)((char *)msg + f->offset);
  int is32 = f->type == PROTOBUF_C_TYPE_UINT32;
  uint64_t max = is32 ? UINT32_MAX : UINT64_MAX, v;
  while (*text == ' ') text++;
  int rc = dpod_parse_u64(text, max, &v);
  if (rc == -1) return js_errf(err, errlen, "key '%s': expected a list of whole numbers >= 0, got '%s'", key, text);
  if (rc == -2) return js_errf(err, errlen, "key '%s': %s is out of range (max %" PRIu64 ")", key, text, max);
  if (*n >= 1024) return js_errf(err, errlen, "key '%s': too many entries", key);
  size_t width = is32 ? sizeof(uint32_t) : sizeof(uint64_t);
  char *grown = realloc(*elems, (*n + 1) * width);
  if (!grown) return DPOD_ENOMEM;
  if (is32) ((uint32_t *)grown)[*n] = (uint32_t)v;
  else ((uint64_t *)grown)[*n] = v;
  *elems = grown;
  (*n)++;
  return 0;
}

/* "--set after=1,2": comma-separated; an empty value empties the list. */
static int js_set_list(ProtobufCMessage *msg, const ProtobufCFieldDescriptor *f, const char *key, const char *text,
                       char *err, size_t errlen) {
  js_list_clear(msg, f);
  char item[64];
  for (const char *p = text; *p;) {
    size_t len = strcspn(p, ",");
    if (len >= sizeof item) return js_errf(err, errlen, "key '%s': entry %.20s... is too long", key, p);
    memcpy(item, p, len);
    item[len] = '\0';
    int rc = js_list_append(msg, f, key, item, err, errlen);
    if (rc) return rc;
    p += len;
    if (*p == ',') p++;
  }
  return 0;
}

int job_spec_set(Dpod__V1__JobSpec *spec, const char *key, const char *value, char *err, size_t errlen) {
  if (!spec || !key || !value) return js_errf(err, errlen, "job_spec_set: NULL argument");
  ProtobufCMessage *msg;
  const ProtobufCFieldDescriptor *f;
  int rc = js_resolve(&spec->base, key, key, &msg, &f, err, errlen);
  if (rc) return rc;
  if (js_list_is_numbers(f)) return js_set_list(msg, f, key, value, err, errlen);
  return js_set_scalar(msg, f, key, value, err, errlen);
}

/* ----------------------------------------------------------------------------------------------- */
/* YAML job files, through libyaml's document API (line numbers come from the node marks). */

typedef struct {
  yaml_document_t *doc;
  const char *name;  /* file name for messages */
  char *err;
  size_t errlen;
  char **assigned;   /* dotted keys given so far: a key given twice, in any spelling, is an error */
  size_t *assigned_line;
  size_t n_assigned, cap_assigned;
} js_yaml_ctx;

static int js_yaml_errf(js_yaml_ctx *c, const yaml_node_t *at, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int js_yaml_errf(js_yaml_ctx *c, const yaml_node_t *at, const char *fmt, ...) {
  if (c->err && c->errlen > 0) {
    int n = snprintf(c->err, c->errlen, "%s:%lu: ", c->name, (unsigned long)at->start_mark.line + 1);
    if (n < 0) n = 0;
    if ((size_t)n < c->errlen) {
      va_list ap;
      va_start(ap, fmt);
      vsnprintf(c->err + n, c->errlen - n, fmt, ap);
      va_end(ap);
    }
  }
  return DPOD_EINVAL;
}

static int js_yaml_is_null(const yaml_node_t *n) {
  if (n->type != YAML_SCALAR_NODE || n->data.scalar.style != YAML_PLAIN_SCALAR_STYLE) return 0;
  const char *v = (const char *)n->data.scalar.value;
  return !*v || strcmp(v, "~") == 0 || strcmp(v, "null") == 0 || strcmp(v, "Null") == 0 || strcmp(v, "NULL") == 0;
}

static const char *js_yaml_kind(const yaml_node_t *n) {
  switch (n->type) {
    case YAML_MAPPING_NODE: return "a mapping";
    case YAML_SEQUENCE_NODE: return "a list";
    default: return "a scalar";
  }
}

/* Records that `key` was given on `line`; refuses a second time. */
static int js_yaml_assign(js_yaml_ctx *c, const yaml_node_t *at, const char *key) {
  for (size_t i = 0; i < c->n_assigned; i++)
    if (strcmp(c->assigned[i], key) == 0)
      return js_yaml_errf(c, at, "key '%s': duplicate key (first given on line %zu)", key, c->assigned_line[i]);
  if (c->n_assigned == c->cap_assigned) {
    size_t cap = c->cap_assigned ? 2 * c->cap_assigned : 16;
    char **a = realloc(c->assigned, cap * sizeof *a);
    if (!a) return DPOD_ENOMEM;
    c->assigned = a;
    size_t *l = realloc(c->assigned_line, cap * sizeof *l);
    if (!l) return DPOD_ENOMEM;
    c->assigned_line = l;
    c->cap_assigned = cap;
  }
  char *dup = strdup(key);
  if (!dup) return DPOD_ENOMEM;
  c->assigned[c->n_assigned] = dup;
  c->assigned_line[c->n_assigned++] = at->start_mark.line + 1;
  return 0;
}

static int js_yaml_mapping(js_yaml_ctx *c, yaml_node_t *map, ProtobufCMessage *msg, const char *prefix) {
  for (yaml_node_pair_t *p = map->data.mapping.pairs.start; p < map->data.mapping.pairs.top; p++) {
    yaml_node_t *k = yaml_document_get_node(c->doc, p->key);
    yaml_node_t *v = yaml_document_get_node(c->doc, p->value);
    if (!k || !v) return js_yaml_errf(c, map, "malformed mapping");
    if (k->type != YAML_SCALAR_NODE)
      return js_yaml_errf(c, k, "%s%skeys must be plain names, not %s", prefix ? "in section " : "",
                          prefix ? prefix : "", js_yaml_kind(k));
    const char *ktext = (const char *)k->data.scalar.value;
    char full[JS_KEY_MAX];
    if (snprintf(full, sizeof full, "%s%s%s", prefix ? prefix : "", prefix ? "." : "", ktext) >= (int)sizeof full)
      return js_yaml_errf(c, k, "key '%.64s...': too long", full);

    /* The same key twice in one mapping (libyaml keeps both). */
    for (yaml_node_pair_t *q = map->data.mapping.pairs.start; q < p; q++) {
      yaml_node_t *k2 = yaml_document_get_node(c->doc, q->key);
      if (k2 && k2->type == YAML_SCALAR_NODE && strcmp((const char *)k2->data.scalar.value, ktext) == 0)
        return js_yaml_errf(c, k, "key '%s': duplicate key (first given on line %lu)", full,
                            (unsigned long)k2->start_mark.line + 1);
    }

    ProtobufCMessage *target;
    const ProtobufCFieldDescriptor *f;
    char msgbuf[512];
    int rc = js_resolve(msg, ktext, full, &target, &f, msgbuf, sizeof msgbuf);
    if (rc == DPOD_ENOMEM) return rc;
    if (rc) return js_yaml_errf(c, k, "%s", msgbuf);

    if (f->type == PROTOBUF_C_TYPE_MESSAGE && f->label != PROTOBUF_C_LABEL_REPEATED) {
      if (js_yaml_is_null(v)) continue;  /* "train:" with every field commented out */
      if (v->type != YAML_MAPPING_NODE)
        return js_yaml_errf(c, v, "key '%s': is a section and expects a mapping of its fields, got %s%s%s%s", full,
                            js_yaml_kind(v), v->type == YAML_SCALAR_NODE ? " '" : "",
                            v->type == YAML_SCALAR_NODE ? (const char *)v->data.scalar.value : "",
                            v->type == YAML_SCALAR_NODE ? "'" : "");
      ProtobufCMessage **sub = (ProtobufCMessage **)((char *)target + f->offset);
      if (!*sub) {
        const ProtobufCMessageDescriptor *sd = f->descriptor;
        ProtobufCMessage *m = malloc(sd->sizeof_message);
        if (!m) return DPOD_ENOMEM;
        protobuf_c_message_init(sd, m);
        *sub = m;
      }
      rc = js_yaml_mapping(c, v, *sub, full);
      if (rc) return rc;
      continue;
    }

    if (js_list_is_numbers(f)) {
      /* "after: [1, 2]", a block list, or a single number. */
      if ((rc = js_yaml_assign(c, k, full)) != 0) return rc;
      js_list_clear(target, f);
      if (v->type == YAML_SCALAR_NODE) {
        if (js_yaml_is_null(v)) continue;
        rc = js_list_append(target, f, full, (const char *)v->data.scalar.value, msgbuf, sizeof msgbuf);
        if (rc == DPOD_ENOMEM) return rc;
        if (rc) return js_yaml_errf(c, v, "%s", msgbuf);
        continue;
      }
      if (v->type != YAML_SEQUENCE_NODE)
        return js_yaml_errf(c, v, "key '%s': expects a list of whole numbers, got %s", full, js_yaml_kind(v));
      for (yaml_node_item_t *it = v->data.sequence.items.start; it < v->data.sequence.items.top; it++) {
        yaml_node_t *e = yaml_document_get_node(c->doc, *it);
        if (!e || e->type != YAML_SCALAR_NODE)
          return js_yaml_errf(c, e ? e : v, "key '%s': expects a list of whole numbers, got %s in it", full,
                              e ? js_yaml_kind(e) : "nothing");
        rc = js_list_append(target, f, full, (const char *)e->data.scalar.value, msgbuf, sizeof msgbuf);
        if (rc == DPOD_ENOMEM) return rc;
        if (rc) return js_yaml_errf(c, e, "%s", msgbuf);
      }
      continue;
    }
    if (v->type == YAML_SEQUENCE_NODE && f->label == PROTOBUF_C_LABEL_REPEATED && f->type == PROTOBUF_C_TYPE_STRING) {
      /* A list of strings: [to_q, to_v] or one "- item" a line. */
      size_t n = (size_t)(v->data.sequence.items.top - v->data.sequence.items.start);
      const char **items = calloc(n ? n : 1, sizeof *items);
      if (!items) return DPOD_ENOMEM;
      for (size_t i = 0; i < n; i++) {
        yaml_node_t *it = yaml_document_get_node(c->doc, v->data.sequence.items.start[i]);
        if (!it || it->type != YAML_SCALAR_NODE) {
          free(items);
          return js_yaml_errf(c, it ? it : v, "key '%s': entry %zu must be a single value, got %s", full, i,
                              it ? js_yaml_kind(it) : "nothing");
        }
        items[i] = (const char *)it->data.scalar.value;
      }
      rc = js_yaml_assign(c, k, full);
      if (rc) {
        free(items);
        return rc;
      }
      rc = js_set_strings(target, f, full, items, n, msgbuf, sizeof msgbuf);
      free(items);
      if (rc == DPOD_ENOMEM) return rc;
      if (rc) return js_yaml_errf(c, v, "%s", msgbuf);
      continue;
    }
    if (v->type != YAML_SCALAR_NODE)
      return js_yaml_errf(c, v, "key '%s': expects a single value, got %s", full, js_yaml_kind(v));
    if (f->type != PROTOBUF_C_TYPE_STRING && js_yaml_is_null(v))
      return js_yaml_errf(c, k, "key '%s': missing value", full);
    rc = js_yaml_assign(c, k, full);
    if (rc == DPOD_ENOMEM) return rc;
    if (rc) return rc;
    rc = js_set_scalar(target, f, full, js_yaml_is_null(v) ? "" : (const char *)v->data.scalar.value, msgbuf,
                       sizeof msgbuf);
    if (rc == DPOD_ENOMEM) return rc;
    if (rc) return js_yaml_errf(c, v, "%s", msgbuf);
  }
  return 0;
}

int job_spec_parse_yaml(Dpod__V1__JobSpec *spec, const char *text, size_t len, const char *name, char *err,
                        size_t errlen) {
  if (!spec || !text) return js_errf(err, errlen, "job_spec_parse_yaml: NULL argument");
  if (!name) name = "<spec>";
  yaml_parser_t parser;
  yaml_document_t doc;
  int have_doc = 0, rc = 0;
  js_yaml_ctx c = {.doc = &doc, .name = name, .err = err, .errlen = errlen};

  if (!yaml_parser_initialize(&parser)) return DPOD_ENOMEM;
  yaml_parser_set_input_string(&parser, (const unsigned char *)text, len);
  if (!yaml_parser_load(&parser, &doc)) {
    rc = js_errf(err, errlen, "%s:%lu: invalid YAML: %s%s%s", name, (unsigned long)parser.problem_mark.line + 1,
                 parser.problem ? parser.problem : "syntax error", parser.context ? " " : "",
                 parser.context ? parser.context : "");
    goto fail;
  }
  have_doc = 1;
  yaml_node_t *root = yaml_document_get_root_node(&doc);
  if (!root || js_yaml_is_null(root)) goto done;  /* an empty file changes nothing */
  if (root->type != YAML_MAPPING_NODE) {
    rc = js_yaml_errf(&c, root, "the job file must be a mapping of keys (name:, ranks:, train:, ...), got %s",
                      js_yaml_kind(root));
    goto fail;
  }
  rc = js_yaml_mapping(&c, root, &spec->base, NULL);
  if (rc) goto fail;

  /* A second document is almost certainly a mistake ("---" between two jobs). */
  yaml_document_t extra;
  if (!yaml_parser_load(&parser, &extra)) {
    rc = js_errf(err, errlen, "%s:%lu: invalid YAML: %s", name, (unsigned long)parser.problem_mark.line + 1,
                 parser.problem ? parser.problem : "syntax error");
    goto fail;
  }
  yaml_node_t *extra_root = yaml_document_get_root_node(&extra);
  if (extra_root) {
    rc = js_errf(err, errlen, "%s:%lu: only one YAML document (one job) per file", name,
                 (unsigned long)extra_root->start_mark.line + 1);
    yaml_document_delete(&extra);
    goto fail;
  }
  yaml_document_delete(&extra);

done:
fail:
  for (size_t i = 0; i < c.n_assigned; i++) free(c.assigned[i]);
  free(c.assigned);
  free(c.assigned_line);
  if (have_doc) yaml_document_delete(&doc);
  yaml_parser_delete(&parser);
  if (rc == DPOD_ENOMEM) js_errf(err, errlen, "%s: out of memory", name);
  return rc;
}

int job_spec_load_yaml(Dpod__V1__JobSpec *spec, const char *path, char *err, size_t errlen) {
  if (!path) return js_errf(err, errlen, "job_spec_load_yaml: NULL path");
  char *buf = NULL;
  size_t len = 0;
  int rc = dpod_read_file(path, JS_FILE_MAX, &buf, &len, err, errlen);
  if (rc != 0) return rc;
  rc = job_spec_parse_yaml(spec, buf, len, path, err, errlen);
  free(buf);
  return rc;
}

/* ----------------------------------------------------------------------------------------------- */
/* Writing specs back out. */

/* A double-quoted YAML scalar that reads back as `s`. YAML takes printable characters as they are; the
 * rest are escaped: C0 and C1 controls, the line breaks U+0085, U+2028 and U+2029 (which a reader folds),
 * the byte order mark and the non-characters U+FFFE and U+FFFF. A byte that is not UTF-8 (a spec sent
 * over RPC by another client) cannot be carried and is written as the code point of the same number. */
static void js_fmt_string(const char *s, FILE *out) {
  fputc('"', out);
  for (const unsigned char *p = (const unsigned char *)s; *p;) {
    uint32_t cp;
    size_t n = js_utf8_decode(p, &cp);
    if (n == 0) {
      fprintf(out, "\\x%02x", *p++);
      continue;
    }
    if (cp == '"' || cp == '\\')
      fprintf(out, "\\%c", (int)cp);
    else if (cp == '\n')
      fputs("\\n", out);
    else if (cp == '\t')
      fputs("\\t", out);
    else if (cp < 0x20 || (cp >= 0x7f && cp <= 0x9f))
      fprintf(out, "\\x%02x", (unsigned)cp);
    else if (cp == 0x2028 || cp == 0x2029 || cp == 0xfeff || cp == 0xfffe || cp == 0xffff)
      fprintf(out, "\\u%04x", (unsigned)cp);
    else
      fwrite(p, 1, n, out);
    p += n;
  }
  fputc('"', out);
}

int job_spec_format_value(const ProtobufCMessage *msg, const ProtobufCFieldDescriptor *f, char *buf, size_t len) {
  return pb_format_scalar(f, pb_member(msg, f), buf, len);
}

static void js_write_message(const ProtobufCMessage *msg, const ProtobufCMessageDescriptor *d, FILE *out,
                             int indent) {
  ProtobufCMessage *defaults = NULL;
  if (!msg) {  /* an absent sub-message reads as its defaults */
    defaults = malloc(d->sizeof_message);
    if (!defaults) return;
    protobuf_c_message_init(d, defaults);
    msg = defaults;
  }
  for (unsigned i = 0; i < d->n_fields; i++) {
    const ProtobufCFieldDescriptor *f = &d->fields[i];
    if (js_list_is_numbers(f)) {
      fprintf(out, "%*s%s: [", indent, "", f->name);
      for (size_t k = 0, n = pb_count(msg, f); k < n; k++) {
        const void *e = pb_element(msg, f, k);
        fprintf(out, "%s%" PRIu64, k ? ", " : "",
                f->type == PROTOBUF_C_TYPE_UINT32 ? (uint64_t) * (const uint32_t *)e : *(const uint64_t *)e);
      }
      fputs("]\n", out);
      continue;
    }
    if (f->label == PROTOBUF_C_LABEL_REPEATED && f->type == PROTOBUF_C_TYPE_STRING) {
      /* A flow list, which reads back as the same list: name: ["a", "b"]. */
      char *const *items = *(char **const *)((const char *)msg + f->offset);
      size_t n = *(const size_t *)((const char *)msg + f->quantifier_offset);
      fprintf(out, "%*s%s: [", indent, "", f->name);
      for (size_t k = 0; k < n; k++) {
        if (k) fputs(", ", out);
        js_fmt_string(items[k] ? items[k] : "", out);
      }
      fputs("]\n", out);
      continue;
    }
    if (f->label == PROTOBUF_C_LABEL_REPEATED || (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF)) continue;
    if (f->type == PROTOBUF_C_TYPE_MESSAGE) {
      fprintf(out, "%*s%s:\n", indent, "", f->name);
      js_write_message(*(ProtobufCMessage *const *)((const char *)msg + f->offset), f->descriptor, out, indent + 2);
      continue;
    }
    char val[128];
    fprintf(out, "%*s%s: ", indent, "", f->name);
    if (f->type == PROTOBUF_C_TYPE_STRING) {
      const char *s = *(char *const *)((const char *)msg + f->offset);
      js_fmt_string(s ? s : "", out);
    } else {
      job_spec_format_value(msg, f, val, sizeof val);
      fputs(val, out);
    }
    fputc('\n', out);
  }
  free(defaults);
}

int job_spec_write_yaml(const Dpod__V1__JobSpec *spec, FILE *out, int indent) {
  if (!spec || !out) return DPOD_EINVAL;
  js_write_message(&spec->base, spec->base.descriptor, out, indent);
  return ferror(out) ? DPOD_EIO : 0;
}

int job_spec_absolute_paths(Dpod__V1__JobSpec *spec, const char *base, char *err, size_t errlen) {
  if (job_spec_normalize(spec) != 0) return dpod_errf(err, errlen, DPOD_ENOMEM, "out of memory");
  const struct {
    const char *key, *value;
  } paths[] = {{"model.config", spec->model->config},
               {"model.weights", spec->model->weights},
               {"model.reference_weights", spec->model->reference_weights},
               {"model.scheduler_config", spec->model->scheduler_config},
               {"data.dataset", spec->data->dataset}};
  for (size_t i = 0; i < sizeof paths / sizeof paths[0]; i++) {
    const char *v = paths[i].value;
    if (!v || !*v || v[0] == '/' || strncmp(v, "builtin:", 8) == 0 || strncmp(v, JOB_SPEC_REF_PREFIX, 4) == 0) continue;
    while (v[0] == '.' && v[1] == '/') v += 2;
    char joined[8192];
    if (snprintf(joined, sizeof joined, "%s/%s", base, v) >= (int)sizeof joined)
      return js_errf(err, errlen, "%s: path too long once made absolute", paths[i].key);
    int status = job_spec_set(spec, paths[i].key, joined, err, errlen); /* may free `v` */
    if (status != 0) return status;
  }
  return 0;
}

/* ----------------------------------------------------------------------------------------------- */
/* Validation. */

/* Every field has a range, so that nothing a client sends can overflow a product, loop for ever or
 * reach the workers as nonsense; each refusal names the field. The limits are far beyond any real job. */
#define JS_RANKS_MAX 4096
#define JS_THREADS_MAX 1024
#define JS_STEPS_MAX 100000000u
#define JS_BATCH_MAX 65536u
#define JS_PAIRS_PER_STEP_MAX (1u << 24) /* batch_size x grad_accum x ranks */
#define JS_PAIRS_MAX (1u << 24)
#define JS_PATH_MAX 4095
#define JS_SPLIT_MAX 64

#define js_uint_in(key, v, lo, hi)                                                                       \
  do {                                                                                                  \
    if ((uint64_t)(v) < (uint64_t)(lo) || (uint64_t)(v) > (uint64_t)(hi))                               \
      return js_errf(err, errlen, "%s: must be from %" PRIu64 " to %" PRIu64 " (got %" PRIu64 ")", key, \
                     (uint64_t)(lo), (uint64_t)(hi), (uint64_t)(v));                                     \
  } while (0)

/* [lo, hi] closed; a NaN fails every comparison and so is refused with the rest. */
#define js_double_in(key, v, lo, hi, what)                                                 \
  do {                                                                                    \
    if (!((v) >= (lo) && (v) <= (hi)))                                                    \
      return js_errf(err, errlen, "%s: must be " what " (got %g)", key, (double)(v));     \
  } while (0)

/* A string that reaches a file name, a log line or a strict protobuf client: valid UTF-8, bounded. */
static int js_check_text(const char *key, const char *s, size_t max, char *err, size_t errlen) {
  size_t n = strlen(s);
  if (n > max) return js_errf(err, errlen, "%s: at most %zu bytes (got %zu)", key, max, n);
  long bad = dpod_utf8_invalid_at(s);
  if (bad >= 0) return js_errf(err, errlen, "%s: not valid UTF-8 (at byte %ld)", key, bad);
  return 0;
}

/* Split names become parts of file names inside the dataset directory. */
static int js_check_split(const char *key, const char *s, char *err, size_t errlen) {
  size_t n = strlen(s);
  if (n == 0 || n > JS_SPLIT_MAX)
    return js_errf(err, errlen, "%s: must be 1 to %d characters (got %zu)", key, JS_SPLIT_MAX, n);
  if (s[0] == '.') return js_errf(err, errlen, "%s: must not start with '.'", key);
  for (size_t i = 0; i < n; i++)
    if (!isalnum((unsigned char)s[i]) && s[i] != '_' && s[i] != '-' && s[i] != '.')
      return js_errf(err, errlen, "%s: only letters, digits, '_', '-' and '.' (byte %zu is not)", key, i);
  return 0;
}

/* Names Slurm would take as a value of one of ours (--partition=...): letters, digits, "_-.,:+" (lists and
 * feature expressions need ",", "&", "|"). Bounded; never empty when set. */
static int js_check_slurm_word(const char *key, const char *s, const char *extra, char *err, size_t errlen) {
  size_t n = strlen(s);
  if (n > 128) return js_errf(err, errlen, "%s: at most 128 characters (got %zu)", key, n);
  for (size_t i = 0; i < n; i++)
    if (!isalnum((unsigned char)s[i]) && !strchr("_-.:+", s[i]) && !strchr(extra, s[i]))
      return js_errf(err, errlen, "%s: character %zu ('%c') is not allowed", key, i,
                     isprint((unsigned char)s[i]) ? s[i] : '?');
  return 0;
}

int job_spec_check_sbatch_options(const char *options, char *err, size_t errlen) {
  static const char *const allowed[] = {"exclusive", "reservation", "nice",        "hint",      "gres",
                                        "mem-per-cpu", "mem-per-gpu", "licenses", "comment",   "begin",
                                        "deadline",  "mail-type",   "mail-user",   "wckey",     "switches",
                                        "distribution", "threads-per-core"};
  const char *p = options;
  size_t words = 0;
  while (*p) {
    while (*p == ' ') p++;
    if (!*p) break;
    size_t len = strcspn(p, " ");
    if (++words > 32) return js_errf(err, errlen, "resources.sbatch_options: at most 32 options");
    if (len > 256) return js_errf(err, errlen, "resources.sbatch_options: option %zu is too long", words);
    if (len < 3 || p[0] != '-' || p[1] != '-')
      return js_errf(err, errlen, "resources.sbatch_options: option %zu must look like --NAME or --NAME=VALUE", words);
    size_t name_len = strcspn(p + 2, "= ");
    int known = 0;
    for (size_t i = 0; i < sizeof allowed / sizeof allowed[0] && !known; i++)
      known = strlen(allowed[i]) == name_len && strncmp(allowed[i], p + 2, name_len) == 0;
    if (!known)
      return js_errf(err, errlen, "resources.sbatch_options: --%.*s is not an option dpod passes to sbatch "
                     "(allowed: exclusive, reservation, nice, hint, gres, mem-per-cpu, mem-per-gpu, licenses, "
                     "comment, begin, deadline, mail-type, mail-user, wckey, switches, distribution, "
                     "threads-per-core)", (int)(name_len > 64 ? 64 : name_len), p + 2);
    for (size_t i = 0; i < len; i++)
      if (!isgraph((unsigned char)p[i]))
        return js_errf(err, errlen, "resources.sbatch_options: option %zu holds a control character", words);
    p += len;
  }
  return 0;
}

int job_spec_parse_ref(const char *s, uint64_t *job, uint32_t *step) {
  *job = 0;
  *step = 0;
  if (!s || strncmp(s, JOB_SPEC_REF_PREFIX, 4) != 0) return 0;
  const char *p = s + 4;
  char digits[24];
  size_t n = strspn(p, "0123456789");
  if (n == 0 || n >= sizeof digits) return -1;
  memcpy(digits, p, n);
  digits[n] = '\0';
  if (dpod_parse_u64(digits, UINT64_MAX, job) != 0 || *job == 0) return -1;
  p += n;
  if (!*p) return 1;
  if (strncmp(p, "@step-", 6) != 0) return -1;
  p += 6;
  n = strspn(p, "0123456789");
  uint64_t v;
  if (n == 0 || p[n] || n >= sizeof digits) return -1;
  if (dpod_parse_u64(p, JS_STEPS_MAX, &v) != 0 || v == 0) return -1;
  *step = (uint32_t)v;
  return 1;
}

size_t job_spec_deps(const Dpod__V1__JobSpec *spec, uint64_t *ids, size_t max) {
  size_t n = 0;
  uint64_t refs[2] = {0, 0};
  uint32_t step;
  if (spec->model) {
    if (job_spec_parse_ref(spec->model->weights, &refs[0], &step) != 1) refs[0] = 0;
    if (job_spec_parse_ref(spec->model->reference_weights, &refs[1], &step) != 1) refs[1] = 0;
  }
  for (size_t i = 0; i < spec->n_after + 2; i++) {
    uint64_t id = i < spec->n_after ? spec->after[i] : refs[i - spec->n_after];
    if (id == 0) continue;
    int seen = 0;
    for (size_t k = 0; k < n && k < max && !seen; k++) seen = ids[k] == id;
    if (seen) continue;
    if (n < max) ids[n] = id;
    n++;
  }
  return n;
}

int job_spec_keep_best_lower(const char *metric, const char **field) {
  static const struct {
    const char *name;
    int lower;
  } metrics[] = {{"eval/loss", 1},
                 {"eval/mode_distance", 1},
                 {"eval/implicit_acc", 0},
                 {"eval/reward_margin", 0},
                 {"eval/preferred_mode_rate", 0}};
  for (size_t i = 0; metric && i < sizeof metrics / sizeof metrics[0]; i++)
    if (strcmp(metric, metrics[i].name) == 0) {
      if (field) *field = metrics[i].name + 5;
      return metrics[i].lower;
    }
  return -1;
}

/* after: bounded, no job 0, each id once. Whether the ids exist (and so are not this job's own or a
 * later one's) only dpod can tell: it refuses a job that names one it does not have. */
static int js_check_chain(const Dpod__V1__JobSpec *spec, const Dpod__V1__ModelSpec *m, char *err, size_t errlen) {
  if (spec->n_after > JOB_SPEC_AFTER_MAX)
    return js_errf(err, errlen, "after: at most %d jobs (got %zu)", JOB_SPEC_AFTER_MAX, spec->n_after);
  for (size_t i = 0; i < spec->n_after; i++) {
    if (spec->after[i] == 0) return js_errf(err, errlen, "after: job ids start at 1 (got 0)");
    for (size_t k = 0; k < i; k++)
      if (spec->after[k] == spec->after[i])
        return js_errf(err, errlen, "after: job %" PRIu64 " is listed twice", spec->after[i]);
  }
  const struct {
    const char *key, *value;
  } refs[] = {{"model.weights", m->weights}, {"model.reference_weights", m->reference_weights}};
  for (size_t i = 0; i < 2; i++) {
    uint64_t job;
    uint32_t step;
    if (job_spec_parse_ref(refs[i].value, &job, &step) < 0)
      return js_errf(err, errlen, "%s: a checkpoint of another job is job:ID or job:ID@step-N (got \"%.64s\")",
                     refs[i].key, refs[i].value);
  }
  return 0;
}

int job_spec_validate(const Dpod__V1__JobSpec *spec, unsigned max_ranks, char *err, size_t errlen) {
  static const Dpod__V1__ModelSpec model_defaults = DPOD__V1__MODEL_SPEC__INIT;
  static const Dpod__V1__DataSpec data_defaults = DPOD__V1__DATA_SPEC__INIT;
  static const Dpod__V1__TrainSpec train_defaults = DPOD__V1__TRAIN_SPEC__INIT;
  static const Dpod__V1__ResourceSpec resource_defaults = DPOD__V1__RESOURCE_SPEC__INIT;
  if (!spec) return js_errf(err, errlen, "spec: missing");
  const Dpod__V1__ResourceSpec *r = spec->resources ? spec->resources : &resource_defaults;
  const Dpod__V1__ModelSpec *m = spec->model ? spec->model : &model_defaults;
  const Dpod__V1__DataSpec *d = spec->data ? spec->data : &data_defaults;
  const Dpod__V1__TrainSpec *t = spec->train ? spec->train : &train_defaults;
  int status;

  const char *name = spec->name ? spec->name : "";
  if ((status = js_check_text("name", name, JS_NAME_MAX, err, errlen)) != 0) return status;
  for (size_t i = 0; name[i]; i++) {
    unsigned char ch = (unsigned char)name[i], next = (unsigned char)name[i + 1];
    /* C0 controls, DEL, and the C1 controls U+0080..U+009F (0xc2 0x80..0x9f in UTF-8). */
    if (ch < 0x20 || ch == 0x7f || (ch == 0xc2 && next >= 0x80 && next <= 0x9f))
      return js_errf(err, errlen, "name: must be printable (control character at byte %zu)", i);
  }

  js_uint_in("ranks", spec->ranks, 1, JS_RANKS_MAX);
  if (max_ranks > 0 && spec->ranks > max_ranks)
    return js_errf(err, errlen, "ranks: %u ranks requested but the daemon has only %u worker slot%s", spec->ranks,
                   max_ranks, max_ranks == 1 ? "" : "s");
  js_uint_in("threads_per_rank", spec->threads_per_rank, 1, JS_THREADS_MAX);
  js_uint_in("max_restarts", spec->max_restarts, 0, 100);

  const struct {
    const char *key, *value;
  } paths[] = {{"model.config", m->config},
               {"model.weights", m->weights},
               {"model.reference_weights", m->reference_weights},
               {"model.scheduler_config", m->scheduler_config},
               {"data.dataset", d->dataset}};
  for (size_t i = 0; i < sizeof paths / sizeof paths[0]; i++)
    if ((status = js_check_text(paths[i].key, paths[i].value ? paths[i].value : "", JS_PATH_MAX, err, errlen)) != 0)
      return status;

  /* A variant is part of a file name in a model folder: a word, never a path. */
  const char *variant = m->variant ? m->variant : "";
  if (strlen(variant) > 32) return js_errf(err, errlen, "model.variant: at most 32 characters (got %zu)", strlen(variant));
  for (size_t i = 0; variant[i]; i++)
    if (!isalnum((unsigned char)variant[i]) && variant[i] != '_' && variant[i] != '-')
      return js_errf(err, errlen, "model.variant: only letters, digits, '_' and '-' (byte %zu is not)", i);
  if (*variant && !(m->weights && *m->weights) && !(m->reference_weights && *m->reference_weights))
    return js_errf(err, errlen, "model.variant: \"%s\" selects weights in a model folder, but neither model.weights "
                   "nor model.reference_weights is set", variant);

  const char *ds = d->dataset ? d->dataset : "";
  int builtin = strcmp(ds, "builtin:synthetic") == 0;
  if (!*ds) return js_errf(err, errlen, "data.dataset: must be \"builtin:synthetic\" or a path (got an empty string)");
  if (!builtin && strncmp(ds, "builtin:", 8) == 0)
    return js_errf(err, errlen, "data.dataset: unknown built-in dataset '%s' (the only one is builtin:synthetic)", ds);
  if (builtin) {
    js_uint_in("data.pairs", d->pairs, 1, JS_PAIRS_MAX);
    js_uint_in("data.prompts", d->prompts, 1, JS_PAIRS_MAX);
    js_uint_in("data.text_len", d->text_len, 1, 1024);
  }
  if ((status = js_check_split("data.split", d->split ? d->split : "", err, errlen)) != 0) return status;
  if ((status = js_check_split("data.validation_split", d->validation_split ? d->validation_split : "", err, errlen)) !=
      0)
    return status;
  js_double_in("data.caption_dropout", d->caption_dropout, 0.0, 1.0, "a probability from 0 to 1");
  if (!protobuf_c_enum_descriptor_get_value(&dpod__v1__latent_source__descriptor, d->latents))
    return js_errf(err, errlen, "data.latents: unknown value %d (expected auto, frozen or sample)", (int)d->latents);
  if (builtin && (d->random_flip || d->latents == DPOD__V1__LATENT_SOURCE__LATENT_SOURCE_SAMPLE))
    return js_errf(err, errlen, "data.%s: builtin:synthetic stores no VAE posteriors to draw from (a dataset directory "
                   "with posteriors does)", d->random_flip ? "random_flip" : "latents");
  if (d->random_flip && d->latents == DPOD__V1__LATENT_SOURCE__LATENT_SOURCE_FROZEN)
    return js_errf(err, errlen, "data.random_flip: flips images by drawing from their flipped posteriors, which "
                   "data.latents: frozen does not do (use auto or sample)");

  js_uint_in("train.steps", t->steps, 1, JS_STEPS_MAX);
  js_uint_in("train.batch_size", t->batch_size, 1, JS_BATCH_MAX);
  js_uint_in("train.grad_accum", t->grad_accum, 1, JS_BATCH_MAX);
  uint64_t per_step = (uint64_t)t->batch_size * t->grad_accum * spec->ranks; /* each <= 2^16: no overflow */
  if (per_step > JS_PAIRS_PER_STEP_MAX)
    return js_errf(err, errlen,
                   "train.batch_size: batch_size x grad_accum x ranks must be at most %u pairs a step (got %" PRIu64
                   ")",
                   JS_PAIRS_PER_STEP_MAX, per_step);
  if (builtin && (uint64_t)d->pairs < (uint64_t)t->batch_size * spec->ranks)
    return js_errf(err, errlen,
                   "data.pairs: %u pairs cannot fill a batch of %u on each of %u ranks (need >= %" PRIu64
                   ", else a rank would have no data)",
                   d->pairs, t->batch_size, spec->ranks, (uint64_t)t->batch_size * spec->ranks);
  if (!protobuf_c_enum_descriptor_get_value(&dpod__v1__objective__descriptor, t->objective))
    return js_errf(err, errlen, "train.objective: unknown objective %d (expected dpo or sft)", (int)t->objective);
  if (!(t->beta > 0) || !isfinite(t->beta))
    return js_errf(err, errlen, "train.beta: must be > 0 and finite (got %g)", t->beta);
  if (!(t->learning_rate > 0) || !(t->learning_rate <= 1))
    return js_errf(err, errlen, "train.learning_rate: must be > 0 and at most 1 (got %g)", t->learning_rate);
  if (!(t->warmup_fraction >= 0 && t->warmup_fraction < 1))
    return js_errf(err, errlen, "train.warmup_fraction: must be >= 0 and < 1 (got %g)", t->warmup_fraction);
  if (t->warmup_steps > t->steps)
    return js_errf(err, errlen, "train.warmup_steps: must be <= train.steps (%u) (got %u)", t->steps, t->warmup_steps);
  if (!(t->adam_beta1 >= 0 && t->adam_beta1 < 1))
    return js_errf(err, errlen, "train.adam_beta1: must be >= 0 and < 1 (got %g)", t->adam_beta1);
  if (!(t->adam_beta2 >= 0 && t->adam_beta2 < 1))
    return js_errf(err, errlen, "train.adam_beta2: must be >= 0 and < 1 (got %g)", t->adam_beta2);
  if (!(t->adam_eps > 0) || !(t->adam_eps <= 1))
    return js_errf(err, errlen, "train.adam_eps: must be > 0 and at most 1 (got %g)", t->adam_eps);
  js_double_in("train.weight_decay", t->weight_decay, 0.0, 1e6, "from 0 to 1e6");
  js_double_in("train.max_grad_norm", t->max_grad_norm, 0.0, 1e12, "from 0 to 1e12 (0 disables clipping)");
  js_double_in("train.offset_noise", t->offset_noise, 0.0, 100.0, "from 0 to 100");
  js_uint_in("train.checkpoint_every", t->checkpoint_every, 0, JS_STEPS_MAX);
  js_uint_in("train.keep_last", t->keep_last, 1, 10000);
  js_uint_in("train.eval_every", t->eval_every, 0, JS_STEPS_MAX);
  js_uint_in("train.eval_pairs", t->eval_pairs, 0, JS_PAIRS_MAX);
  js_uint_in("train.eval_samples", t->eval_samples, 0, JS_BATCH_MAX);
  js_uint_in("train.eval_sample_steps", t->eval_sample_steps, 1, 1000);
  js_double_in("train.eval_guidance", t->eval_guidance, 0.0, 1000.0, "from 0 to 1000 (1 disables guidance)");
  js_double_in("train.heartbeat_timeout", t->heartbeat_timeout, 0.0, 7 * 86400.0,
               "from 0 to 604800 seconds (0: derived from the step time)");
  const char *best = t->keep_best ? t->keep_best : "";
  if (*best && job_spec_keep_best_lower(best, NULL) < 0)
    return js_errf(err, errlen, "train.keep_best: unknown metric \"%.64s\" (expected eval/loss, eval/implicit_acc, "
                   "eval/reward_margin, eval/preferred_mode_rate or eval/mode_distance)", best);
  if (*best && (t->eval_every == 0 || t->checkpoint_every % t->eval_every != 0))
    return js_errf(err, errlen, "train.keep_best: needs an evaluation at every checkpoint: train.eval_every (%u) must be "
                   "> 0 and divide train.checkpoint_every (%u)", t->eval_every, t->checkpoint_every);
  if ((status = js_check_chain(spec, m, err, errlen)) != 0) return status;
  if ((status = job_spec_validate_lora_(spec, err, errlen)) != 0) return status;
  if ((status = job_spec_validate_optim_(spec, err, errlen)) != 0) return status;
  if ((status = job_spec_validate_device_(spec, err, errlen)) != 0) return status;
  const char *prec = t->precision ? t->precision : "fp32";
  if (strcmp(prec, "fp32") != 0 && strcmp(prec, "bf16") != 0 && strcmp(prec, "fp16") != 0)
    return js_errf(err, errlen, "train.precision: must be \"fp32\", \"bf16\" or \"fp16\" (got '%.64s')", prec);
  if ((status = job_spec_validate_loss_scale_(spec, err, errlen)) != 0) return status;

  js_uint_in("resources.ranks_per_node", r->ranks_per_node, 0, JS_RANKS_MAX);
  js_uint_in("resources.gpus_per_rank", r->gpus_per_rank, 0, 64);
  js_uint_in("resources.memory_mb", r->memory_mb, 0, 64u << 20); /* 64 TiB a node */
  js_uint_in("resources.time_limit_minutes", r->time_limit_minutes, 0, 366u * 24 * 60);
  if ((status = js_check_slurm_word("resources.partition", r->partition ? r->partition : "", ",", err, errlen)) ||
      (status = js_check_slurm_word("resources.account", r->account ? r->account : "", "", err, errlen)) ||
      (status = js_check_slurm_word("resources.qos", r->qos ? r->qos : "", "", err, errlen)) ||
      (status = js_check_slurm_word("resources.constraint", r->constraint ? r->constraint : "", ",&|[]*()", err,
                                    errlen)) ||
      (status = job_spec_check_sbatch_options(r->sbatch_options ? r->sbatch_options : "", err, errlen)))
    return status;
  return 0;
}

int job_spec_uses_resources(const Dpod__V1__JobSpec *spec, const char **field) {
  const Dpod__V1__ResourceSpec *r = spec->resources;
  *field = NULL;
  if (!r) return 0;
  if (r->ranks_per_node) *field = "resources.ranks_per_node";
  else if (r->gpus_per_rank) *field = "resources.gpus_per_rank";
  else if (r->memory_mb) *field = "resources.memory_mb";
  else if (r->time_limit_minutes) *field = "resources.time_limit_minutes";
  else if (r->partition && *r->partition) *field = "resources.partition";
  else if (r->account && *r->account) *field = "resources.account";
  else if (r->qos && *r->qos) *field = "resources.qos";
  else if (r->constraint && *r->constraint) *field = "resources.constraint";
  else if (r->sbatch_options && *r->sbatch_options) *field = "resources.sbatch_options";
  return *field != NULL;
}
