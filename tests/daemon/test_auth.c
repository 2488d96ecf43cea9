/* daemon/auth.c: the token file (made 0600 on first use, refused when others could read it, when it is
 * a link or not ours, or when it holds no usable token, and never quoted) and the loopback rule. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "cmocka_main.h"
#include "test_util.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "auth.h"
#include "dpod_error.h"

static char dir[PATH_MAX], path[PATH_MAX + 16], token[AUTH_TOKEN_MAX + 1], err[512];

static int setup(void **state) {
  (void)state;
  if (test_mkdtemp(dir, sizeof dir, "dpod-auth") != 0) return -1;
  snprintf(path, sizeof path, "%s/token", dir);
  return 0;
}

static int teardown(void **state) {
  (void)state;
  return test_rmtree(dir);
}

static void write_token_file(const char *text, mode_t mode) {
  unlink(path);
  FILE *f = fopen(path, "w");
  assert_non_null(f);
  fputs(text, f);
  fclose(f);
  assert_int_equal(chmod(path, mode), 0);
}

static void token_is_made_once_private_and_then_read_back(void **state) {
  (void)state;
  mode_t old = umask(0);
  int created = 0;
  assert_int_equal(auth_token_load(path, token, &created, err, sizeof err), 0);
  umask(old);
  assert_int_equal(created, 1);
  assert_int_equal(strlen(token), AUTH_TOKEN_HEX_LEN);
  struct stat st;
  assert_int_equal(stat(path, &st), 0);
  assert_int_equal(st.st_mode & 0777, 0600);
  char first[AUTH_TOKEN_MAX + 1];
  strcpy(first, token);
  assert_int_equal(auth_token_load(path, token, &created, err, sizeof err), 0);
  assert_int_equal(created, 0);
  assert_string_equal(token, first);
  /* Another file gets another token. */
  snprintf(path, sizeof path, "%s/token2", dir);
  assert_int_equal(auth_token_load(path, token, &created, err, sizeof err), 0);
  assert_string_not_equal(token, first);
}

static void token_file_a_user_wrote_is_trimmed_and_checked(void **state) {
  (void)state;
  int created;
  write_token_file("a-token-the-user-chose\n", 0600);
  assert_int_equal(auth_token_load(path, token, &created, err, sizeof err), 0);
  assert_string_equal(token, "a-token-the-user-chose");
  static const char *const bad[] = {"short\n", "has a blank in it\n", "", "two\nlines-of-token-text\n"};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    write_token_file(bad[i], 0600);
    err[0] = '\0';
    assert_int_equal(auth_token_load(path, token, &created, err, sizeof err), DPOD_EINVAL);
    assert_non_null(strstr(err, path));
    if (*bad[i]) assert_null(strstr(err, bad[i] + 1)); /* the content is never quoted */
  }
}

static void token_file_others_could_read_or_a_link_is_refused(void **state) {
  (void)state;
  int created;
  write_token_file("secret-secret-secret-secret\n", 0640);
  assert_int_equal(auth_token_load(path, token, &created, err, sizeof err), DPOD_EACCESS);
  assert_non_null(strstr(err, "readable by others"));
  assert_null(strstr(err, "secret-secret"));
  char link[PATH_MAX + 16];
  snprintf(link, sizeof link, "%s/link", dir);
  assert_int_equal(chmod(path, 0600), 0);
  assert_int_equal(symlink(path, link), 0);
  assert_int_equal(auth_token_load(link, token, &created, err, sizeof err), DPOD_EACCESS);
  assert_non_null(strstr(err, "symbolic link"));
  snprintf(link, sizeof link, "%s/sub", dir);
  assert_int_equal(mkdir(link, 0700), 0);
  assert_int_equal(auth_token_load(link, token, &created, err, sizeof err), DPOD_EINVAL);
}

static void only_loopback_addresses_count_as_loopback(void **state) {
  (void)state;
  static const char *const yes[] = {"127.0.0.1:50051", "127.1.2.3:1", "localhost:50051", "[::1]:50051",
                                    "ipv4:127.0.0.1:9", "ipv6:[::1]:9"};
  static const char *const no[] = {"0.0.0.0:50051", "[::]:50051", ":50051", "10.0.0.1:50051", "128.0.0.1:1",
                                   "127.0.0.1.example.com:1", "localhost.evil:1", "127.0.0.256:1", "example.com:80"};
  for (size_t i = 0; i < sizeof yes / sizeof yes[0]; i++)
    if (!auth_addr_is_loopback(yes[i])) fail_msg("%s is loopback", yes[i]);
  for (size_t i = 0; i < sizeof no / sizeof no[0]; i++)
    if (auth_addr_is_loopback(no[i])) fail_msg("%s is not loopback", no[i]);
}

int main(int argc, char **argv) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(token_is_made_once_private_and_then_read_back, setup, teardown),
      cmocka_unit_test_setup_teardown(token_file_a_user_wrote_is_trimmed_and_checked, setup, teardown),
      cmocka_unit_test_setup_teardown(token_file_others_could_read_or_a_link_is_refused, setup, teardown),
      cmocka_unit_test(only_loopback_addresses_count_as_loopback),
  };
  return CMOCKA_MAIN("auth", tests, NULL, NULL);
}
