/*
 * What the parts of replicant._speedups (_drain.c, _rows.c, _events.c,
 * _values.c, _json.c, _w2j.c, _pgout.c) share with the file that makes the
 * module (_speedups.c): each part adds its functions and types to the
 * module, returning 0, or -1 with an exception set.
 */
#ifndef REPLICANT_SPEEDUPS_H
#define REPLICANT_SPEEDUPS_H

#include <Python.h>
#include <stdint.h>

/* Big-endian integers of the protocol's messages. */
static inline uint64_t
replicant_u64(const unsigned char *p)
{
    uint64_t value = 0;
    for (int i = 0; i < 8; i++) {
        value = (value << 8) | p[i];
    }
    return value;
}

static inline uint32_t
replicant_u32(const unsigned char *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

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
/* A RowCore's layout and raw values (borrowed; NULL for a row not set up). */
REPLICANT_PART void replicant_row_parts(PyObject *row, PyObject **layout, PyObject **raw);

/* _drain.c: an LSN (lsn_type, an int subclass) of value, built directly. */
REPLICANT_PART PyObject *replicant_new_lsn(PyTypeObject *lsn_type, uint64_t value);

/* _values.c: datetime.isoformat() of an exact naive or UTC datetime into out
 * (room for 32 bytes): its length, or 0 for any other value. */
REPLICANT_PART int replicant_isoformat_utc(PyObject *value, char *out);

/* Reading an attribute that is a slot (a member descriptor: __slots__ of a
 * Python class, a C type's T_OBJECT members) without PyObject_GetAttr's
 * lookup, once the type is known: a cache per call site remembers the type,
 * its version tag and the slot's offset. The type's version tag changes
 * whenever the type (or a base) is modified, so a stale cache is never
 * used; a type with its own __getattribute__, an attribute that is not a
 * slot, an empty slot: all go through PyObject_GetAttr, which gives the
 * result (or the AttributeError) it always gives. */
typedef struct {
    PyTypeObject *type; /* compared only: a new type never has the same version tag */
    unsigned int version;
    Py_ssize_t offset; /* 0: not a slot */
} SlotCache;

REPLICANT_PART void replicant_slot_learn(PyTypeObject *type, PyObject *name, SlotCache *cache);

/* obj.name as a new reference (NULL with an exception set). */
static inline PyObject *
replicant_slot(PyObject *obj, PyObject *name, SlotCache *cache)
{
    PyTypeObject *type = Py_TYPE(obj);
    if (type == cache->type && type->tp_version_tag == cache->version
        && PyType_HasFeature(type, Py_TPFLAGS_VALID_VERSION_TAG)) {
        if (cache->offset > 0) {
            PyObject *value = *(PyObject **)((char *)obj + cache->offset);
            if (value != NULL) {
                return Py_NewRef(value);
            }
        }
    }
    else {
        replicant_slot_learn(type, name, cache);
    }
    return PyObject_GetAttr(obj, name);
}

#endif
