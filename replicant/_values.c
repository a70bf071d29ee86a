/*
 * replicant._speedups, part: values.
 *
 *   from_text   the compiled twin of values.py's _from_text_python: a
 *               text-value reader that decodes UTF-8 bytes and parses the
 *               text (integers straight from ASCII bytes).
 *   float4_bin  the compiled twin of values.py's _float4_bin_python: a
 *               binary float4 as the shortest decimal that reads back as
 *               the same float32, found the same way.
 *   isoformat   datetime.isoformat() of a datetime, for the JSON form
 *               (formatting.py): the same text without PyUnicode_FromFormat.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <string.h>
#include <structmember.h> /* PyMemberDef, T_OBJECT_EX (3.10 and 3.11) */
#include <datetime.h>

#include "_speedups.h"

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

/* The double that `digits` significant digits of `value` read back as:
 * float(f"{value:.{digits}g}"), with Python's own locale-independent
 * conversions. Returns -1 with an exception set on failure. */
static int
rounded(double value, int digits, double *out)
{
    char *text = PyOS_double_to_string(value, 'g', digits, 0, NULL);
    if (text == NULL) {
        return -1;
    }
    double back = PyOS_string_to_double(text, NULL, NULL);
    PyMem_Free(text);
    if (back == -1.0 && PyErr_Occurred()) {
        return -1;
    }
    *out = back;
    return 0;
}

/* What struct.pack(">f", candidate) == data says: the candidate rounds to
 * the same float32 (and not past its largest value, which pack refuses). */
static int
same_float32(double candidate, uint32_t bits)
{
    float narrowed = (float)candidate;
    if (isinf(narrowed) && !isinf(candidate)) {
        return 0;
    }
    uint32_t got;
    memcpy(&got, &narrowed, sizeof got);
    return got == bits;
}

static PyObject *
float4_error(Py_ssize_t size)
{
    PyObject *errors = PyImport_ImportModule("replicant.errors");
    if (errors == NULL) {
        return NULL;
    }
    PyObject *cls = PyObject_GetAttrString(errors, "DecodeError");
    Py_DECREF(errors);
    if (cls == NULL) {
        return NULL;
    }
    PyObject *message = PyUnicode_FromFormat(
        "binary float4 value has %zd bytes, expected 4", size);
    if (message != NULL) {
        PyErr_SetObject(cls, message);
        Py_DECREF(message);
    }
    Py_DECREF(cls);
    return NULL;
}

PyDoc_STRVAR(float4_bin_doc,
"float4_bin(data)\n"
"--\n\n"
"A binary float4 (4 bytes, big-endian) as the shortest decimal that reads\n"
"back as the same float32, as a float: values.py's _float4_bin_python.\n"
"Raises DecodeError for another size.");

static PyObject *
float4_bin(PyObject *module, PyObject *data)
{
    Py_buffer view;
    if (PyObject_GetBuffer(data, &view, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    if (view.len != 4) {
        Py_ssize_t size = view.len;
        PyBuffer_Release(&view);
        return float4_error(size);
    }
    const unsigned char *p = (const unsigned char *)view.buf;
    uint32_t bits = ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
    PyBuffer_Release(&view);
    float single;
    memcpy(&single, &bits, sizeof single);
    double value = (double)single;
    if (!isfinite(value)) {
        return PyFloat_FromDouble(value);
    }
    /* If d significant digits read back as the same float32, so do d + 1:
     * search for the fewest (9 always do), as the Python twin does. */
    double found[10];
    int known[10] = {0};
    int low = 1, high = 9;
    while (low < high) {
        int digits = (low + high) / 2;
        if (rounded(value, digits, &found[digits]) < 0) {
            return NULL;
        }
        known[digits] = 1;
        if (same_float32(found[digits], bits)) {
            high = digits;
        }
        else {
            low = digits + 1;
        }
    }
    if (!known[high] && rounded(value, high, &found[high]) < 0) {
        return NULL;
    }
    return PyFloat_FromDouble(found[high]);
}

PyDoc_STRVAR(isoformat_doc,
"isoformat(value)\n"
"--\n\n"
"``value.isoformat()`` for a datetime, written directly; anything unusual\n"
"(a subclass, an offset that is not a timedelta within a day) is left to\n"
"``value.isoformat()`` itself.");

static PyObject *
isoformat(PyObject *module, PyObject *value)
{
    if (!PyDateTime_CheckExact(value)) {
        return PyObject_CallMethod(value, "isoformat", NULL);
    }
    char text[80];
    int n = snprintf(text, 40, "%04d-%02d-%02dT%02d:%02d:%02d", PyDateTime_GET_YEAR(value),
                     PyDateTime_GET_MONTH(value), PyDateTime_GET_DAY(value),
                     PyDateTime_DATE_GET_HOUR(value), PyDateTime_DATE_GET_MINUTE(value),
                     PyDateTime_DATE_GET_SECOND(value));
    int micros = PyDateTime_DATE_GET_MICROSECOND(value);
    if (micros) {
        n += snprintf(text + n, 10, ".%06d", micros);
    }
    PyObject *zone = PyDateTime_DATE_GET_TZINFO(value);
    if (zone != Py_None) {
        if (zone == PyDateTime_TimeZone_UTC) {
            memcpy(text + n, "+00:00", 6);
            n += 6;
        }
        else {
            PyObject *offset = PyObject_CallMethod(zone, "utcoffset", "O", value);
            if (offset == NULL) {
                return NULL;
            }
            if (offset != Py_None) {
                if (!PyDelta_CheckExact(offset)) {
                    Py_DECREF(offset);
                    return PyObject_CallMethod(value, "isoformat", NULL);
                }
                long long total = ((long long)PyDateTime_DELTA_GET_DAYS(offset) * 86400
                                   + PyDateTime_DELTA_GET_SECONDS(offset))
                                      * 1000000LL
                                  + PyDateTime_DELTA_GET_MICROSECONDS(offset);
                Py_DECREF(offset);
                if (total <= -86400000000LL || total >= 86400000000LL) {
                    return PyObject_CallMethod(value, "isoformat", NULL); /* it raises */
                }
                char sign = '+';
                if (total < 0) {
                    sign = '-';
                    total = -total;
                }
                int us = (int)(total % 1000000);
                int seconds = (int)(total / 1000000);
                int hours = seconds / 3600, minutes = seconds / 60 % 60;
                seconds %= 60;
                if (us) {
                    n += snprintf(text + n, 24, "%c%02d:%02d:%02d.%06d", sign, hours, minutes,
                                  seconds, us);
                }
                else if (seconds) {
                    n += snprintf(text + n, 24, "%c%02d:%02d:%02d", sign, hours, minutes,
                                  seconds);
                }
                else {
                    n += snprintf(text + n, 24, "%c%02d:%02d", sign, hours, minutes);
                }
            }
            else {
                Py_DECREF(offset);
            }
        }
    }
    return PyUnicode_DecodeASCII(text, n, NULL);
}

static PyMethodDef values_methods[] = {
    {"isoformat", (PyCFunction)isoformat, METH_O, isoformat_doc},
    {"from_text", (PyCFunction)from_text, METH_VARARGS, from_text_doc},
    {"float4_bin", (PyCFunction)float4_bin, METH_O, float4_bin_doc},
    {NULL, NULL, 0, NULL},
};

int
replicant_values_exec(PyObject *module)
{
    PyDateTime_IMPORT;
    if (PyDateTimeAPI == NULL) {
        return -1;
    }
    if (PyType_Ready(&FromTextType) < 0) {
        return -1;
    }
    return PyModule_AddFunctions(module, values_methods);
}
