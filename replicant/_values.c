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
 *               (formatting.py): the same text, its digits written by hand;
 *               replicant_isoformat_utc the same into a buffer (_json.c).
 *   pg_datetime the compiled twin of protocol.py's pg_timestamp_to_datetime
 *               (the commit times of Begin and Commit).
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

/* Raise replicant.errors.<name>(message); always NULL. */
static PyObject *
raise_replicant_error(const char *name, PyObject *message)
{
    if (message == NULL) {
        return NULL;
    }
    PyObject *errors = PyImport_ImportModule("replicant.errors");
    PyObject *cls = errors ? PyObject_GetAttrString(errors, name) : NULL;
    Py_XDECREF(errors);
    if (cls != NULL) {
        PyErr_SetObject(cls, message);
        Py_DECREF(cls);
    }
    Py_DECREF(message);
    return NULL;
}

static PyObject *
float4_error(Py_ssize_t size)
{
    return raise_replicant_error(
        "DecodeError", PyUnicode_FromFormat("binary float4 value has %zd bytes, expected 4", size));
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

/* Two digits, four digits, six digits: what snprintf's %02d, %04d and %06d
 * write for values in range, at a tenth of the cost. */
static char *
put_digits(char *out, int value, int width)
{
    for (int k = width - 1; k >= 0; k--) {
        out[k] = (char)('0' + value % 10);
        value /= 10;
    }
    return out + width;
}

/* A datetime's isoformat() up to its offset, into out (room for 26): the end. */
static char *
put_date_and_clock(PyObject *value, char *out)
{
    char *p = put_digits(out, PyDateTime_GET_YEAR(value), 4);
    *p++ = '-';
    p = put_digits(p, PyDateTime_GET_MONTH(value), 2);
    *p++ = '-';
    p = put_digits(p, PyDateTime_GET_DAY(value), 2);
    *p++ = 'T';
    p = put_digits(p, PyDateTime_DATE_GET_HOUR(value), 2);
    *p++ = ':';
    p = put_digits(p, PyDateTime_DATE_GET_MINUTE(value), 2);
    *p++ = ':';
    p = put_digits(p, PyDateTime_DATE_GET_SECOND(value), 2);
    int micros = PyDateTime_DATE_GET_MICROSECOND(value);
    if (micros) {
        *p++ = '.';
        p = put_digits(p, micros, 6);
    }
    return p;
}

/* datetime.isoformat() of an exact datetime that is naive or in UTC (the
 * timezone.utc singleton), into out (room for 32): its length, or 0 for any
 * other datetime (a subclass, another zone), which the caller formats the
 * long way. */
int
replicant_isoformat_utc(PyObject *value, char *out)
{
    if (!PyDateTime_CheckExact(value)) {
        return 0;
    }
    PyObject *zone = PyDateTime_DATE_GET_TZINFO(value);
    if (zone != Py_None && zone != PyDateTime_TimeZone_UTC) {
        return 0;
    }
    char *p = put_date_and_clock(value, out);
    if (zone != Py_None) {
        memcpy(p, "+00:00", 6);
        p += 6;
    }
    return (int)(p - out);
}

static PyObject *
isoformat(PyObject *module, PyObject *value)
{
    char text[80];
    int n = replicant_isoformat_utc(value, text);
    if (n > 0) {
        return PyUnicode_DecodeASCII(text, n, NULL);
    }
    if (!PyDateTime_CheckExact(value)) {
        return PyObject_CallMethod(value, "isoformat", NULL);
    }
    char *p = put_date_and_clock(value, text);
    n = (int)(p - text);
    /* Another zone than UTC (replicant_isoformat_utc wrote the others). */
    PyObject *zone = PyDateTime_DATE_GET_TZINFO(value);
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
        p = text + n;
        *p++ = sign;
        p = put_digits(p, hours, 2);
        *p++ = ':';
        p = put_digits(p, minutes, 2);
        if (us || seconds) {
            *p++ = ':';
            p = put_digits(p, seconds, 2);
            if (us) {
                *p++ = '.';
                p = put_digits(p, us, 6);
            }
        }
        n = (int)(p - text);
    }
    else {
        Py_DECREF(offset);
    }
    return PyUnicode_DecodeASCII(text, n, NULL);
}

/* PostgreSQL's epoch, 2000-01-01, in days after 1970-01-01, and the range of
 * datetime (0001-01-01 to 9999-12-31) in microseconds after the epoch. */
#define PG_EPOCH_DAYS 10957LL
#define US_PER_DAY 86400000000LL
#define PG_TIME_MIN (-730119LL * US_PER_DAY)             /* 0001-01-01 00:00 */
#define PG_TIME_MAX (2921940LL * US_PER_DAY - 1)         /* 9999-12-31 23:59:59.999999 */

static PyObject *
pg_time_out_of_range(PyObject *value)
{
    return raise_replicant_error(
        "ProtocolError",
        PyUnicode_FromFormat("timestamp out of range: %S us since 2000-01-01", value));
}

PyDoc_STRVAR(pg_datetime_doc,
"pg_datetime(value)\n"
"--\n\n"
"PostgreSQL-epoch microseconds as an aware UTC datetime: protocol.py's\n"
"pg_timestamp_to_datetime, without a timedelta in between. Raises\n"
"ProtocolError for a value outside datetime's range.");

static PyObject *
pg_datetime(PyObject *module, PyObject *value)
{
    if (!PyLong_Check(value)) {
        PyErr_Format(PyExc_TypeError, "pg_datetime takes an int, not %.100s",
                     Py_TYPE(value)->tp_name);
        return NULL;
    }
    int overflow = 0;
    long long us = PyLong_AsLongLongAndOverflow(value, &overflow);
    if (us == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (overflow || us < PG_TIME_MIN || us > PG_TIME_MAX) {
        return pg_time_out_of_range(value);
    }
    long long days = us / US_PER_DAY, rest = us % US_PER_DAY;
    if (rest < 0) {
        days -= 1;
        rest += US_PER_DAY;
    }
    /* Days after 1970-01-01 to a civil date (the proleptic Gregorian
     * calendar, as datetime's): eras of 400 years from 0000-03-01. */
    long long z = days + PG_EPOCH_DAYS + 719468;
    long long era = (z >= 0 ? z : z - 146096) / 146097;
    long long doe = z - era * 146097;                                  /* 0..146096 */
    long long yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365; /* 0..399 */
    long long doy = doe - (365 * yoe + yoe / 4 - yoe / 100);           /* 0..365 */
    long long mp = (5 * doy + 2) / 153;                                /* 0..11 */
    int day = (int)(doy - (153 * mp + 2) / 5 + 1);
    int month = (int)(mp < 10 ? mp + 3 : mp - 9);
    int year = (int)(yoe + era * 400 + (month <= 2));
    int micros = (int)(rest % 1000000);
    int seconds = (int)(rest / 1000000);
    return PyDateTimeAPI->DateTime_FromDateAndTime(
        year, month, day, seconds / 3600, seconds / 60 % 60, seconds % 60, micros,
        PyDateTime_TimeZone_UTC, PyDateTimeAPI->DateTimeType);
}

static PyMethodDef values_methods[] = {
    {"isoformat", (PyCFunction)isoformat, METH_O, isoformat_doc},
    {"pg_datetime", (PyCFunction)pg_datetime, METH_O, pg_datetime_doc},
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
