/*
 * replicant._speedups, part: drain, the compiled twin of libpq.py's
 * _drain_python: pull every complete CopyData message out of libpq, parsing
 * XLogData headers on the way. What cannot be parsed here (a keepalive,
 * anything malformed) is handed back as bytes for the Python code.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <structmember.h> /* PyMemberDef, T_OBJECT_EX (3.10 and 3.11) */

#include "_speedups.h"

/* libpq's signatures (libpq-fe.h), called through the addresses that ctypes
 * resolved in the libpq psycopg2 uses: this module links no libpq itself. */
typedef int (*consume_input_fn)(void *conn);
typedef int (*get_copy_data_fn)(void *conn, char **buffer, int async);
typedef void (*freemem_fn)(void *ptr);

/* What drain's third result means; libpq.py names the same values. */
enum { DRAIN_MORE = 0, DRAIN_END_OF_COPY = 1, DRAIN_LOST = 2 };

/* An XLogData message: 'w', start, end, send time, then the plugin's data. */
#define XLOGDATA_HEADER 25

/* int.__new__(lsn_type, value): an LSN without running LSN.__new__'s checks,
 * which an unsigned 64-bit value always passes. With `direct` (CPython
 * before 3.12, and an int subclass of int's own size: see lsn_is_direct),
 * the object is allocated and its digits written as int.__new__ itself does
 * for a subclass (long_subtype_new), skipping the argument tuple, the
 * argument parsing and the temporary int: a fifth of the cost, paid twice
 * for every XLogData. */
static PyObject *
new_lsn(PyTypeObject *lsn_type, uint64_t value, int direct)
{
#if PY_VERSION_HEX < 0x030C0000
    if (direct) {
        digit digits[(64 + PyLong_SHIFT - 1) / PyLong_SHIFT];
        Py_ssize_t ndigits = 0;
        for (uint64_t rest = value; rest != 0; rest >>= PyLong_SHIFT) {
            digits[ndigits++] = (digit)(rest & PyLong_MASK);
        }
        /* At least one digit is allocated, as for every int, zero included. */
        PyLongObject *lsn = (PyLongObject *)lsn_type->tp_alloc(lsn_type, ndigits ? ndigits : 1);
        if (lsn == NULL) {
            return NULL;
        }
        Py_SET_SIZE(lsn, ndigits);
        lsn->ob_digit[0] = 0;
        for (Py_ssize_t i = 0; i < ndigits; i++) {
            lsn->ob_digit[i] = digits[i];
        }
        /* A heap type's instances are tracked by the collector; an int with
         * no attributes refers to nothing but its type, so it needs not be. */
        if (PyObject_IS_GC((PyObject *)lsn)) {
            PyObject_GC_UnTrack(lsn);
        }
        return (PyObject *)lsn;
    }
#else
    (void)direct;
#endif
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

/* Whether new_lsn may build lsn_type's objects itself: a subclass of int
 * that adds nothing to int's layout (LSN has __slots__ = ()). */
static int
lsn_is_direct(PyTypeObject *lsn_type)
{
    return lsn_type->tp_basicsize == PyLong_Type.tp_basicsize
        && lsn_type->tp_itemsize == PyLong_Type.tp_itemsize
        && lsn_type->tp_dictoffset == 0;
}

/* For _pgout.c: LSN(value) of lsn_type, an int subclass, as new_lsn makes it. */
PyObject *
replicant_new_lsn(PyTypeObject *lsn_type, uint64_t value)
{
    return new_lsn(lsn_type, value, lsn_is_direct(lsn_type));
}

/* XLogData(LSN(start), LSN(end), send_time, data) from a whole message. */
static PyObject *
new_xlogdata(const unsigned char *message, Py_ssize_t size,
             PyTypeObject *xlogdata_type, PyTypeObject *lsn_type, int direct)
{
    /* A tuple subclass without extra fields (checked by the caller) is built
     * like tuple.__new__ builds one: allocate, then fill every slot. */
    PyObject *frame = xlogdata_type->tp_alloc(xlogdata_type, 4);
    if (frame == NULL) {
        return NULL;
    }
    PyObject *start = new_lsn(lsn_type, replicant_u64(message + 1), direct);
    PyObject *end = new_lsn(lsn_type, replicant_u64(message + 9), direct);
    PyObject *sent = PyLong_FromLongLong((long long)replicant_u64(message + 17));
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
    /* Ints and bytes only: the frame can be in no reference cycle, and the
     * collector need not walk it (a batch holds thousands), as it stops
     * walking a plain tuple of such items once it has seen one. */
    PyObject_GC_UnTrack(frame);
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
    int direct = lsn_is_direct(lsn_type);

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
                item = new_xlogdata(message, size, xlogdata_type, lsn_type, direct);
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

static PyMethodDef drain_methods[] = {
    {"drain", (PyCFunction)(void (*)(void))drain, METH_FASTCALL, drain_doc},
    {NULL, NULL, 0, NULL},
};

int
replicant_drain_exec(PyObject *module)
{
    return PyModule_AddFunctions(module, drain_methods);
}
