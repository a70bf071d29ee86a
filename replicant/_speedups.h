/*
 * What the parts of replicant._speedups (_drain.c, _rows.c, _events.c,
 * _values.c, _json.c) share with the file that makes the module (_speedups.c): each
 * part adds its functions and types to the module, returning 0, or -1 with
 * an exception set.
 */
#ifndef REPLICANT_SPEEDUPS_H
#define REPLICANT_SPEEDUPS_H

#include <Python.h>
#include <stdint.h>

/* Shared between the parts, not exported from the shared object. */
#if defined(__GNUC__)
#define REPLICANT_PART __attribute__((visibility("hidden")))
#else
#define REPLICANT_PART
#endif

REPLICANT_PART int replicant_drain_exec(PyObject *module);
REPLICANT_PART int replicant_rows_exec(PyObject *module);
REPLICANT_PART int replicant_events_exec(PyObject *module);
REPLICANT_PART int replicant_values_exec(PyObject *module);
REPLICANT_PART int replicant_json_exec(PyObject *module);
REPLICANT_PART int replicant_w2j_exec(PyObject *module);
REPLICANT_PART int replicant_pgout_exec(PyObject *module);

/* _rows.c: the Row of pgoutput TupleData (see there), and whether a type is
 * RowCore or a subclass. */
REPLICANT_PART PyObject *replicant_read_row(PyObject *data, Py_ssize_t pos, Py_ssize_t count,
                                            PyObject *text, PyObject *binary,
                                            PyTypeObject *row_type, PyObject *unchanged,
                                            Py_ssize_t *end);
REPLICANT_PART int replicant_is_row_type(PyObject *type);

/* _drain.c: an LSN (lsn_type, an int subclass) of value, built directly. */
REPLICANT_PART PyObject *replicant_new_lsn(PyTypeObject *lsn_type, uint64_t value);

/* _values.c: datetime.isoformat() of an exact naive or UTC datetime into out
 * (room for 32 bytes): its length, or 0 for any other value. */
REPLICANT_PART int replicant_isoformat_utc(PyObject *value, char *out);

#endif
