#include "dpod_log.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

static const char *log_program = "dpod";
static dpod_log_level log_level = DPOD_LOG_INFO;
static const char *const log_level_names[] = {"ERROR", "WARN", "INFO", "DEBUG"};

int dpod_log_parse_level(const char *s) {
  static const char *const names[] = {"error", "warn", "info", "debug"};
  for (int i = 0; i < 4; i++)
    if (s && strcasecmp(s, names[i]) == 0) return i;
  return -1;
}

void dpod_log_init(const char *program, dpod_log_level level) {
  if (program) log_program = program;
  log_level = level;
  int env = dpod_log_parse_level(getenv("DPOD_LOG_LEVEL"));
  if (env >= 0) log_level = (dpod_log_level)env;
}

dpod_log_level dpod_log_get_level(void) { return log_level; }

void dpod_log_write_(dpod_log_level level, const char *file, int line, const char *fmt, ...) {
  char msg[2048];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);

  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  struct tm tm;
  gmtime_r(&ts.tv_sec, &tm);
  char when[32];
  strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%S", &tm);
  const char *base = strrchr(file, '/');
  base = base ? base + 1 : file;
  /* One fprintf per line so lines from concurrent threads do not interleave. */
  if (level <= DPOD_LOG_WARN)
    fprintf(stderr, "%s.%03ldZ %s %s %s (%s:%d)\n", when, ts.tv_nsec / 1000000, log_program,
            log_level_names[level], msg, base, line);
  else
    fprintf(stderr, "%s.%03ldZ %s %s %s\n", when, ts.tv_nsec / 1000000, log_program,
            log_level_names[level], msg);
}
