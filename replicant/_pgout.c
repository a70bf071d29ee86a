/*
 * replicant._speedups, part: pgoutput's common messages.
 *
 *   PgOutputFast  the compiled twin of decoders/pgoutput.py's
 *                 PgOutputDecoder.decode for the messages of every ordinary
 *                 transaction: Begin, Commit, and Insert and Update of a
 *                 new tuple only, outside a streamed transaction. Everything
 *                 else, and anything it is not certain of, goes to the
 *                 Python decode (the reference) unchanged.
 *
 * The rules:
 *
 * - It decodes exactly what the Python decode decodes, into the same events,
 *   and leaves the decoder in the same state (_xid, _in_transaction,
 *   _last_end), which stays in the decoder's attributes: the Python code
 *   reads and writes the same ones.
 * - It changes nothing before it is sure of the whole message: a short or
 *   long message, an unknown relation, a column count that differs from the
 *   relation's, a tuple that is malformed or mixes text and binary, a commit
 *   time out of range, an old tuple, a streamed transaction: all go to the
 *   Python decode untouched, which raises the error it raises, or decodes.
 * - Exceptions other than these refusals (memory, KeyboardInterrupt) go
 *   through as they are.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stddef.h> /* offsetof */
#include <stdint.h>

#include "_speedups.h"

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    PyObject *decoder;     /* the PgOutputDecoder whose state is read and written */
    PyObject *reference;   /* its Python decode: everything this does not take */
    PyTypeObject *lsn_type;
    PyTypeObject *row_type;
    PyObject *unchanged;
    PyObject *new_begin, *new_commit, *new_insert, *new_update;
    PyObject *to_datetime; /* PostgreSQL-epoch microseconds to a datetime */
    /* The last relation's _Table and what is read from it (a _Table is not
     * changed once made: a new Relation message makes a new one). */
    PyObject *table;
    Py_ssize_t ncolumns;
    PyObject *text, *binary, *relation;
} PgOutputFast;

static PyObject *str_xid, *str_in_transaction, *str_in_stream, *str_last_end, *str_tables;
static PyObject *str_ncolumns, *str_text, *str_binary, *str_relation;

/* An Exception (not a BaseException only) is pending: forget it, and let the
 * Python decode say what is wrong. Returns 1 then, 0 for anything else. */
static int
refused(void)
{
    if (PyErr_ExceptionMatches(PyExc_Exception)) {
        PyErr_Clear();
        return 1;
    }
    return 0;
}

/* The event's position: the frame's, or (0: a frame that carries none) the
 * end of the last transaction, as PgOutputDecoder._position says. */
static PyObject *
position(PgOutputFast *self, PyObject *wal_start)
{
    int zero = PyObject_Not(wal_start);
    if (zero < 0) {
        return NULL;
    }
    if (!zero) {
        return Py_NewRef(wal_start);
    }
    return PyObject_GetAttr(self->decoder, str_last_end);
}

static PyObject *
one_event(PyObject *event)
{
    if (event == NULL) {
        return NULL;
    }
    PyObject *events = PyList_New(1);
    if (events == NULL) {
        Py_DECREF(event);
        return NULL;
    }
    PyList_SET_ITEM(events, 0, event);
    return events;
}

/* A message's time (PostgreSQL-epoch microseconds at p) as a datetime; NULL
 * with *fallback set for one out of range (the Python decode says so). */
static PyObject *
message_time(PgOutputFast *self, const unsigned char *p, int *fallback)
{
    PyObject *when = PyLong_FromLongLong((long long)replicant_u64(p));
    PyObject *time = when ? PyObject_CallOneArg(self->to_datetime, when) : NULL;
    Py_XDECREF(when);
    if (time == NULL) {
        *fallback = refused();
    }
    return time;
}

/* Begin: final LSN, commit time, xid. */
static PyObject *
fast_begin(PgOutputFast *self, const unsigned char *p, Py_ssize_t size, PyObject *wal_start,
           int *fallback)
{
    if (size != 21) {
        *fallback = 1;
        return NULL;
    }
    PyObject *time = message_time(self, p + 9, fallback);
    if (time == NULL) {
        return NULL;
    }
    PyObject *xid = PyLong_FromUnsignedLong(replicant_u32(p + 17));
    PyObject *final = xid ? replicant_new_lsn(self->lsn_type, replicant_u64(p + 1)) : NULL;
    PyObject *lsn = final ? position(self, wal_start) : NULL;
    PyObject *event = NULL;
    if (lsn != NULL) {
        PyObject *args[4] = {lsn, xid, final, time};
        event = PyObject_Vectorcall(self->new_begin, args, 4, NULL);
    }
    if (event != NULL
        && (PyObject_SetAttr(self->decoder, str_xid, xid) < 0
            || PyObject_SetAttr(self->decoder, str_in_transaction, Py_True) < 0)) {
        Py_CLEAR(event);
    }
    Py_XDECREF(lsn);
    Py_XDECREF(final);
    Py_XDECREF(xid);
    Py_DECREF(time);
    return one_event(event);
}

/* Commit: flags, commit LSN, end LSN, commit time. */
static PyObject *
fast_commit(PgOutputFast *self, const unsigned char *p, Py_ssize_t size, int *fallback)
{
    if (size != 26) {
        *fallback = 1;
        return NULL;
    }
    PyObject *time = message_time(self, p + 18, fallback);
    if (time == NULL) {
        return NULL;
    }
    PyObject *end = replicant_new_lsn(self->lsn_type, replicant_u64(p + 10));
    PyObject *commit_lsn = end ? replicant_new_lsn(self->lsn_type, replicant_u64(p + 2)) : NULL;
    PyObject *last = commit_lsn ? PyObject_GetAttr(self->decoder, str_last_end) : NULL;
    PyObject *xid = last ? PyObject_GetAttr(self->decoder, str_xid) : NULL;
    PyObject *event = NULL;
    if (xid != NULL) {
        /* _ended(): the last end moves forward only. */
        int later = PyObject_RichCompareBool(end, last, Py_GT);
        if (later >= 0) {
            PyObject *args[4] = {end, xid, commit_lsn, time};
            event = PyObject_Vectorcall(self->new_commit, args, 4, NULL);
        }
        if (event != NULL
            && ((later && PyObject_SetAttr(self->decoder, str_last_end, end) < 0)
                || PyObject_SetAttr(self->decoder, str_xid, Py_None) < 0
                || PyObject_SetAttr(self->decoder, str_in_transaction, Py_False) < 0)) {
            Py_CLEAR(event);
        }
    }
    Py_XDECREF(xid);
    Py_XDECREF(last);
    Py_XDECREF(commit_lsn);
    Py_XDECREF(end);
    Py_DECREF(time);
    return one_event(event);
}

/* Read what rows need from a _Table, and keep it with the table: 0, or -1
 * with an exception set (the cache then holds nothing). */
static int
remember_table(PgOutputFast *self, PyObject *table)
{
    Py_CLEAR(self->table);
    Py_CLEAR(self->text);
    Py_CLEAR(self->binary);
    Py_CLEAR(self->relation);
    self->ncolumns = -1;
    PyObject *ncolumns = PyObject_GetAttr(table, str_ncolumns);
    if (ncolumns == NULL) {
        return -1;
    }
    Py_ssize_t n = PyLong_AsSsize_t(ncolumns);
    Py_DECREF(ncolumns);
    if (n == -1 && PyErr_Occurred()) {
        return -1;
    }
    PyObject *text = PyObject_GetAttr(table, str_text);
    PyObject *binary = text ? PyObject_GetAttr(table, str_binary) : NULL;
    PyObject *relation = binary ? PyObject_GetAttr(table, str_relation) : NULL;
    if (relation == NULL) {
        Py_XDECREF(text);
        Py_XDECREF(binary);
        return -1;
    }
    self->table = Py_NewRef(table);
    self->ncolumns = n;
    self->text = text;
    self->binary = binary;
    self->relation = relation;
    return 0;
}

/* Insert ('N' tuple) or Update with a new tuple only ('N', no old one). */
static PyObject *
fast_row(PgOutputFast *self, PyObject *data, Py_ssize_t size, PyObject *wal_start, int update,
         int *fallback)
{
    const unsigned char *p = (const unsigned char *)PyBytes_AS_STRING(data);
    if (size < 8 || p[5] != 'N') {
        *fallback = 1; /* short, an old tuple, or no new one: the Python decode says */
        return NULL;
    }
    PyObject *in_stream = PyObject_GetAttr(self->decoder, str_in_stream);
    if (in_stream == NULL) {
        return NULL;
    }
    int streaming = PyObject_IsTrue(in_stream);
    Py_DECREF(in_stream);
    if (streaming != 0) {
        *fallback = streaming > 0; /* a streamed transaction's rows carry their xid */
        return NULL;
    }
    PyObject *tables = PyObject_GetAttr(self->decoder, str_tables);
    if (tables == NULL) {
        return NULL;
    }
    if (!PyDict_Check(tables)) {
        Py_DECREF(tables);
        *fallback = 1;
        return NULL;
    }
    PyObject *relid = PyLong_FromUnsignedLong(replicant_u32(p + 1));
    if (relid == NULL) {
        Py_DECREF(tables);
        return NULL;
    }
    PyObject *table = PyDict_GetItemWithError(tables, relid); /* borrowed */
    Py_XINCREF(table);
    Py_DECREF(relid);
    Py_DECREF(tables);
    if (table == NULL) {
        *fallback = !PyErr_Occurred(); /* an unknown relation */
        return NULL;
    }
    Py_ssize_t count = (Py_ssize_t)(((unsigned)p[6] << 8) | p[7]);
    PyObject *event = NULL;
    if (table != self->table && remember_table(self, table) < 0) {
        goto done;
    }
    if (self->ncolumns != count) {
        *fallback = 1;
        goto done;
    }
    Py_ssize_t end = 0;
    PyObject *row = replicant_read_row(data, 8, count, self->text, self->binary, self->row_type,
                                       self->unchanged, &end);
    if (row == NULL || end != size) {
        Py_XDECREF(row);
        *fallback = !PyErr_Occurred(); /* malformed, mixed, or bytes left over */
        goto done;
    }
    PyObject *xid = PyObject_GetAttr(self->decoder, str_xid);
    PyObject *lsn = xid ? position(self, wal_start) : NULL;
    if (lsn != NULL) {
        if (update) {
            PyObject *args[5] = {lsn, xid, self->relation, row, Py_None};
            event = PyObject_Vectorcall(self->new_update, args, 5, NULL);
        }
        else {
            PyObject *args[4] = {lsn, xid, self->relation, row};
            event = PyObject_Vectorcall(self->new_insert, args, 4, NULL);
        }
    }
    Py_XDECREF(lsn);
    Py_XDECREF(xid);
    Py_DECREF(row);
done:
    Py_DECREF(table);
    return one_event(event);
}

static PyObject *
fast_call(PgOutputFast *self, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if (nargs == 3 && kwnames == NULL) {
        PyObject *data = args[0];
        PyObject *wal_start = args[1];
        if (PyBytes_CheckExact(data) && PyBytes_GET_SIZE(data) > 0
            && Py_TYPE(wal_start) == self->lsn_type) {
            const unsigned char *p = (const unsigned char *)PyBytes_AS_STRING(data);
            Py_ssize_t size = PyBytes_GET_SIZE(data);
            int fallback = 0;
            PyObject *events;
            switch (p[0]) {
            case 'B':
                events = fast_begin(self, p, size, wal_start, &fallback);
                break;
            case 'C':
                events = fast_commit(self, p, size, &fallback);
                break;
            case 'I':
                events = fast_row(self, data, size, wal_start, 0, &fallback);
                break;
            case 'U':
                events = fast_row(self, data, size, wal_start, 1, &fallback);
                break;
            default:
                events = NULL;
                fallback = 1;
            }
            if (events != NULL || !fallback) {
                return events;
            }
        }
    }
    return PyObject_Vectorcall(self->reference, args, nargsf, kwnames);
}

static int
fast_traverse(PgOutputFast *self, visitproc visit, void *arg)
{
    Py_VISIT(self->decoder);
    Py_VISIT(self->reference);
    Py_VISIT(self->lsn_type);
    Py_VISIT(self->row_type);
    Py_VISIT(self->unchanged);
    Py_VISIT(self->new_begin);
    Py_VISIT(self->new_commit);
    Py_VISIT(self->new_insert);
    Py_VISIT(self->new_update);
    Py_VISIT(self->to_datetime);
    Py_VISIT(self->table);
    Py_VISIT(self->text);
    Py_VISIT(self->binary);
    Py_VISIT(self->relation);
    return 0;
}

static int
fast_clear(PgOutputFast *self)
{
    Py_CLEAR(self->decoder);
    Py_CLEAR(self->reference);
    Py_CLEAR(self->lsn_type);
    Py_CLEAR(self->row_type);
    Py_CLEAR(self->unchanged);
    Py_CLEAR(self->new_begin);
    Py_CLEAR(self->new_commit);
    Py_CLEAR(self->new_insert);
    Py_CLEAR(self->new_update);
    Py_CLEAR(self->to_datetime);
    Py_CLEAR(self->table);
    Py_CLEAR(self->text);
    Py_CLEAR(self->binary);
    Py_CLEAR(self->relation);
    return 0;
}

static void
fast_dealloc(PgOutputFast *self)
{
    PyObject_GC_UnTrack(self);
    fast_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
fast_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {"decoder", "reference", "lsn_type", "row_type", "unchanged",
                               "new_begin", "new_commit", "new_insert", "new_update",
                               "to_datetime", NULL};
    PyObject *decoder, *reference, *lsn_type, *row_type, *unchanged;
    PyObject *new_begin, *new_commit, *new_insert, *new_update, *to_datetime;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOOOOOOOOO:PgOutputFast", keywords,
                                     &decoder, &reference, &lsn_type, &row_type, &unchanged,
                                     &new_begin, &new_commit, &new_insert, &new_update,
                                     &to_datetime)) {
        return NULL;
    }
    if (!PyType_Check(lsn_type) || !PyType_IsSubtype((PyTypeObject *)lsn_type, &PyLong_Type)) {
        PyErr_SetString(PyExc_TypeError, "PgOutputFast needs an int subclass for LSNs");
        return NULL;
    }
    if (!replicant_is_row_type(row_type)) {
        PyErr_SetString(PyExc_TypeError, "PgOutputFast needs a RowCore type for rows");
        return NULL;
    }
    PyObject *callables[6] = {reference, new_begin, new_commit, new_insert, new_update,
                              to_datetime};
    for (int i = 0; i < 6; i++) {
        if (!PyCallable_Check(callables[i])) {
            PyErr_SetString(PyExc_TypeError, "PgOutputFast needs callables for its makers");
            return NULL;
        }
    }
    PgOutputFast *self = (PgOutputFast *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    self->vectorcall = (vectorcallfunc)fast_call;
    self->decoder = Py_NewRef(decoder);
    self->reference = Py_NewRef(reference);
    self->lsn_type = (PyTypeObject *)Py_NewRef(lsn_type);
    self->row_type = (PyTypeObject *)Py_NewRef(row_type);
    self->unchanged = Py_NewRef(unchanged);
    self->new_begin = Py_NewRef(new_begin);
    self->new_commit = Py_NewRef(new_commit);
    self->new_insert = Py_NewRef(new_insert);
    self->new_update = Py_NewRef(new_update);
    self->to_datetime = Py_NewRef(to_datetime);
    self->table = self->text = self->binary = self->relation = NULL;
    self->ncolumns = -1;
    return (PyObject *)self;
}

PyDoc_STRVAR(fast_doc,
"PgOutputFast(decoder, reference, lsn_type, row_type, unchanged, new_begin,\n"
"             new_commit, new_insert, new_update, to_datetime)\n"
"--\n\n"
"A callable like PgOutputDecoder.decode(data, wal_start, wal_end): Begin,\n"
"Commit, and Insert and Update with a new tuple only, outside a streamed\n"
"transaction, decoded here with the decoder's state (its _xid,\n"
"_in_transaction, _last_end and _tables attributes); every other message,\n"
"and any it is not certain of, goes to ``reference`` (the Python decode).");

static PyTypeObject PgOutputFastType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "replicant._speedups.PgOutputFast",
    .tp_basicsize = sizeof(PgOutputFast),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_doc = fast_doc,
    .tp_new = fast_new,
    .tp_call = PyVectorcall_Call,
    .tp_vectorcall_offset = offsetof(PgOutputFast, vectorcall),
    .tp_traverse = (traverseproc)fast_traverse,
    .tp_clear = (inquiry)fast_clear,
    .tp_dealloc = (destructor)fast_dealloc,
};

int
replicant_pgout_exec(PyObject *module)
{
    struct {
        PyObject **slot;
        const char *text;
    } names[] = {
        {&str_xid, "_xid"},
        {&str_in_transaction, "_in_transaction"},
        {&str_in_stream, "_in_stream"},
        {&str_last_end, "_last_end"},
        {&str_tables, "_tables"},
        {&str_ncolumns, "ncolumns"},
        {&str_text, "text"},
        {&str_binary, "binary"},
        {&str_relation, "relation"},
    };
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        *names[i].slot = PyUnicode_InternFromString(names[i].text);
        if (*names[i].slot == NULL) {
            return -1;
        }
    }
    if (PyType_Ready(&PgOutputFastType) < 0) {
        return -1;
    }
    return PyModule_AddObjectRef(module, "PgOutputFast", (PyObject *)&PgOutputFastType);
}
