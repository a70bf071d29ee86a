/*
 * replicant._speedups, part: rows.
 *
 *   RowCore     the compiled twin of changes.py's _RowCore: the storage of a
 *               Row, and the mapping protocol (a value is converted on first
 *               access); a converter's exception becomes what the Row's own
 *               _error method returns.
 *   read_row    the compiled twin of decoders/pgoutput.py's _walk_tuple:
 *               split pgoutput TupleData into its column values, and make
 *               the Row (a RowCore) of them; None for a malformed tuple.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <structmember.h> /* PyMemberDef, T_OBJECT_EX (3.10 and 3.11) */

#include "_speedups.h"

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
            uint32_t length = replicant_u32(buffer + pos + 1);
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
    Py_ssize_t end = 0;
    PyObject *row = replicant_read_row(args[0], pos, count, args[3], args[4],
                                       (PyTypeObject *)args[5], args[6], &end);
    if (row == NULL) {
        if (PyErr_Occurred()) {
            return NULL;
        }
        Py_RETURN_NONE; /* malformed or mixed: the Python code's */
    }
    return Py_BuildValue("(Nn)", row, end);
}

/* For _pgout.c: the row of pgoutput TupleData at `pos` (`count` columns), made
 * like read_row makes it. Returns the row with *end after the tuple; NULL
 * with no exception set when the tuple is malformed or mixes text and binary
 * columns (the Python code handles those); NULL with an exception on failure. */
PyObject *
replicant_read_row(PyObject *data, Py_ssize_t pos, Py_ssize_t count, PyObject *text,
                   PyObject *binary, PyTypeObject *row_type, PyObject *unchanged,
                   Py_ssize_t *end)
{
    Columns columns;
    int split = split_tuple(data, pos, count, unchanged, &columns);
    if (split <= 0) {
        return NULL;
    }
    PyObject *layout;
    if (columns.binary == 0) {
        layout = text;
    }
    else if (columns.binary + columns.special == count) {
        layout = binary;
    }
    else {
        Py_DECREF(columns.values);
        return NULL;
    }
    *end = columns.end;
    return make_row(row_type, layout, columns.values);
}

void
replicant_row_parts(PyObject *row, PyObject **layout, PyObject **raw)
{
    *layout = ((RowCore *)row)->layout;
    *raw = ((RowCore *)row)->raw;
}

int
replicant_is_row_type(PyObject *type)
{
    return PyType_Check(type) && PyType_IsSubtype((PyTypeObject *)type, &RowCoreType);
}

static PyMethodDef rows_methods[] = {
    {"read_row", (PyCFunction)(void (*)(void))read_row, METH_FASTCALL, read_row_doc},
    {NULL, NULL, 0, NULL},
};

int
replicant_rows_exec(PyObject *module)
{
    str_index = PyUnicode_InternFromString("index");
    str_convert = PyUnicode_InternFromString("convert");
    str_names = PyUnicode_InternFromString("names");
    if (str_index == NULL || str_convert == NULL || str_names == NULL
        || PyType_Ready(&RowCoreType) < 0) {
        return -1;
    }
    if (PyModule_AddObjectRef(module, "RowCore", (PyObject *)&RowCoreType) < 0) {
        return -1;
    }
    return PyModule_AddFunctions(module, rows_methods);
}
