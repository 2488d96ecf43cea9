/* What the Logs streams do to a line before sending it: protobuf strings are UTF-8, ranks print bytes. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "cmocka_main.h"

#include <string.h>

#include "logs.h"

static void fixed(const char *in, const char *want) {
  char buf[64];
  size_t n = strlen(in);
  memcpy(buf, in, n + 1);
  logs_fix_utf8(buf, n);
  assert_string_equal(buf, want);
}

/* Valid UTF-8 is kept byte for byte; each byte of anything else becomes '?'. */
static void invalid_utf8_becomes_question_marks(void **state) {
  (void)state;
  fixed("plain ascii", "plain ascii");
  fixed("loss \xc3\xa9t\xc3\xa9 \xe2\x86\x92 0.69 \xf0\x9f\x94\xa5", "loss \xc3\xa9t\xc3\xa9 \xe2\x86\x92 0.69 \xf0\x9f\x94\xa5");
  fixed("a\xff" "b", "a?b");
  fixed("cut \xe2\x86", "cut ??");          /* a sequence cut by the end of the line */
  fixed("\xc0\xaf", "??");                  /* an overlong '/' */
  fixed("\xed\xa0\x80", "???");             /* a UTF-16 surrogate */
  fixed("\xf4\x90\x80\x80", "????");        /* past U+10FFFF */
  fixed("\xe2" "x\x86", "?x?");
}

int main(int argc, char **argv) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(invalid_utf8_becomes_question_marks),
  };
  return CMOCKA_MAIN("logs", tests, NULL, NULL);
}
