/* proto/base: number parsing, whole-file reads, the atomic write, mkdir -p and its private-directory
 * checks, path containment, no-follow opens, error formatting. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "cmocka_main.h"
#include "test_util.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "dpod_error.h"
#include "dpod_file.h"
#include "dpod_parse.h"

static char dir[PATH_MAX];

static int setup(void **state) {
  (void)state;
  return test_mkdtemp(dir, sizeof dir, "dpod-base");
}

static int teardown(void **state) {
  (void)state;
  return test_rmtree(dir);
}

static void in_dir(char *buf, size_t len, const char *name) { snprintf(buf, len, "%s/%s", dir, name); }

static void parse_takes_only_whole_numbers_in_range(void **state) {
  (void)state;
  uint64_t u;
  int64_t i;
  assert_int_equal(dpod_parse_u64("0", 10, &u), 0);
  assert_int_equal(u, 0);
  assert_int_equal(dpod_parse_u64("18446744073709551615", UINT64_MAX, &u), 0);
  assert_true(u == UINT64_MAX);
  assert_int_equal(dpod_parse_u64("18446744073709551616", UINT64_MAX, &u), -2); /* strtoull saturates */
  assert_int_equal(dpod_parse_u64("11", 10, &u), -2);
  const char *bad[] = {"", "-1", "+1", " 1", "1 ", "1x", "0x10", "1.5", "abc"};
  for (size_t k = 0; k < sizeof bad / sizeof bad[0]; k++) assert_int_equal(dpod_parse_u64(bad[k], 100, &u), -1);
  assert_int_equal(dpod_parse_i64("-5", -10, 10, &i), 0);
  assert_true(i == -5);
  assert_int_equal(dpod_parse_i64("-11", -10, 10, &i), -2);
  assert_int_equal(dpod_parse_i64("--1", -10, 10, &i), -1);
}

static void utf8_check_finds_the_first_bad_byte(void **state) {
  (void)state;
  assert_int_equal(dpod_utf8_invalid_at(""), -1);
  assert_int_equal(dpod_utf8_invalid_at("plain ascii"), -1);
  assert_int_equal(dpod_utf8_invalid_at("caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80 \xf4\x8f\xbf\xbf"), -1);
  static const struct {
    const char *s;
    long at;
  } bad[] = {
      {"ab\xff", 2},                 /* never in UTF-8 */
      {"\x80", 0},                   /* a continuation byte first */
      {"x\xc3", 1},                  /* cut short */
      {"x\xc3" "a", 1},              /* not followed by a continuation */
      {"\xc0\xaf", 0},               /* overlong '/' */
      {"\xe0\x80\xaf", 0},           /* overlong, three bytes */
      {"ok\xed\xa0\x80", 2},         /* a surrogate */
      {"\xf4\x90\x80\x80", 0},       /* above U+10FFFF */
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) assert_int_equal(dpod_utf8_invalid_at(bad[i].s), bad[i].at);
}

static void network_file_systems_are_named(void **state) {
  (void)state;
  assert_string_equal(dpod_network_fs_name(0x6969), "nfs");
  assert_string_equal(dpod_network_fs_name(0x0bd00bd0), "lustre");
  assert_string_equal(dpod_network_fs_name(0x47504653), "gpfs");
  assert_null(dpod_network_fs_name(0xef53));      /* ext4 */
  assert_null(dpod_network_fs_name(0x01021994));  /* tmpfs */
  assert_null(dpod_network_fs_name(0x9123683e));  /* btrfs */
  assert_null(dpod_path_network_fs(dir));         /* the test's own temporary directory is local */
}

static void errf_formats_and_returns_the_status(void **state) {
  (void)state;
  char err[16];
  assert_int_equal(dpod_errf(err, sizeof err, DPOD_EIO, "%s %d", "abcdefghijklmnopq", 7), DPOD_EIO);
  assert_string_equal(err, "abcdefghijklmno"); /* cut to fit, terminated */
  assert_int_equal(dpod_errf(NULL, 0, DPOD_EINVAL, "ignored"), DPOD_EINVAL);
  assert_string_equal(dpod_err_name(DPOD_EACCESS), "DPOD_EACCESS");
  assert_string_equal(dpod_strerror(DPOD_EUNAVAILABLE), "service unavailable");
}

static void read_file_reads_whole_files_and_refuses_others(void **state) {
  (void)state;
  char path[PATH_MAX + 32], err[PATH_MAX + 128];
  char *text = NULL;
  size_t len = 0;
  in_dir(path, sizeof path, "a.txt");
  assert_int_equal(dpod_write_file_atomic(path, "hello\0world", 11, 0, err, sizeof err), 0);
  assert_int_equal(dpod_read_file(path, 0, &text, &len, err, sizeof err), 0);
  assert_int_equal(len, 11);
  assert_memory_equal(text, "hello\0world", 12); /* and a terminating NUL */
  free(text);
  /* Over the bound: refused without reading, naming the file, not its bytes. */
  assert_int_equal(dpod_read_file(path, 10, &text, &len, err, sizeof err), DPOD_EINVAL);
  assert_null(text);
  assert_non_null(strstr(err, "a.txt"));
  assert_null(strstr(err, "hello"));
  /* Missing, a directory, a FIFO (which would block a reader forever). */
  in_dir(path, sizeof path, "missing");
  assert_int_equal(dpod_read_file(path, 0, &text, &len, err, sizeof err), DPOD_ENOENT);
  assert_int_equal(dpod_read_file(dir, 0, &text, &len, err, sizeof err), DPOD_EINVAL);
  in_dir(path, sizeof path, "fifo");
  assert_int_equal(mkfifo(path, 0600), 0);
  assert_int_equal(dpod_read_file(path, 0, &text, &len, err, sizeof err), DPOD_EINVAL);
  assert_non_null(strstr(err, "not a regular file"));
}

static void atomic_write_replaces_whole_and_leaves_no_temporary(void **state) {
  (void)state;
  char path[PATH_MAX + 32], tmp[PATH_MAX + 64], err[PATH_MAX + 128];
  in_dir(path, sizeof path, "f");
  snprintf(tmp, sizeof tmp, "%s.tmp", path);
  assert_int_equal(dpod_write_file_atomic(path, "one", 3, DPOD_WRITE_PRIVATE, err, sizeof err), 0);
  struct stat st;
  assert_int_equal(stat(path, &st), 0);
  assert_int_equal(st.st_mode & 0777, 0600);
  assert_int_equal(dpod_write_file_atomic(path, "second", 6, DPOD_WRITE_NO_DIR_SYNC, err, sizeof err), 0);
  char *text = NULL;
  assert_int_equal(dpod_read_file(path, 0, &text, NULL, err, sizeof err), 0);
  assert_string_equal(text, "second");
  free(text);
  assert_int_equal(access(tmp, F_OK), -1);

  /* A temporary name that is a symbolic link (planted by someone) is not followed. */
  char target[PATH_MAX + 32];
  in_dir(target, sizeof target, "victim");
  assert_int_equal(dpod_write_file_atomic(target, "keep", 4, 0, err, sizeof err), 0);
  assert_int_equal(symlink(target, tmp), 0);
  assert_true(dpod_write_file_atomic(path, "evil", 4, 0, err, sizeof err) < 0);
  assert_int_equal(dpod_read_file(target, 0, &text, NULL, err, sizeof err), 0);
  assert_string_equal(text, "keep");
  free(text);

  /* Streamed: nothing under the name until the commit; an abort leaves nothing at all. */
  dpod_atomic_file f;
  unlink(tmp);
  in_dir(path, sizeof path, "streamed");
  assert_int_equal(dpod_atomic_open(&f, path, 0, err, sizeof err), 0);
  assert_int_equal(dpod_atomic_write(&f, "ab", 2, err, sizeof err), 0);
  assert_int_equal(access(path, F_OK), -1);
  assert_int_equal(dpod_atomic_commit(&f, err, sizeof err), 0);
  assert_int_equal(access(path, F_OK), 0);
  in_dir(path, sizeof path, "aborted");
  assert_int_equal(dpod_atomic_open(&f, path, 0, err, sizeof err), 0);
  dpod_atomic_abort(&f);
  snprintf(tmp, sizeof tmp, "%s.tmp", path);
  assert_int_equal(access(path, F_OK), -1);
  assert_int_equal(access(tmp, F_OK), -1);
}

static void mkdirs_makes_private_directories_whatever_the_umask(void **state) {
  (void)state;
  char path[PATH_MAX + 32], err[PATH_MAX + 128];
  in_dir(path, sizeof path, "a/b/c");
  mode_t old = umask(0);
  int rc = dpod_mkdirs(path, 0700, DPOD_MKDIRS_PRIVATE, err, sizeof err);
  umask(old);
  assert_int_equal(rc, 0);
  struct stat st;
  assert_int_equal(stat(path, &st), 0);
  assert_true(S_ISDIR(st.st_mode));
  assert_int_equal(st.st_mode & 0777, 0700);
  assert_int_equal(dpod_mkdirs(path, 0700, DPOD_MKDIRS_PRIVATE, err, sizeof err), 0); /* exists: fine */
  /* An existing directory others may write into is refused, by name. */
  in_dir(path, sizeof path, "open");
  assert_int_equal(mkdir(path, 0700), 0);
  assert_int_equal(chmod(path, 0777), 0);
  assert_int_equal(dpod_mkdirs(path, 0700, DPOD_MKDIRS_PRIVATE, err, sizeof err), DPOD_EACCESS);
  assert_non_null(strstr(err, "writable by others"));
  assert_int_equal(dpod_mkdirs(path, 0700, 0, err, sizeof err), 0); /* without the flag: no check */
  /* A file where a component should be. */
  in_dir(path, sizeof path, "file");
  assert_int_equal(dpod_write_file_atomic(path, "x", 1, 0, err, sizeof err), 0);
  in_dir(path, sizeof path, "file/sub");
  assert_true(dpod_mkdirs(path, 0700, 0, err, sizeof err) < 0);
}

static void path_inside_resolves_links_and_dots(void **state) {
  (void)state;
  char inner[PATH_MAX + 32], link[PATH_MAX + 32], dots[PATH_MAX + 64], err[256];
  in_dir(inner, sizeof inner, "data");
  assert_int_equal(dpod_mkdirs(inner, 0700, 0, err, sizeof err), 0);
  in_dir(link, sizeof link, "data/escape");
  assert_int_equal(symlink("/etc", link), 0);
  assert_int_equal(dpod_path_inside(inner, dir), 1);
  assert_int_equal(dpod_path_inside(dir, dir), 1);
  assert_int_equal(dpod_path_inside(link, inner), 0);
  snprintf(dots, sizeof dots, "%s/../..", inner);
  assert_int_equal(dpod_path_inside(dots, inner), 0);
  /* A sibling whose name starts like the directory is not inside it. */
  char sibling[PATH_MAX + 32];
  in_dir(sibling, sizeof sibling, "data2");
  assert_int_equal(dpod_mkdirs(sibling, 0700, 0, err, sizeof err), 0);
  assert_int_equal(dpod_path_inside(sibling, inner), 0);
  assert_true(dpod_path_inside("/no/such/path", inner) < 0);
}

static void open_regular_nofollow_refuses_links_and_specials(void **state) {
  (void)state;
  char file[PATH_MAX + 32], link[PATH_MAX + 32], err[PATH_MAX + 128];
  in_dir(file, sizeof file, "plain");
  assert_int_equal(dpod_write_file_atomic(file, "data", 4, 0, err, sizeof err), 0);
  int fd = dpod_open_regular_nofollow(file, err, sizeof err);
  assert_true(fd >= 0);
  char buf[8];
  assert_int_equal(read(fd, buf, sizeof buf), 4);
  close(fd);
  in_dir(link, sizeof link, "link");
  assert_int_equal(symlink(file, link), 0);
  assert_int_equal(dpod_open_regular_nofollow(link, err, sizeof err), DPOD_EACCESS);
  assert_non_null(strstr(err, "symbolic link"));
  assert_int_equal(dpod_open_regular_nofollow(dir, err, sizeof err), DPOD_EINVAL);
}

int main(int argc, char **argv) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(parse_takes_only_whole_numbers_in_range),
      cmocka_unit_test(errf_formats_and_returns_the_status),
      cmocka_unit_test(utf8_check_finds_the_first_bad_byte),
      cmocka_unit_test_setup_teardown(network_file_systems_are_named, setup, teardown),
      cmocka_unit_test_setup_teardown(read_file_reads_whole_files_and_refuses_others, setup, teardown),
      cmocka_unit_test_setup_teardown(atomic_write_replaces_whole_and_leaves_no_temporary, setup, teardown),
      cmocka_unit_test_setup_teardown(mkdirs_makes_private_directories_whatever_the_umask, setup, teardown),
      cmocka_unit_test_setup_teardown(path_inside_resolves_links_and_dots, setup, teardown),
      cmocka_unit_test_setup_teardown(open_regular_nofollow_refuses_links_and_specials, setup, teardown),
  };
  return CMOCKA_MAIN("base", tests, NULL, NULL);
}
