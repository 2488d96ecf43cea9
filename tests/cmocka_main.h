/* The main() every cmocka suite here shares: `--list` prints the case names, one per line (CMake
 * registers exactly those as ctest cases after the build, see tests/CMakeLists.txt); a case name runs only
 * that case; no argument runs them all. A name that matches no case is refused with status 2: it would
 * otherwise run nothing and pass. Include after <cmocka.h>. */
#ifndef DPOD_TESTS_CMOCKA_MAIN_H
#define DPOD_TESTS_CMOCKA_MAIN_H

#include <stdio.h>
#include <string.h>

static inline int cmocka_main_(const char *group, const struct CMUnitTest *tests, size_t n,
                               CMFixtureFunction group_setup, CMFixtureFunction group_teardown, int argc,
                               char **argv) {
  if (argc > 1 && strcmp(argv[1], "--list") == 0) {
    for (size_t i = 0; i < n; i++) printf("%s\n", tests[i].name);
    return 0;
  }
  if (argc > 1) {
    for (size_t i = 0; i < n; i++)
      if (strcmp(tests[i].name, argv[1]) == 0)
        return _cmocka_run_group_tests(argv[1], &tests[i], 1, group_setup, group_teardown);
    fprintf(stderr, "%s: no test named '%s'\n", group, argv[1]);
    return 2;
  }
  return _cmocka_run_group_tests(group, tests, n, group_setup, group_teardown);
}

/* In main(int argc, char **argv): return CMOCKA_MAIN("group", tests, setup, teardown); */
#define CMOCKA_MAIN(group, tests, group_setup, group_teardown) \
  cmocka_main_((group), (tests), sizeof(tests) / sizeof((tests)[0]), (group_setup), (group_teardown), argc, argv)

#endif
