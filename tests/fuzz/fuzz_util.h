/* What the libFuzzer targets share: a private scratch directory for parsers that only take paths, and
 * the split of one input into several files.
 *
 * A multi-file input is its files' contents joined by FUZZ_SEP; part i becomes the file names[i], parts
 * past the last name are ignored and a missing part leaves its file absent. libFuzzer learns the
 * separator from the comparisons it watches (memmem), so mutations keep the files apart. */
#ifndef DPOD_TESTS_FUZZ_UTIL_H
#define DPOD_TESTS_FUZZ_UTIL_H

#include <stddef.h>
#include <stdint.h>

#define FUZZ_SEP "\n@@next-file@@\n"

/* "$TMPDIR/dpod-fuzz-XXXXXX" (under /dev/shm when it is writable: a tmpfs keeps the run off the disk),
 * created at the first call and removed with its contents at exit. Static storage; aborts if it cannot
 * be made, since then no input can be tried. */
const char *fuzz_scratch_dir(void);

/* Removes everything below `dir` (not `dir` itself). */
void fuzz_clear_dir(const char *dir);

/* Writes data[0, len) to dir/name; aborts on an I/O error (the scratch space is broken, not the input). */
void fuzz_write_file(const char *dir, const char *name, const uint8_t *data, size_t len);

/* Splits data at FUZZ_SEP and writes part i to dir/names[i] for i < n. Returns the number of parts
 * written. */
size_t fuzz_write_parts(const char *dir, const uint8_t *data, size_t size, const char *const *names, size_t n);

/* With DPOD_FUZZ_VERBOSE set, prints why an input was refused (rc != 0) or that it was accepted: for
 * checking that a seed reaches as far as it should (`DPOD_FUZZ_VERBOSE=1 fuzz_dataset corpus/...`).
 * Returns rc. */
int fuzz_note(const char *what, int rc, const char *err);

/* Silences the project's logger below errors, so that the run's output stays readable. */
void fuzz_quiet_logs(void);

#endif
