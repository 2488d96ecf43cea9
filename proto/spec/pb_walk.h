/* Reading and writing protobuf-c messages by their descriptors: the one walker behind job files (YAML,
 * --set, --dry-run) and dpoctl's JSON, so that a field added to dpod.proto is handled everywhere at once.
 *
 * Everything here follows protobuf-c's memory rules: sub-messages are malloc'd, strings that still point
 * at a field's default are not owned, so a message stays freeable with protobuf_c_message_free_unpacked(). */
#ifndef DPOD_PB_WALK_H
#define DPOD_PB_WALK_H

#include <protobuf-c/protobuf-c.h>
#include <stddef.h>

/* The address of field f's member in msg (for a repeated field: of its array pointer). */
void *pb_member(const ProtobufCMessage *msg, const ProtobufCFieldDescriptor *f);

/* Singular sub-message field f of msg, created (all defaults) if it is absent. NULL when out of memory. */
ProtobufCMessage *pb_sub_ensure(ProtobufCMessage *msg, const ProtobufCFieldDescriptor *f);

/* Whether a singular field has a value to show: a set optional scalar (or one with a default), a string
 * or sub-message that is there, the chosen member of a one-of. Repeated fields: pb_count(). */
int pb_is_present(const ProtobufCMessage *msg, const ProtobufCFieldDescriptor *f);

/* Elements of repeated field f, and the size of one element (for indexing the array). */
size_t pb_count(const ProtobufCMessage *msg, const ProtobufCFieldDescriptor *f);
size_t pb_value_size(const ProtobufCFieldDescriptor *f);
/* Element k of repeated field f. */
const void *pb_element(const ProtobufCMessage *msg, const ProtobufCFieldDescriptor *f, size_t k);

/* A scalar value (at `value`, of field f's type) as a job file writes it: strings unquoted, doubles in
 * the shortest form that reads back the same, enums by short name. DPOD_EUNSUPPORTED for non-scalars. */
int pb_format_scalar(const ProtobufCFieldDescriptor *f, const void *value, char *buf, size_t len);

/* Enum value names as job files spell them: "dpo" for OBJECTIVE_DPO (the value's name without the
 * prefix proto style derives from the enum's name, in lower case); the full name when it lacks that
 * prefix. Writes into buf and returns it. */
const char *pb_enum_short_name(const ProtobufCEnumDescriptor *ed, const char *full_name, char *buf, size_t len);
/* The short name of `value` ("running" for JOB_STATE_RUNNING); its number for a value the descriptor
 * does not know. Returns buf. */
const char *pb_enum_name(const ProtobufCEnumDescriptor *ed, int value, char *buf, size_t len);
/* Parses a short or full value name, in any case. Returns 0 or -1. */
int pb_enum_parse(const ProtobufCEnumDescriptor *ed, const char *text, int *out);

#endif
