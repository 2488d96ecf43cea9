/* Attempt logs: which rank and stream a line of a launcher's output comes from.
 *
 * mpirun --tag-output prefixes every line a rank writes with "[JOB,RANK]<stdout>:" (or <stderr>, or
 * <stddiag> for Open MPI's own diagnostics on a rank's behalf). A rank's last output without a newline
 * is followed by the next rank's tag on the same line, so a tag inside a line starts a new entry.
 * srun --label prefixes "RANK: ", right-aligned with spaces when there are ten ranks or more, and merges
 * both streams. A line without a prefix is the launcher's own (mpirun, srun, the batch script). */
#include <string.h>

#include "launch_backend.h"

/* The length of a "[J,R]<stream>:" tag at p (0 if there is none), its rank and stream. */
static size_t log_mpi_tag_(const char *p, size_t len, int *rank, launch_log_stream *stream) {
  size_t i = 0;
  if (i >= len || p[i++] != '[') return 0;
  size_t digits = 0;
  while (i < len && p[i] >= '0' && p[i] <= '9') i++, digits++;
  if (!digits || i >= len || p[i++] != ',') return 0;
  long r = 0;
  digits = 0;
  while (i < len && p[i] >= '0' && p[i] <= '9' && digits < 9) r = r * 10 + (p[i++] - '0'), digits++;
  if (!digits || i >= len || p[i++] != ']' || i >= len || p[i++] != '<') return 0;
  static const struct {
    const char *name;
    launch_log_stream stream;
  } names[] = {{"stdout>:", LAUNCH_LOG_STDOUT}, {"stderr>:", LAUNCH_LOG_STDERR}, {"stddiag>:", LAUNCH_LOG_STDERR}};
  for (size_t k = 0; k < sizeof names / sizeof names[0]; k++) {
    size_t n = strlen(names[k].name);
    if (len - i >= n && memcmp(p + i, names[k].name, n) == 0) {
      *rank = (int)r;
      *stream = names[k].stream;
      return i + n;
    }
  }
  return 0;
}

void launch_log_parse_mpi_tags_(const char *line, size_t len, launch_log_entry *out) {
  int rank;
  launch_log_stream stream;
  size_t tag = log_mpi_tag_(line, len, &rank, &stream);
  *out = (launch_log_entry){.rank = -1, .stream = LAUNCH_LOG_LAUNCHER, .text_off = tag, .consumed = len};
  if (tag) {
    out->rank = rank;
    out->stream = stream;
  }
  /* Another rank's output starting inside the line ends this entry there. */
  for (const char *p = line + tag + 1; p < line + len; p++) {
    p = memchr(p, '[', (size_t)(line + len - p));
    if (!p) break;
    int r2;
    launch_log_stream s2;
    if (log_mpi_tag_(p, (size_t)(line + len - p), &r2, &s2)) {
      out->consumed = (size_t)(p - line);
      break;
    }
  }
  out->text_len = out->consumed - out->text_off;
}

void launch_log_parse_srun_label_(const char *line, size_t len, launch_log_entry *out) {
  *out = (launch_log_entry){.rank = -1, .stream = LAUNCH_LOG_LAUNCHER, .consumed = len, .text_len = len};
  size_t i = 0, digits = 0;
  long r = 0;
  while (i < len && i < 8 && line[i] == ' ') i++;
  while (i < len && line[i] >= '0' && line[i] <= '9' && digits < 9) r = r * 10 + (line[i++] - '0'), digits++;
  if (!digits || i >= len || line[i] != ':') return;
  i++;
  if (i < len && line[i] == ' ') i++;
  out->rank = (int)r;
  out->stream = LAUNCH_LOG_STDOUT;
  out->text_off = i;
  out->text_len = len - i;
}

void launch_log_parse(const launch_backend *b, const char *line, size_t len, launch_log_entry *out) {
  if (b && b->ops->parse_log_line) {
    b->ops->parse_log_line(line, len, out);
  } else {
    *out = (launch_log_entry){.rank = -1, .stream = LAUNCH_LOG_LAUNCHER, .consumed = len, .text_len = len};
  }
}

const char *launch_log_stream_name(launch_log_stream s) {
  switch (s) {
    case LAUNCH_LOG_STDOUT: return "stdout";
    case LAUNCH_LOG_STDERR: return "stderr";
    default: return "dpod";
  }
}
