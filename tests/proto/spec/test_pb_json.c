/* Protobuf's JSON mapping (proto/spec/pb_json.c), field type by field type, and its YAML rendering.
 * The independent check against google.protobuf.json_format is pb_json_oracle.py; these cases pin the
 * exact text. `test_pb_json NAME` runs one case. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "cmocka_main.h"

#include "job_spec.h"
#include "pb_json.h"
#include "pb_json_types.pb-c.h"

/* The message as one-line JSON; the caller frees it. */
static char *json_of(const ProtobufCMessage *m) {
  char *s = pb_json_print(m, 0);
  assert_non_null(s);
  return s;
}

static void assert_json(const ProtobufCMessage *m, const char *want) {
  char *s = json_of(m);
  assert_string_equal(s, want);
  cJSON_free(s);
}

static void unset_fields_are_omitted_even_with_a_default(void **state) {
  (void)state;
  Dpodtest__AllTypes m = DPODTEST__ALL_TYPES__INIT;
  assert_json(&m.base, "{}");
  m.has_with_default = 1; /* set to its default: on the wire, so in the JSON */
  m.str_default = "x";    /* a string of its own, not the default's pointer */
  assert_json(&m.base, "{\"with_default\":7,\"str_default\":\"x\"}");
}

static void integers_32_bit_are_numbers_64_bit_are_strings(void **state) {
  (void)state;
  Dpodtest__AllTypes m = DPODTEST__ALL_TYPES__INIT;
  m.has_i32 = m.has_i64 = m.has_u32 = m.has_u64 = m.has_s32 = m.has_s64 = 1;
  m.has_f32 = m.has_f64 = m.has_sf32 = m.has_sf64 = 1;
  m.i32 = INT32_MIN;
  m.i64 = INT64_MIN;
  m.u32 = UINT32_MAX;
  m.u64 = UINT64_MAX;
  m.s32 = -5;
  m.s64 = -6;
  m.f32 = 7;
  m.f64 = 8;
  m.sf32 = -9;
  m.sf64 = -10;
  assert_json(&m.base, "{\"i32\":-2147483648,\"i64\":\"-9223372036854775808\",\"u32\":4294967295,"
                       "\"u64\":\"18446744073709551615\",\"s32\":-5,\"s64\":\"-6\",\"f32\":7,\"f64\":\"8\","
                       "\"sf32\":-9,\"sf64\":\"-10\"}");
}

static void doubles_are_shortest_numbers_and_non_finite_ones_strings(void **state) {
  (void)state;
  Dpodtest__AllTypes m = DPODTEST__ALL_TYPES__INIT;
  m.has_d = m.has_fl = 1;
  m.d = 0.1;
  m.fl = 0.1f; /* as a float reads it back, not 0.10000000149011612 */
  assert_json(&m.base, "{\"fl\":0.1,\"d\":0.1}");
  m.d = 1e-300;
  m.fl = 3;
  assert_json(&m.base, "{\"fl\":3,\"d\":1e-300}");
  m.d = NAN;
  m.fl = INFINITY;
  assert_json(&m.base, "{\"fl\":\"Infinity\",\"d\":\"NaN\"}");
  m.d = -INFINITY;
  m.has_fl = 0;
  assert_json(&m.base, "{\"d\":\"-Infinity\"}");
  m.d = 2.0 / 3.0;
  char *s = json_of(&m.base);
  double back = strtod(s + strlen("{\"d\":"), NULL);
  assert_true(back == 2.0 / 3.0);
  cJSON_free(s);
}

static void strings_are_escaped_bools_are_literals(void **state) {
  (void)state;
  Dpodtest__AllTypes m = DPODTEST__ALL_TYPES__INIT;
  m.str = "a\"b\\c\n\x01\xc3\xa9";
  m.has_b = 1;
  m.b = 0;
  assert_json(&m.base, "{\"b\":false,\"str\":\"a\\\"b\\\\c\\n\\u0001\xc3\xa9\"}");
}

static void bytes_are_base64_with_padding(void **state) {
  (void)state;
  Dpodtest__AllTypes m = DPODTEST__ALL_TYPES__INIT;
  uint8_t data[] = {0x00, 0xff, 0x10, 0x41};
  m.has_by = 1;
  const char *want[] = {"{\"by\":\"\"}", "{\"by\":\"AA==\"}", "{\"by\":\"AP8=\"}", "{\"by\":\"AP8Q\"}",
                        "{\"by\":\"AP8QQQ==\"}"};
  for (size_t n = 0; n <= 4; n++) {
    m.by.data = data;
    m.by.len = n;
    assert_json(&m.base, want[n]);
  }
}

static void enums_by_full_name_unknown_values_by_number(void **state) {
  (void)state;
  Dpodtest__AllTypes m = DPODTEST__ALL_TYPES__INIT;
  m.has_color = 1;
  m.color = DPODTEST__COLOR__COLOR_GREEN;
  assert_json(&m.base, "{\"color\":\"COLOR_GREEN\"}");
  m.color = 5;
  assert_json(&m.base, "{\"color\":5}");
}

static void repeated_fields_are_arrays_and_empty_ones_omitted(void **state) {
  (void)state;
  Dpodtest__AllTypes m = DPODTEST__ALL_TYPES__INIT;
  int64_t i64s[] = {1, -2};
  double ds[] = {0.5, NAN};
  char *strs[] = {"a", ""};
  Dpodtest__Color colors[] = {DPODTEST__COLOR__COLOR_RED, DPODTEST__COLOR__COLOR_GREEN};
  Dpodtest__Inner in1 = DPODTEST__INNER__INIT, in2 = DPODTEST__INNER__INIT;
  in1.s = "one";
  Dpodtest__Inner *inners[] = {&in1, &in2};
  m.n_r_i64 = 2, m.r_i64 = i64s;
  m.n_r_d = 2, m.r_d = ds;
  m.n_r_str = 2, m.r_str = strs;
  m.n_r_inner = 2, m.r_inner = inners;
  m.n_r_color = 2, m.r_color = colors;
  assert_json(&m.base, "{\"r_i64\":[\"1\",\"-2\"],\"r_d\":[0.5,\"NaN\"],\"r_str\":[\"a\",\"\"],"
                       "\"r_inner\":[{\"s\":\"one\"},{}],\"r_color\":[\"COLOR_RED\",\"COLOR_GREEN\"]}");
  m.n_r_i64 = m.n_r_d = m.n_r_str = m.n_r_inner = m.n_r_color = 0;
  assert_json(&m.base, "{}");
}

static void messages_nest_and_a_oneof_shows_its_chosen_member(void **state) {
  (void)state;
  Dpodtest__AllTypes m = DPODTEST__ALL_TYPES__INIT;
  Dpodtest__Inner leaf = DPODTEST__INNER__INIT, top = DPODTEST__INNER__INIT;
  leaf.s = "leaf";
  Dpodtest__Inner *kids[] = {&leaf};
  top.n_children = 1;
  top.children = kids;
  m.inner = &top;
  m.choice_case = DPODTEST__ALL_TYPES__CHOICE_PICK_U32;
  m.pick_u32 = 0;
  assert_json(&m.base, "{\"inner\":{\"children\":[{\"s\":\"leaf\"}]},\"pick_u32\":0}");
  m.choice_case = DPODTEST__ALL_TYPES__CHOICE_PICK_INNER;
  m.pick_inner = &leaf;
  assert_json(&m.base, "{\"inner\":{\"children\":[{\"s\":\"leaf\"}]},\"pick_inner\":{\"s\":\"leaf\"}}");
}

static void a_job_speaks_the_proto_names(void **state) {
  (void)state;
  Dpod__V1__Job job = DPOD__V1__JOB__INIT;
  job.has_id = job.has_state = job.has_last_seq = 1;
  job.id = 12;
  job.state = DPOD__V1__JOB_STATE__JOB_STATE_SUCCEEDED;
  job.last_seq = 40;
  assert_json(&job.base, "{\"id\":\"12\",\"state\":\"JOB_STATE_SUCCEEDED\",\"last_seq\":\"40\"}");
}

/* The YAML of a tree reads as the same structure: block mappings and sequences, strings quoted. */
static void yaml_renders_the_same_tree(void **state) {
  (void)state;
  Dpodtest__AllTypes m = DPODTEST__ALL_TYPES__INIT;
  Dpodtest__Inner a = DPODTEST__INNER__INIT, b = DPODTEST__INNER__INIT, empty = DPODTEST__INNER__INIT;
  a.s = "a: b";
  Dpodtest__Inner *kids[] = {&b};
  b.s = "yes";
  a.n_children = 1;
  a.children = kids;
  Dpodtest__Inner *inners[] = {&a, &empty};
  int64_t i64s[] = {3};
  m.has_u64 = 1;
  m.u64 = 5;
  m.inner = &empty;
  m.n_r_inner = 2, m.r_inner = inners;
  m.n_r_i64 = 1, m.r_i64 = i64s;
  m.has_d = 1;
  m.d = NAN;
  cJSON *tree = pb_json_message(&m.base);
  assert_non_null(tree);
  char *text = NULL;
  size_t len = 0;
  FILE *f = open_memstream(&text, &len);
  assert_int_equal(pb_yaml_write(tree, f), 0);
  fclose(f);
  assert_string_equal(text, "u64: \"5\"\n"
                            "d: \"NaN\"\n"
                            "inner: {}\n"
                            "r_i64:\n"
                            "  - \"3\"\n"
                            "r_inner:\n"
                            "  - s: \"a: b\"\n"
                            "    children:\n"
                            "      - s: \"yes\"\n"
                            "  - {}\n");
  free(text);
  cJSON_Delete(tree);
}

int main(int argc, char **argv) {
#define T(name) cmocka_unit_test(name)
  const struct CMUnitTest tests[] = {
      T(unset_fields_are_omitted_even_with_a_default),
      T(integers_32_bit_are_numbers_64_bit_are_strings),
      T(doubles_are_shortest_numbers_and_non_finite_ones_strings),
      T(strings_are_escaped_bools_are_literals),
      T(bytes_are_base64_with_padding),
      T(enums_by_full_name_unknown_values_by_number),
      T(repeated_fields_are_arrays_and_empty_ones_omitted),
      T(messages_nest_and_a_oneof_shows_its_chosen_member),
      T(a_job_speaks_the_proto_names),
      T(yaml_renders_the_same_tree),
  };
  return CMOCKA_MAIN("pb_json", tests, NULL, NULL);
}
