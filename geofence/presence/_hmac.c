/* One device id's HMAC-SHA256 in one C call: the single-request path of keyhash.py.
 *
 * hashlib needs six Python calls for it (two state copies, two updates, two digests), about
 * 0.45 us; the two SHA-256 blocks themselves take about 0.1 us. This module makes those calls
 * from C. It is optional: keyhash.py falls back to hashlib when it is not built.
 *
 * It links against nothing. libcrypto's SHA256_Update and SHA256_Final arrive as addresses that
 * keyhash.py resolved with ctypes and checked against the hmac module (its known-answer check),
 * with the two padded-key SHA-256 states precomputed there, as raw SHA256_CTX bytes.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

#define CTX_BYTES 256 /* keyhash._CTX_BYTES: room for OpenSSL's 112-byte SHA256_CTX */
#define DIGEST_BYTES 32

typedef int (*update_fn)(void *ctx, const void *data, size_t size);
typedef int (*final_fn)(unsigned char *digest, void *ctx);

typedef struct {
    PyObject_HEAD
    update_fn update;
    final_fn final;
    unsigned char inner[CTX_BYTES];
    unsigned char outer[CTX_BYTES];
} Keyer;

static int Keyer_init(Keyer *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"update", "final", "inner", "outer", NULL};
    unsigned long long update, final;
    Py_buffer inner, outer;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "KKy*y*", kwlist, &update, &final, &inner,
                                     &outer))
        return -1;
    int ok = inner.len == CTX_BYTES && outer.len == CTX_BYTES && update != 0 && final != 0;
    if (ok) {
        memcpy(self->inner, inner.buf, CTX_BYTES);
        memcpy(self->outer, outer.buf, CTX_BYTES);
        self->update = (update_fn)(uintptr_t)update;
        self->final = (final_fn)(uintptr_t)final;
    }
    PyBuffer_Release(&inner);
    PyBuffer_Release(&outer);
    if (!ok) {
        PyErr_Format(PyExc_ValueError,
                     "Keyer needs two function addresses and two %d-byte states", CTX_BYTES);
        return -1;
    }
    return 0;
}

/* key(data: bytes) -> bytes: HMAC-SHA256 of data under the states' secret. */
static PyObject *Keyer_key(Keyer *self, PyObject *data) {
    if (!PyBytes_Check(data)) {
        PyErr_SetString(PyExc_TypeError, "Keyer.key takes bytes");
        return NULL;
    }
    if (self->update == NULL) {
        PyErr_SetString(PyExc_ValueError, "Keyer was not initialised");
        return NULL;
    }
    unsigned char ctx[CTX_BYTES];
    unsigned char digest[DIGEST_BYTES];
    unsigned char out[DIGEST_BYTES];
    memcpy(ctx, self->inner, CTX_BYTES);
    int ok = self->update(ctx, PyBytes_AS_STRING(data), (size_t)PyBytes_GET_SIZE(data));
    ok = ok && self->final(digest, ctx);
    memcpy(ctx, self->outer, CTX_BYTES);
    ok = ok && self->update(ctx, digest, DIGEST_BYTES);
    ok = ok && self->final(out, ctx);
    if (!ok) {
        PyErr_SetString(PyExc_RuntimeError, "SHA256_Update or SHA256_Final failed");
        return NULL;
    }
    return PyBytes_FromStringAndSize((const char *)out, DIGEST_BYTES);
}

static PyMethodDef Keyer_methods[] = {
    {"key", (PyCFunction)Keyer_key, METH_O,
     "key(data: bytes) -> bytes\n--\n\nThe 32-byte HMAC-SHA256 of one UTF-8 device id."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject KeyerType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "geofence.presence._hmac.Keyer",
    .tp_doc = PyDoc_STR("Keyer(update, final, inner, outer): one secret's HMAC-SHA256 in C."),
    .tp_basicsize = sizeof(Keyer),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Keyer_init,
    .tp_methods = Keyer_methods,
};

static struct PyModuleDef hmac_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "geofence.presence._hmac",
    .m_doc = PyDoc_STR("One device id's HMAC-SHA256 in one C call (see keyhash.py)."),
    .m_size = -1,
};

PyMODINIT_FUNC PyInit__hmac(void) {
    if (PyType_Ready(&KeyerType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&hmac_module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&KeyerType);
    if (PyModule_AddObject(m, "Keyer", (PyObject *)&KeyerType) < 0) {
        Py_DECREF(&KeyerType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
