/*
 * replicant._speedups: compiled twins of the work done once per replicated
 * message. This file makes the module; each part lives in a file of its
 * own beside the Python it mirrors:
 *
 *   _drain.c    drain                (libpq.py)
 *   _rows.c     read_row, RowCore    (decoders/pgoutput.py, changes.py)
 *   _events.c   maker                (changes.py)
 *   _values.c   from_text, float4_bin (values.py), isoformat (formatting.py)
 *   _json.c     JsonWriter           (formatting.py, envelopes.py)
 *   _w2j.c      w2j_record           (decoders/wal2json.py)
 *   _pgout.c    PgOutputFast         (decoders/pgoutput.py)
 *
 * Each function here is the exact equivalent of a pure-Python function that
 * stays the reference and the fallback when this module is not built (or
 * REPLICANT_PURE_PYTHON is set; replicant._accel chooses one or the other
 * for the whole process); the tests compare the two on the same input.
 *
 *   drain       libpq.py's _drain_python: pull every complete CopyData
 *               message out of libpq, parsing XLogData headers on the way.
 *   read_row    decoders/pgoutput.py's _walk_tuple: split pgoutput TupleData
 *               into its column values, and make the Row of them.
 *   RowCore     changes.py's _RowCore: the storage of a Row, and the
 *               mapping protocol (a value is converted on first access).
 *   maker       changes.py's new_insert and friends: build a slotted
 *               event without running its dataclass __init__.
 *   from_text   values.py's _from_text_python: a text-value reader that
 *               decodes UTF-8 bytes and parses the text.
 *   float4_bin  values.py's _float4_bin_python: a binary float4 as the
 *               shortest decimal that reads back as the same float32.
 *   isoformat   datetime.isoformat(), for formatting.py's JSON form: the
 *               method stays the reference (and what pure Python runs).
 *   JsonWriter  formatting.py's json_line (and the row JSON the envelopes
 *               write): a row event's JSON written from its values as
 *               received; where it is not certain to write what the
 *               reference writes, it asks the Python code (per column, or
 *               for the whole line).
 *   w2j_record  decoders/wal2json.py's _record_fields_python: the fields of
 *               a wal2json format 2 record, read from its JSON text.
 *   PgOutputFast  decoders/pgoutput.py's PgOutputDecoder.decode for Begin,
 *               Commit, Insert and Update (a new tuple only) outside a
 *               streamed transaction; the rest goes to the Python decode.
 *
 * None raises for malformed input: drain hands back what it cannot parse
 * as bytes, read_row returns None, PgOutputFast hands the message to the
 * Python decode, and RowCore asks the Row's own _error
 * method for the exception, so that the Python code says what is wrong.
 * What the functions need (libpq's functions, the result types) comes in as
 * arguments; the one thing kept is changes.UNCHANGED, looked up once.
 */


#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <structmember.h> /* T_OBJECT_EX */

#include "_speedups.h"

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "replicant._speedups",
    .m_doc = "Compiled equivalents of replicant's per-message work (see the source).",
    .m_size = -1, /* static types and one cached object: not for subinterpreters */
};

void
replicant_slot_learn(PyTypeObject *type, PyObject *name, SlotCache *cache)
{
    cache->type = type;
    cache->offset = 0;
    cache->version = 0;
    if (type->tp_getattro != PyObject_GenericGetAttr) {
        return; /* its own __getattribute__ decides */
    }
    PyObject *descr = _PyType_Lookup(type, name); /* borrowed; assigns a version tag */
    if (descr == NULL || !Py_IS_TYPE(descr, &PyMemberDescr_Type)
        || !PyType_HasFeature(type, Py_TPFLAGS_VALID_VERSION_TAG)) {
        return;
    }
    PyMemberDef *member = ((PyMemberDescrObject *)descr)->d_member;
#ifdef PY_AUDIT_READ
    if (member->flags & PY_AUDIT_READ) {
        return; /* reading it raises an audit event: PyObject_GetAttr's business */
    }
#endif
    if ((member->type == T_OBJECT_EX || member->type == T_OBJECT) && member->offset > 0) {
        cache->offset = member->offset;
        cache->version = type->tp_version_tag;
    }
}

PyMODINIT_FUNC
PyInit__speedups(void)
{
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) {
        return NULL;
    }
    if (replicant_drain_exec(m) < 0 || replicant_rows_exec(m) < 0
        || replicant_events_exec(m) < 0 || replicant_values_exec(m) < 0
        || replicant_json_exec(m) < 0
        || replicant_w2j_exec(m) < 0 || replicant_pgout_exec(m) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
