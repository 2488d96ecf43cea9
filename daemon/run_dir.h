/* Removing a job's run directory, for DeleteJob: only a directory that lies inside dpod's jobs
 * directory (after resolving symbolic links), never the jobs directory itself, and never following a
 * link out of it while removing. */
#ifndef DPOD_RUN_DIR_H
#define DPOD_RUN_DIR_H

#include <stddef.h>

/* Whether run_dir may be removed: 0 if it lies inside jobs_dir or does not exist, DPOD_EACCESS (err says
 * where it is) if it lies elsewhere, DPOD_EIO if it cannot be resolved. */
int run_dir_check(const char *jobs_dir, const char *run_dir, char *err, size_t errlen);

/* Removes run_dir and everything in it, after run_dir_check(). A run_dir that does not exist is not an error (0). One outside
 * jobs_dir is refused with DPOD_EACCESS; a removal that fails returns DPOD_EIO. err says which path and
 * why. */
int run_dir_remove(const char *jobs_dir, const char *run_dir, char *err, size_t errlen);

#endif
