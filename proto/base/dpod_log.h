/* One logging function with levels, shared by every binary.
 *
 * The level is checked before anything is formatted. Lines go to stderr as
 * "2026-11-26T16:01:02.123Z dpod INFO message"; errors and warnings carry file:line. */
#ifndef DPOD_LOG_H
#define DPOD_LOG_H

typedef enum { DPOD_LOG_ERROR = 0, DPOD_LOG_WARN = 1, DPOD_LOG_INFO = 2, DPOD_LOG_DEBUG = 3 } dpod_log_level;

/* Sets the program name shown on each line (static storage expected) and the maximum level printed.
 * The level may also come from the DPOD_LOG_LEVEL environment variable (error|warn|info|debug). */
void dpod_log_init(const char *program, dpod_log_level level);
dpod_log_level dpod_log_get_level(void);
/* Parses "error", "warn", "info" or "debug"; returns -1 for anything else. */
int dpod_log_parse_level(const char *s);

void dpod_log_write_(dpod_log_level level, const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

#define dpod_log(level, ...)                                          \
  do {                                                                \
    if ((level) <= dpod_log_get_level())                              \
      dpod_log_write_((level), __FILE__, __LINE__, __VA_ARGS__);      \
  } while (0)
#define log_error(...) dpod_log(DPOD_LOG_ERROR, __VA_ARGS__)
#define log_warn(...) dpod_log(DPOD_LOG_WARN, __VA_ARGS__)
#define log_info(...) dpod_log(DPOD_LOG_INFO, __VA_ARGS__)
#define log_debug(...) dpod_log(DPOD_LOG_DEBUG, __VA_ARGS__)

#endif
