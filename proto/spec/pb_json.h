/* Protobuf's canonical JSON mapping for any protobuf-c message, by its descriptor, and a YAML rendering
 * of the same tree: what `dpoctl -o json|yaml` prints, so that scripts read the names the .proto gives.
 *
 * The mapping is the one google.protobuf.json_format.MessageToJson(preserving_proto_field_name=True)
 * writes (tests/proto/spec/pb_json_oracle.py checks it against that): field names as in the .proto; only
 * fields present on the wire (a proto2 optional field that is not set is omitted, even if it has a
 * default; an empty repeated field too); enum values by their full name ("JOB_STATE_SUCCEEDED"), by
 * number when the descriptor does not know the value; 64-bit integers as decimal strings; 32-bit
 * integers as numbers; doubles and floats as numbers in the shortest form that reads back the same,
 * NaN and infinities as the strings "NaN", "Infinity", "-Infinity"; bytes in base64; repeated fields
 * as arrays; the chosen member of a one-of as a field of its own. Map fields are not handled (dpod's
 * protos have none): they would come out as arrays of key/value objects. */
#ifndef DPOD_PB_JSON_H
#define DPOD_PB_JSON_H

#include <cjson/cJSON.h>
#include <protobuf-c/protobuf-c.h>
#include <stdio.h>

/* The message as a JSON tree. Numbers are cJSON raw items holding their exact text. The caller frees
 * it with cJSON_Delete(); NULL when out of memory. */
cJSON *pb_json_message(const ProtobufCMessage *msg);

/* The message as JSON text: indented over several lines (pretty) or on one line. Malloc'd: the caller
 * frees it with cJSON_free(); NULL when out of memory. */
char *pb_json_print(const ProtobufCMessage *msg, int pretty);

/* Writes a tree from pb_json_message() (or an array of them) as a YAML document: mappings in block
 * style, strings double-quoted as JSON writes them (a valid YAML scalar, so "NaN", "12" and "yes" stay
 * strings), numbers, booleans and empty collections ({} / []) as they are. Returns 0 or -1 on a write
 * error. */
int pb_yaml_write(const cJSON *tree, FILE *out);

#endif
