/* A batch's device ids checked and packed into one byte array in C: distinct.py's batch path.
 *
 * distinct.pack_ids takes a batch's ids for the compiled passes when every one is a plain str
 * of ASCII, neither blank nor too long. In Python that took four passes over the ids (their
 * types, a join, an ASCII check, a split), about 150 ns an id: a fifth of a batch with device
 * ids. Here one pass checks each str's own bytes (an ASCII str stores a byte a character) and a
 * second copies them. It is optional: distinct.py falls back to the Python passes when it is not
 * built, and both take and refuse the same ids (tests/test_presence_distinct.py compares them).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define PREFETCH_AHEAD 8 /* ids ahead whose str objects are asked for (two cache lines each) */

/* str.isspace's ASCII whitespace, what str.strip removes: a blank id is made of these only. */
static int is_space(unsigned char b) {
    return b == 32 || (b >= 9 && b <= 13) || (b >= 28 && b <= 31);
}

/* Whether s is an id the packed path takes: an exact str (not a subclass, whose str() the
 * general path keeps), ASCII, of 1 to max_len characters, no NUL, not only whitespace. */
static int packable(PyObject *s, Py_ssize_t max_len) {
    if (!PyUnicode_CheckExact(s) || PyUnicode_READY(s) < 0)
        return 0;
    Py_ssize_t len = PyUnicode_GET_LENGTH(s);
    if (!PyUnicode_IS_ASCII(s) || len < 1 || len > max_len)
        return 0;
    const unsigned char *data = PyUnicode_1BYTE_DATA(s);
    if (memchr(data, 0, (size_t)len) != NULL)
        return 0;
    for (Py_ssize_t k = 0; k < len; k++)
        if (!is_space(data[k]))
            return 1;
    return 0;
}

/* The items of a 1-D, C-contiguous NumPy array of objects, read from its
 * __array_interface__ (numpy's headers are not needed to build this module); NULL, with no
 * exception set, if `array` is not one. The array's item pointers stay valid while it lives
 * and no Python code runs (the caller holds a reference and the GIL). */
static PyObject **object_items(PyObject *array, Py_ssize_t *n) {
    PyObject *face = PyObject_GetAttrString(array, "__array_interface__");
    if (face == NULL || !PyDict_Check(face)) {
        PyErr_Clear();
        Py_XDECREF(face);
        return NULL;
    }
    PyObject **items = NULL;
    PyObject *typestr = PyDict_GetItemString(face, "typestr");
    PyObject *shape = PyDict_GetItemString(face, "shape");
    PyObject *strides = PyDict_GetItemString(face, "strides");
    PyObject *data = PyDict_GetItemString(face, "data");
    if (typestr != NULL && PyUnicode_Check(typestr) &&
        PyUnicode_CompareWithASCIIString(typestr, "|O") == 0 && shape != NULL &&
        PyTuple_Check(shape) && PyTuple_GET_SIZE(shape) == 1 &&
        (strides == NULL || strides == Py_None) && data != NULL && PyTuple_Check(data) &&
        PyTuple_GET_SIZE(data) == 2) {
        Py_ssize_t count = PyLong_AsSsize_t(PyTuple_GET_ITEM(shape, 0));
        void *address = PyLong_AsVoidPtr(PyTuple_GET_ITEM(data, 0));
        if (PyErr_Occurred() || count < 0 || (address == NULL && count > 0)) {
            PyErr_Clear();
        } else {
            *n = count;
            items = (PyObject **)address;
        }
    }
    Py_DECREF(face);
    return items;
}

/* pack_ascii(ids, max_len, start, length) -> bytearray | None
 *
 * ids: a list, a tuple, or a 1-D C-contiguous NumPy array of objects (read in place: its
 * tolist() took a quarter of the time this saves). start, length: writable buffers of
 * len(ids) int64 each, filled with each id's offset and length in the returned bytes (the ids
 * back to back). None, with the buffers' contents unspecified, unless every id is `packable`.
 */
static PyObject *pack_ascii(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    (void)module;
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "pack_ascii(ids, max_len, start, length)");
        return NULL;
    }
    PyObject *seq = args[0];
    Py_ssize_t n = 0;
    PyObject **items;
    if (PyList_Check(seq) || PyTuple_Check(seq)) {
        n = PySequence_Fast_GET_SIZE(seq);
        items = PySequence_Fast_ITEMS(seq);
    } else if ((items = object_items(seq, &n)) == NULL) {
        PyErr_SetString(PyExc_TypeError,
                        "pack_ascii takes a list, a tuple or a 1-D array of objects");
        return NULL;
    }
    Py_ssize_t max_len = PyLong_AsSsize_t(args[1]);
    if (max_len == -1 && PyErr_Occurred())
        return NULL;
    Py_buffer start, length;
    if (PyObject_GetBuffer(args[2], &start, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) < 0)
        return NULL;
    if (PyObject_GetBuffer(args[3], &length, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) < 0) {
        PyBuffer_Release(&start);
        return NULL;
    }
    PyObject *result = NULL;
    if (start.len != n * (Py_ssize_t)sizeof(int64_t) ||
        length.len != n * (Py_ssize_t)sizeof(int64_t)) {
        PyErr_SetString(PyExc_ValueError, "start and length need 8 bytes an id");
        goto done;
    }
    int64_t *at = (int64_t *)start.buf;
    int64_t *count = (int64_t *)length.buf;
    /* One pass, checking and copying: the str objects lie scattered over the heap, and a second
     * pass would wait on each of them again. The output grows by doubling from a guess of 40
     * bytes an id (an advertising id has 36 characters). */
    Py_ssize_t room = n * 40 + 64, total = 0;
    result = PyByteArray_FromStringAndSize(NULL, room);
    if (result == NULL)
        goto done;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (i + PREFETCH_AHEAD < n) {
            PyObject *ahead = items[i + PREFETCH_AHEAD];
            __builtin_prefetch(ahead);
            __builtin_prefetch((const char *)ahead + 64);
        }
        PyObject *s = items[i];
        if (s == NULL || !packable(s, max_len)) {
            Py_SETREF(result, Py_NewRef(Py_None));
            goto done;
        }
        Py_ssize_t len = PyUnicode_GET_LENGTH(s);
        if (total + len > room) {
            room = 2 * room + len;
            if (PyByteArray_Resize(result, room) < 0) {
                Py_CLEAR(result);
                goto done;
            }
        }
        memcpy(PyByteArray_AS_STRING(result) + total, PyUnicode_1BYTE_DATA(s), (size_t)len);
        at[i] = total;
        count[i] = len;
        total += len;
    }
    if (PyByteArray_Resize(result, total) < 0)
        Py_CLEAR(result);
done:
    PyBuffer_Release(&start);
    PyBuffer_Release(&length);
    return result;
}

static PyMethodDef ids_methods[] = {
    {"pack_ascii", (PyCFunction)(void (*)(void))pack_ascii, METH_FASTCALL,
     "pack_ascii(ids, max_len, start, length, /) -> bytearray | None\n--\n\n"
     "The ids (a list, a tuple or a 1-D array of objects) back to back, their offsets and\n"
     "lengths written to start and length (int64),\n"
     "or None unless every id is a plain str of 1 to max_len ASCII characters, with no NUL,\n"
     "not only whitespace."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef ids_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "geofence.presence._ids",
    .m_doc = PyDoc_STR("A batch's device ids checked and packed in C (see distinct.py)."),
    .m_size = -1,
    .m_methods = ids_methods,
};

PyMODINIT_FUNC PyInit__ids(void) { return PyModule_Create(&ids_module); }
