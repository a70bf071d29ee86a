/*
 * replicant._speedups: compiled versions of the two loops that run once per
 * replicated message.
 *
 * Each function here is the exact equivalent of a pure-Python function that
 * stays the reference and the fallback when this module is not built (or
 * REPLICANT_PURE_PYTHON is set); the tests run both on the same input.
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
 *
 * None raises for malformed input: drain hands back what it cannot parse
 * as bytes, read_row returns None, and RowCore asks the Row's own _error
 * method for the exception, so that the Python code says what is wrong.
 * What the functions need (libpq's functions, the result types) comes in as
 * arguments; the one thing kept is changes.UNCHANGED, looked up once.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <structmember.h> /* PyMemberDef, T_OBJECT_EX (3.10 and 3.11) */

/* libpq's signatures (libpq-fe.h), called through the addresses that ctypes
 * resolved in the libpq psycopg2 uses: this module links no libpq itself. */
typedef int (*consume_input_fn)(void *conn);
typedef int (*get_copy_data_fn)(void *conn, char **buffer, int async);
typedef void (*freemem_fn)(void *ptr);

/* What drain's third result means; libpq.py names the same values. */
enum { DRAIN_MORE = 0, DRAIN_END_OF_COPY = 1, DRAIN_LOST = 2 };

/* An XLogData message: 'w', start, end, send time, then the plugin's data. */
#define XLOGDATA_HEADER 25

static uint64_t
read_u64(const unsigned char *p)
{
    uint64_t value = 0;
    for (int i = 0; i < 8; i++) {
        value = (value << 8) | p[i];
    }
    return value;
}

static uint32_t
read_u32(const unsigned char *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

/* int.__new__(lsn_type, value): an LSN without running LSN.__new__'s checks,
 * which an unsigned 64-bit value always passes. */
static PyObject *
new_lsn(PyTypeObject *lsn_type, uint64_t value)
{
    PyObject *number = PyLong_FromUnsignedLongLong(value);
    if (number == NULL) {
        return NULL;
    }
    PyObject *args = PyTuple_Pack(1, number);
    Py_DECREF(number);
    if (args == NULL) {
        return NULL;
    }
    PyObject *lsn = PyLong_Type.tp_new(lsn_type, args, NULL);
    Py_DECREF(args);
    return lsn;
}

/* XLogData(LSN(start), LSN(end), send_time, data) from a whole message. */
static PyObject *
new_xlogdata(const unsigned char *message, Py_ssize_t size,
             PyTypeObject *xlogdata_type, PyTypeObject *lsn_type)
{
    /* A tuple subclass without extra fields (checked by the caller) is built
     * like tuple.__new__ builds one: allocate, then fill every slot. */
    PyObject *frame = xlogdata_type->tp_alloc(xlogdata_type, 4);
    if (frame == NULL) {
        return NULL;
    }
    PyObject *start = new_lsn(lsn_type, read_u64(message + 1));
    PyObject *end = new_lsn(lsn_type, read_u64(message + 9));
    PyObject *sent = PyLong_FromLongLong((long long)read_u64(message + 17));
    PyObject *data = PyBytes_FromStringAndSize(
        (const char *)message + XLOGDATA_HEADER, size - XLOGDATA_HEADER);
    /* The tuple owns whatever was made; a failed one leaves a NULL slot,
     * which tuple deallocation skips. */
    PyTuple_SET_ITEM(frame, 0, start);
    PyTuple_SET_ITEM(frame, 1, end);
    PyTuple_SET_ITEM(frame, 2, sent);
    PyTuple_SET_ITEM(frame, 3, data);
    if (start == NULL || end == NULL || sent == NULL || data == NULL) {
        Py_DECREF(frame);
        return NULL;
    }
    return frame;
}

static int
is_plain_tuple_subclass(PyTypeObject *type)
{
    return PyType_IsSubtype(type, &PyTuple_Type)
        && type->tp_basicsize == PyTuple_Type.tp_basicsize
        && type->tp_itemsize == PyTuple_Type.tp_itemsize;
}

static void *
address(PyObject *number, const char *what)
{
    void *pointer = PyLong_AsVoidPtr(number);
    if (pointer == NULL && !PyErr_Occurred()) {
        PyErr_Format(PyExc_ValueError, "%s is a null pointer", what);
    }
    return pointer;
}

PyDoc_STRVAR(drain_doc,
"drain(pgconn, consume_input, get_copy_data, freemem, limit, extra_reads, XLogData, LSN)\n"
"--\n\n"
"Pull up to `limit` complete CopyData messages out of libpq, without waiting.\n\n"
"The first four arguments are addresses: the PGconn and libpq's\n"
"PQconsumeInput, PQgetCopyData and PQfreemem. The caller holds the lock that\n"
"serialises calls on the connection, which must be in non-blocking mode.\n"
"Returns (items, raw, outcome): each item is an XLogData, or the message's\n"
"bytes when it is anything else (a keepalive, or malformed: the caller\n"
"parses those); raw counts the bytes items; outcome is 0 (nothing more for\n"
"now, or the limit), 1 (the server ended the COPY) or 2 (the connection is\n"
"broken; the items are what was buffered before).");

static PyObject *
drain(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 8) {
        PyErr_SetString(PyExc_TypeError, "drain() takes exactly 8 arguments");
        return NULL;
    }
    void *conn = address(args[0], "pgconn");
    consume_input_fn consume_input = (consume_input_fn)address(args[1], "PQconsumeInput");
    get_copy_data_fn get_copy_data = (get_copy_data_fn)address(args[2], "PQgetCopyData");
    freemem_fn freemem = (freemem_fn)address(args[3], "PQfreemem");
    if (PyErr_Occurred()) {
        return NULL;
    }
    Py_ssize_t limit = PyLong_AsSsize_t(args[4]);
    long extra_reads = PyLong_AsLong(args[5]);
    if (PyErr_Occurred()) {
        return NULL;
    }
    if (!PyType_Check(args[6]) || !is_plain_tuple_subclass((PyTypeObject *)args[6])) {
        PyErr_SetString(PyExc_TypeError, "XLogData must be a tuple subclass without fields");
        return NULL;
    }
    if (!PyType_Check(args[7]) || !PyType_IsSubtype((PyTypeObject *)args[7], &PyLong_Type)) {
        PyErr_SetString(PyExc_TypeError, "LSN must be an int subclass");
        return NULL;
    }
    PyTypeObject *xlogdata_type = (PyTypeObject *)args[6];
    PyTypeObject *lsn_type = (PyTypeObject *)args[7];

    PyObject *items = PyList_New(0);
    if (items == NULL) {
        return NULL;
    }
    Py_ssize_t raw = 0;
    int outcome = DRAIN_MORE;
    int broken = 0;
    int size = 0;
    /* The same loop as _drain_python. The GIL stays held: on a non-blocking
     * connection every call returns at once, and handing the GIL over for a
     * few microseconds could make this thread wait a whole switch interval
     * to get it back. */
    while (PyList_GET_SIZE(items) < limit) {
        if (size == 0 && !broken && !consume_input(conn)) {
            broken = 1; /* EOF: take what is buffered, then report it */
        }
        char *buffer = NULL;
        size = get_copy_data(conn, &buffer, 1);
        if (size > 0) {
            const unsigned char *message = (const unsigned char *)buffer;
            PyObject *item;
            if (message[0] == 'w' && size >= XLOGDATA_HEADER) {
                item = new_xlogdata(message, size, xlogdata_type, lsn_type);
            }
            else {
                item = PyBytes_FromStringAndSize(buffer, size);
                raw++;
            }
            freemem(buffer);
            if (item == NULL || PyList_Append(items, item) < 0) {
                /* Out of memory: nothing sensible is left to do with the
                 * stream, and the frames not returned were not acknowledged. */
                Py_XDECREF(item);
                Py_DECREF(items);
                return NULL;
            }
            Py_DECREF(item);
        }
        else if (size == 0) {
            if (broken || extra_reads <= 0) {
                break;
            }
            extra_reads--; /* TLS: OpenSSL may hold bytes the socket no longer shows */
        }
        else if (size == -1) {
            outcome = DRAIN_END_OF_COPY;
            break;
        }
        else {
            broken = 1;
            break;
        }
    }
    if (broken && outcome != DRAIN_END_OF_COPY) {
        outcome = DRAIN_LOST;
    }
    return Py_BuildValue("(Nni)", items, raw, outcome);
}

/* The columns of TupleData, as split_tuple found them. */
typedef struct {
    PyObject *values;   /* list, or NULL */
    Py_ssize_t end;     /* the position after the tuple */
    Py_ssize_t binary;  /* 'b' columns */
    Py_ssize_t special; /* 'n' and 'u' columns */
} Columns;

/* Split `count` columns at `pos`. Returns 1 with columns->values set, 0 if
 * the tuple is malformed (no exception set), -1 on an exception. */
static int
split_tuple(PyObject *data, Py_ssize_t pos, Py_ssize_t count, PyObject *unchanged,
            Columns *columns)
{
    const unsigned char *buffer = (const unsigned char *)PyBytes_AS_STRING(data);
    Py_ssize_t end = PyBytes_GET_SIZE(data);
    if (pos > end) {
        return 0;
    }
    PyObject *values = PyList_New(count);
    if (values == NULL) {
        return -1;
    }
    Py_ssize_t binary = 0, special = 0;
    for (Py_ssize_t i = 0; i < count; i++) {
        if (pos >= end) {
            goto malformed;
        }
        PyObject *value;
        switch (buffer[pos]) {
        case 't':
        case 'b': {
            if (end - pos < 5) {
                goto malformed;
            }
            uint32_t length = read_u32(buffer + pos + 1);
            Py_ssize_t start = pos + 5;
            if ((uint64_t)length > (uint64_t)(end - start)) {
                goto malformed;
            }
            if (buffer[pos] == 'b') {
                binary++;
            }
            value = PyBytes_FromStringAndSize((const char *)buffer + start, (Py_ssize_t)length);
            if (value == NULL) {
                Py_DECREF(values);
                return -1;
            }
            pos = start + (Py_ssize_t)length;
            break;
        }
        case 'n':
            value = Py_NewRef(Py_None);
            pos++;
            special++;
            break;
        case 'u':
            value = Py_NewRef(unchanged);
            pos++;
            special++;
            break;
        default:
            goto malformed;
        }
        PyList_SET_ITEM(values, i, value);
    }
    columns->values = values;
    columns->end = pos;
    columns->binary = binary;
    columns->special = special;
    return 1;

malformed:
    /* The list's unfilled slots are NULL, which list deallocation skips. */
    Py_DECREF(values);
    return 0;
}

/* data, pos and count from arguments: 0 on success. */
static int
tuple_arguments(PyObject *const *args, Py_ssize_t *pos, Py_ssize_t *count)
{
    if (!PyBytes_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "TupleData must be bytes");
        return -1;
    }
    *pos = PyLong_AsSsize_t(args[1]);
    *count = PyLong_AsSsize_t(args[2]);
    if (PyErr_Occurred()) {
        return -1;
    }
    if (*pos < 0 || *count < 0) {
        PyErr_SetString(PyExc_ValueError, "TupleData needs a position and count >= 0");
        return -1;
    }
    return 0;
}

/* --- RowCore ------------------------------------------------------------- */

/* changes.UNCHANGED: a raw value that, like None, is never converted. Looked
 * up on first use, when replicant.changes (which defines Row) is loaded. */
static PyObject *unchanged_marker = NULL;

static PyObject *
unchanged(void)
{
    if (unchanged_marker == NULL) {
        PyObject *changes = PyImport_ImportModule("replicant.changes");
        if (changes == NULL) {
            return NULL;
        }
        unchanged_marker = PyObject_GetAttrString(changes, "UNCHANGED");
        Py_DECREF(changes);
    }
    return unchanged_marker;
}

/* Interned attribute names of RowLayout, made when the module loads. */
static PyObject *str_index = NULL;
static PyObject *str_convert = NULL;
static PyObject *str_names = NULL;

typedef struct {
    PyObject_HEAD
    PyObject *layout;   /* the RowLayout */
    PyObject *raw;      /* list: the values as received */
    PyObject *index;    /* layout.index: dict, column name to position */
    PyObject *convert;  /* layout.convert: tuple, one converter per column */
    PyObject **values;  /* converted values, NULL where not read yet; NULL until the first read */
    Py_ssize_t size;    /* len(raw) */
} RowCore;

static PyObject *make_row(PyTypeObject *type, PyObject *layout, PyObject *values);

static PyObject *
row_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    PyObject *layout, *raw;
    if (kwargs == NULL && PyTuple_GET_SIZE(args) == 2) {
        /* The decoders' call, once per row: no argument parser needed. */
        layout = PyTuple_GET_ITEM(args, 0);
        raw = PyTuple_GET_ITEM(args, 1);
        if (!PyList_Check(raw)) {
            PyErr_SetString(PyExc_TypeError, "Row() needs the values as a list");
            return NULL;
        }
    }
    else {
        static char *keywords[] = {"layout", "raw", NULL};
        if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OO!:Row", keywords,
                                         &layout, &PyList_Type, &raw)) {
            return NULL;
        }
    }
    return make_row(type, layout, Py_NewRef(raw));
}

static int
row_traverse(RowCore *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self)); /* heap-type subclasses (Row) own a reference to their type */
    Py_VISIT(self->layout);
    Py_VISIT(self->raw);
    Py_VISIT(self->index);
    Py_VISIT(self->convert);
    if (self->values != NULL) {
        for (Py_ssize_t i = 0; i < self->size; i++) {
            Py_VISIT(self->values[i]);
        }
    }
    return 0;
}

static int
row_clear(RowCore *self)
{
    Py_CLEAR(self->layout);
    Py_CLEAR(self->raw);
    Py_CLEAR(self->index);
    Py_CLEAR(self->convert);
    if (self->values != NULL) {
        PyObject **values = self->values;
        self->values = NULL;
        for (Py_ssize_t i = 0; i < self->size; i++) {
            Py_XDECREF(values[i]);
        }
        PyMem_Free(values);
    }
    return 0;
}

static void
row_dealloc(RowCore *self)
{
    PyTypeObject *type = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    row_clear(self);
    type->tp_free((PyObject *)self);
}

/* The converter failed: raise what the Row's _error(name, exc) makes of it,
 * chained to the converter's exception (raise ... from exc). */
static void
conversion_failed(RowCore *self, PyObject *name)
{
    PyObject *type, *exc, *traceback;
    PyErr_Fetch(&type, &exc, &traceback);
    PyErr_NormalizeException(&type, &exc, &traceback);
    if (traceback != NULL) {
        PyException_SetTraceback(exc, traceback);
    }
    PyObject *error = PyObject_CallMethod((PyObject *)self, "_error", "OO", name, exc);
    if (error != NULL && !PyExceptionInstance_Check(error)) {
        PyErr_Format(PyExc_TypeError, "_error() must return an exception, not %.100s",
                     Py_TYPE(error)->tp_name);
        Py_CLEAR(error);
    }
    if (error == NULL) {
        Py_XDECREF(type);
        Py_XDECREF(exc);
        Py_XDECREF(traceback);
        return;
    }
    PyException_SetContext(error, Py_NewRef(exc));
    PyException_SetCause(error, exc); /* steals exc */
    PyErr_SetObject((PyObject *)Py_TYPE(error), error);
    Py_DECREF(error);
    Py_XDECREF(type);
    Py_XDECREF(traceback);
}

static PyObject *
row_subscript(RowCore *self, PyObject *name)
{
    PyObject *position = PyDict_GetItemWithError(self->index, name);
    if (position == NULL) {
        if (!PyErr_Occurred()) {
            /* KeyError(name), even when name is a tuple */
            PyObject *key = PyTuple_Pack(1, name);
            if (key != NULL) {
                PyErr_SetObject(PyExc_KeyError, key);
                Py_DECREF(key);
            }
        }
        return NULL;
    }
    Py_ssize_t i = PyLong_AsSsize_t(position);
    if (i == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (i < 0 || i >= self->size) {
        PyErr_SetString(PyExc_IndexError, "row layout names a column the row does not have");
        return NULL;
    }
    if (self->values == NULL) {
        self->values = PyMem_Calloc((size_t)self->size, sizeof(PyObject *));
        if (self->values == NULL) {
            return PyErr_NoMemory();
        }
    }
    PyObject *value = self->values[i];
    if (value != NULL) {
        return Py_NewRef(value);
    }
    PyObject *raw = PyList_GET_ITEM(self->raw, i);
    PyObject *marker = unchanged();
    if (marker == NULL) {
        return NULL;
    }
    if (raw == Py_None || raw == marker) {
        value = Py_NewRef(raw);
    }
    else {
        value = PyObject_CallOneArg(PyTuple_GET_ITEM(self->convert, i), raw);
        if (value == NULL) {
            /* Exceptions from the converter mean bad input; anything else
             * (KeyboardInterrupt, SystemExit) goes through as it is. */
            if (PyErr_ExceptionMatches(PyExc_Exception)) {
                conversion_failed(self, name);
            }
            return NULL;
        }
    }
    self->values[i] = value;
    return Py_NewRef(value);
}

static PyObject *
row_iter(RowCore *self)
{
    PyObject *names = PyObject_GetAttr(self->layout, str_names);
    if (names == NULL) {
        return NULL;
    }
    PyObject *iterator = PyObject_GetIter(names);
    Py_DECREF(names);
    return iterator;
}

static Py_ssize_t
row_length(RowCore *self)
{
    return PyDict_GET_SIZE(self->index);
}

static int
row_contains(RowCore *self, PyObject *name)
{
    return PyDict_Contains(self->index, name);
}

static PyMemberDef row_members[] = {
    {"_layout", T_OBJECT_EX, offsetof(RowCore, layout), READONLY, "the RowLayout"},
    {"_raw", T_OBJECT_EX, offsetof(RowCore, raw), READONLY, "the values as received"},
    {NULL},
};

static PyMappingMethods row_as_mapping = {
    .mp_length = (lenfunc)row_length,
    .mp_subscript = (binaryfunc)row_subscript,
};

static PySequenceMethods row_as_sequence = {
    .sq_contains = (objobjproc)row_contains,
};

PyDoc_STRVAR(row_doc,
"RowCore(layout, raw)\n"
"--\n\n"
"The storage of a Row and its __getitem__: ``raw`` is a list of values as\n"
"received, ``layout`` a RowLayout (names to positions, one converter per\n"
"value). A value is converted on first access and kept; a converter's\n"
"exception becomes what the row's ``_error(name, exc)`` returns.");

static PyTypeObject RowCoreType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "replicant._speedups.RowCore",
    .tp_basicsize = sizeof(RowCore),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_doc = row_doc,
    .tp_new = row_new,
    .tp_dealloc = (destructor)row_dealloc,
    .tp_traverse = (traverseproc)row_traverse,
    .tp_clear = (inquiry)row_clear,
    .tp_as_mapping = &row_as_mapping,
    .tp_as_sequence = &row_as_sequence,
    .tp_iter = (getiterfunc)row_iter,
    .tp_members = row_members,
};

/* A row of `type` (RowCore or a subclass) over `values`; steals `values`. */
static PyObject *
make_row(PyTypeObject *type, PyObject *layout, PyObject *values)
{
    PyObject *index = PyObject_GetAttr(layout, str_index);
    PyObject *convert = index ? PyObject_GetAttr(layout, str_convert) : NULL;
    if (convert == NULL || !PyDict_Check(index) || !PyTuple_Check(convert)
        || PyTuple_GET_SIZE(convert) != PyList_GET_SIZE(values)) {
        if (convert != NULL) {
            PyErr_SetString(PyExc_ValueError,
                            "a row needs a layout with an index dict and one converter per value");
        }
        Py_XDECREF(index);
        Py_XDECREF(convert);
        Py_DECREF(values);
        return NULL;
    }
    RowCore *row = (RowCore *)type->tp_alloc(type, 0);
    if (row == NULL) {
        Py_DECREF(index);
        Py_DECREF(convert);
        Py_DECREF(values);
        return NULL;
    }
    row->layout = Py_NewRef(layout);
    row->raw = values;
    row->index = index;
    row->convert = convert;
    row->values = NULL;
    row->size = PyList_GET_SIZE(values);
    return (PyObject *)row;
}

PyDoc_STRVAR(read_row_doc,
"read_row(data, pos, count, text, binary, row_type, unchanged)\n"
"--\n\n"
"Split the `count` columns of pgoutput TupleData at `pos` in `data` (the\n"
"bytes of each 't' or 'b' column, None for 'n', `unchanged` for 'u') and\n"
"make the row of them: ``row_type(text, values)`` when no\n"
"column is binary, ``row_type(binary, values)`` when every column is binary\n"
"(or NULL, or unchanged). Returns (row, end), or None when the tuple is\n"
"malformed or mixes text and binary columns: the Python code handles those.\n"
"``row_type`` must be RowCore or a subclass.");

static PyObject *
read_row(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    Py_ssize_t pos, count;
    if (nargs != 7) {
        PyErr_SetString(PyExc_TypeError, "read_row() takes exactly 7 arguments");
        return NULL;
    }
    if (tuple_arguments(args, &pos, &count) < 0) {
        return NULL;
    }
    if (!PyType_Check(args[5]) || !PyType_IsSubtype((PyTypeObject *)args[5], &RowCoreType)) {
        PyErr_SetString(PyExc_TypeError, "read_row() needs a RowCore type");
        return NULL;
    }
    Columns columns;
    int split = split_tuple(args[0], pos, count, args[6], &columns);
    if (split <= 0) {
        if (split < 0) {
            return NULL;
        }
        Py_RETURN_NONE;
    }
    PyObject *layout;
    if (columns.binary == 0) {
        layout = args[3];
    }
    else if (columns.binary + columns.special == count) {
        layout = args[4];
    }
    else {
        Py_DECREF(columns.values);
        Py_RETURN_NONE;
    }
    PyObject *row = make_row((PyTypeObject *)args[5], layout, columns.values);
    if (row == NULL) {
        return NULL;
    }
    return Py_BuildValue("(Nn)", row, columns.end);
}

/* --- maker ---------------------------------------------------------------- */

/* A callable that builds an instance of one slotted class and fills the
 * named slots from its arguments, in order: what object.__new__ and each
 * slot's descriptor __set__ do, in one call. Frozen dataclasses refuse
 * setattr, but their slots are set the way their own __init__ sets them
 * (object.__setattr__ through the same descriptors). */
typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    PyTypeObject *type;
    PyObject *names;           /* tuple of str, for repr and errors */
    Py_ssize_t count;
    Py_ssize_t offsets[1];     /* count of them (the object is variable-sized) */
} Maker;

static PyObject *
maker_call(Maker *self, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if (nargs != self->count || (kwnames != NULL && PyTuple_GET_SIZE(kwnames) != 0)) {
        PyErr_Format(PyExc_TypeError, "making %s takes exactly %zd positional arguments (%R)",
                     self->type->tp_name, self->count, self->names);
        return NULL;
    }
    PyObject *object = self->type->tp_alloc(self->type, 0);
    if (object == NULL) {
        return NULL;
    }
    for (Py_ssize_t i = 0; i < nargs; i++) {
        PyObject **slot = (PyObject **)((char *)object + self->offsets[i]);
        Py_XSETREF(*slot, Py_NewRef(args[i]));
    }
    return object;
}

static void
maker_dealloc(Maker *self)
{
    Py_XDECREF(self->type);
    Py_XDECREF(self->names);
    PyObject_Free(self);
}

static PyObject *
maker_repr(Maker *self)
{
    return PyUnicode_FromFormat("<maker of %s%R>", self->type->tp_name, self->names);
}

static PyTypeObject MakerType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "replicant._speedups.Maker",
    .tp_basicsize = offsetof(Maker, offsets),
    .tp_itemsize = sizeof(Py_ssize_t),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_doc = "Builds one slotted class from positional values; see maker().",
    .tp_dealloc = (destructor)maker_dealloc,
    .tp_repr = (reprfunc)maker_repr,
    .tp_vectorcall_offset = offsetof(Maker, vectorcall),
    .tp_call = PyVectorcall_Call,
};

PyDoc_STRVAR(maker_doc,
"maker(cls, names)\n"
"--\n\n"
"A callable ``make(*values)`` that returns a new ``cls`` with the slots\n"
"``names`` set to ``values``, in order, without calling ``__init__``.\n"
"Every name must be an object slot (``__slots__``) of ``cls``; the slots not\n"
"named are left unset.");

static PyObject *
maker(PyObject *module, PyObject *args)
{
    PyTypeObject *type;
    PyObject *names;
    if (!PyArg_ParseTuple(args, "O!O!:maker", &PyType_Type, &type, &PyTuple_Type, &names)) {
        return NULL;
    }
    /* The instances must be plain objects: tp_alloc'ed, not variable-sized. */
    if (type->tp_itemsize != 0 || type->tp_alloc == NULL) {
        PyErr_Format(PyExc_TypeError, "%s cannot be made by maker()", type->tp_name);
        return NULL;
    }
    Py_ssize_t count = PyTuple_GET_SIZE(names);
    Maker *self = PyObject_NewVar(Maker, &MakerType, count);
    if (self == NULL) {
        return NULL;
    }
    self->vectorcall = (vectorcallfunc)maker_call;
    self->type = (PyTypeObject *)Py_NewRef(type);
    self->names = Py_NewRef(names);
    self->count = count;
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *descriptor = PyObject_GetAttr((PyObject *)type, PyTuple_GET_ITEM(names, i));
        if (descriptor == NULL) {
            Py_DECREF(self);
            return NULL;
        }
        int ok = Py_IS_TYPE(descriptor, &PyMemberDescr_Type)
            && ((PyMemberDescrObject *)descriptor)->d_member->type == T_OBJECT_EX
            && !(((PyMemberDescrObject *)descriptor)->d_member->flags & READONLY);
        if (ok) {
            self->offsets[i] = ((PyMemberDescrObject *)descriptor)->d_member->offset;
        }
        Py_DECREF(descriptor);
        if (!ok) {
            PyErr_Format(PyExc_TypeError, "%R is not a slot of %s",
                         PyTuple_GET_ITEM(names, i), type->tp_name);
            Py_DECREF(self);
            return NULL;
        }
    }
    return (PyObject *)self;
}

/* --- from_text ------------------------------------------------------------ */

/* A reader of one type's text representation: str as it is, or UTF-8 bytes
 * decoded, then parse(text); if that raises ValueError and there is a
 * fallback, fallback(value) (the value as it came) instead. */
typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    PyObject *parse;
    PyObject *fallback; /* or NULL */
} FromText;

static PyObject *
from_text_call(FromText *self, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    if (PyVectorcall_NARGS(nargsf) != 1 || (kwnames != NULL && PyTuple_GET_SIZE(kwnames) != 0)) {
        PyErr_SetString(PyExc_TypeError, "a text reader takes exactly one value");
        return NULL;
    }
    PyObject *value = args[0];
    if (self->parse == (PyObject *)&PyLong_Type && PyBytes_CheckExact(value)) {
        /* int of ASCII digits, without making a str first. Bytes objects
         * end in a NUL, as PyLong_FromString needs; anything it does not
         * read to the end goes the common way, to fail as int(text) fails. */
        const char *digits = PyBytes_AS_STRING(value);
        char *stop = NULL;
        PyObject *number = PyLong_FromString(digits, &stop, 10);
        if (number != NULL && stop == digits + PyBytes_GET_SIZE(value)) {
            return number;
        }
        Py_XDECREF(number);
        PyErr_Clear();
    }
    PyObject *text;
    if (PyUnicode_Check(value)) {
        text = Py_NewRef(value);
    }
    else if (PyBytes_Check(value)) {
        text = PyUnicode_DecodeUTF8(PyBytes_AS_STRING(value), PyBytes_GET_SIZE(value), NULL);
        if (text == NULL) {
            return NULL;
        }
    }
    else {
        PyErr_Format(PyExc_TypeError, "a text value must be str or bytes, not %.100s",
                     Py_TYPE(value)->tp_name);
        return NULL;
    }
    PyObject *result = PyObject_CallOneArg(self->parse, text);
    Py_DECREF(text);
    if (result == NULL && self->fallback != NULL && PyErr_ExceptionMatches(PyExc_ValueError)) {
        PyErr_Clear();
        result = PyObject_CallOneArg(self->fallback, value);
    }
    return result;
}

static int
from_text_traverse(FromText *self, visitproc visit, void *arg)
{
    Py_VISIT(self->parse);
    Py_VISIT(self->fallback);
    return 0;
}

static int
from_text_clear(FromText *self)
{
    Py_CLEAR(self->parse);
    Py_CLEAR(self->fallback);
    return 0;
}

static void
from_text_dealloc(FromText *self)
{
    PyObject_GC_UnTrack(self);
    from_text_clear(self);
    PyObject_GC_Del(self);
}

static PyObject *
from_text_repr(FromText *self)
{
    return PyUnicode_FromFormat("<text reader %R, falling back to %R>", self->parse,
                                self->fallback != NULL ? self->fallback : Py_None);
}

static PyTypeObject FromTextType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "replicant._speedups.FromText",
    .tp_basicsize = sizeof(FromText),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_doc = "A reader of a text representation; see from_text().",
    .tp_dealloc = (destructor)from_text_dealloc,
    .tp_traverse = (traverseproc)from_text_traverse,
    .tp_clear = (inquiry)from_text_clear,
    .tp_repr = (reprfunc)from_text_repr,
    .tp_vectorcall_offset = offsetof(FromText, vectorcall),
    .tp_call = PyVectorcall_Call,
};

PyDoc_STRVAR(from_text_doc,
"from_text(parse, fallback=None)\n"
"--\n\n"
"A one-argument reader: ``parse`` of the value as text (``str`` as it is,\n"
"``bytes`` decoded from UTF-8); when ``parse`` raises ValueError and\n"
"``fallback`` is given, ``fallback`` of the value as it came. Other values\n"
"than str and bytes raise TypeError.");

static PyObject *
from_text(PyObject *module, PyObject *args)
{
    PyObject *parse, *fallback = Py_None;
    if (!PyArg_ParseTuple(args, "O|O:from_text", &parse, &fallback)) {
        return NULL;
    }
    if (!PyCallable_Check(parse) || (fallback != Py_None && !PyCallable_Check(fallback))) {
        PyErr_SetString(PyExc_TypeError, "from_text() needs callables");
        return NULL;
    }
    FromText *self = PyObject_GC_New(FromText, &FromTextType);
    if (self == NULL) {
        return NULL;
    }
    self->vectorcall = (vectorcallfunc)from_text_call;
    self->parse = Py_NewRef(parse);
    self->fallback = fallback == Py_None ? NULL : Py_NewRef(fallback);
    PyObject_GC_Track(self);
    return (PyObject *)self;
}

static PyMethodDef methods[] = {
    {"drain", (PyCFunction)(void (*)(void))drain, METH_FASTCALL, drain_doc},
    {"read_row", (PyCFunction)(void (*)(void))read_row, METH_FASTCALL, read_row_doc},
    {"maker", (PyCFunction)maker, METH_VARARGS, maker_doc},
    {"from_text", (PyCFunction)from_text, METH_VARARGS, from_text_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "replicant._speedups",
    .m_doc = "Compiled equivalents of replicant's per-message loops (see the source).",
    .m_size = -1, /* a static type and one cached object: not for subinterpreters */
    .m_methods = methods,
};

PyMODINIT_FUNC
PyInit__speedups(void)
{
    str_index = PyUnicode_InternFromString("index");
    str_convert = PyUnicode_InternFromString("convert");
    str_names = PyUnicode_InternFromString("names");
    if (str_index == NULL || str_convert == NULL || str_names == NULL
        || PyType_Ready(&RowCoreType) < 0
        || PyType_Ready(&MakerType) < 0 || PyType_Ready(&FromTextType) < 0) {
        return NULL;
    }
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) {
        return NULL;
    }
    if (PyModule_AddObjectRef(m, "RowCore", (PyObject *)&RowCoreType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
