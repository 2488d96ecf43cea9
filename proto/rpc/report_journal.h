/* The report journal: what rank 0 could not deliver to dpod, kept in the run directory
 * (RUN_DIR/attempt-N.reports) in order, so that nothing a job reported is lost while dpod is down or
 * after the job has ended. The reporter appends to it when its queue in memory is full and writes what
 * is left into it at exit; the reporter delivers it first when dpod is back, and a dpod that finds an
 * ended attempt reads it.
 *
 * Format: records of a 4-byte little-endian length and a packed dpod.v1.WorkerEvent. A record torn by
 * a crash at the end of the file is ignored. */
#ifndef DPOD_REPORT_JOURNAL_H
#define DPOD_REPORT_JOURNAL_H

#include <stddef.h>
#include <stdint.h>

#define REPORT_JOURNAL_RECORD_MAX (1u << 20) /* a longer record is corruption */

/* RUN_DIR/attempt-N.reports into buf. */
void report_journal_path(const char *run_dir, uint32_t attempt, char *buf, size_t len);

/* Appends n packed events (data[i], lens[i]). With `durable`, fsyncs before returning. */
int report_journal_append(const char *path, uint8_t *const *data, const size_t *lens, size_t n, int durable, char *err,
                          size_t errlen);

/* Reads up to max_records records starting at byte `offset`: *data and *lens are malloc'd arrays of *n
 * malloc'd records (free with report_journal_free_records), *next_offset the offset after the last one
 * read. A missing file reads as empty. */
int report_journal_read(const char *path, uint64_t offset, size_t max_records, uint8_t ***data, size_t **lens,
                        size_t *n, uint64_t *next_offset, char *err, size_t errlen);
void report_journal_free_records(uint8_t **data, size_t *lens, size_t n);

#endif
