/*
 * replicant._speedups, part: maker, the compiled twin of changes.py's
 * new_begin, new_commit, new_insert, new_update and new_delete: build a
 * slotted event without running its dataclass __init__.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <structmember.h> /* PyMemberDef, T_OBJECT_EX (3.10 and 3.11) */

#include "_speedups.h"

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

static PyMethodDef events_methods[] = {
    {"maker", (PyCFunction)maker, METH_VARARGS, maker_doc},
    {NULL, NULL, 0, NULL},
};

int
replicant_events_exec(PyObject *module)
{
    if (PyType_Ready(&MakerType) < 0) {
        return -1;
    }
    return PyModule_AddFunctions(module, events_methods);
}
