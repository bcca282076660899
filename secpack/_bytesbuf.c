/*
 * BytesBuffer(n): a new bytes object of n bytes that is written in place through
 * the buffer protocol, then handed out with take(). Python makes no bytes object
 * in place: filling a bytearray or a numpy array and calling bytes() on it holds
 * the data twice, and Package.read_file of a 253 MB GGUF peaked at 542 MB.
 *
 * A bytes object must not change once anyone else can see it, so:
 *   - the bytes object is this object's own until take(); nothing else refers
 *     to it, and its hash is not computed before then;
 *   - take() refuses (BufferError) while any buffer exported from this object is
 *     still held, and after take() no buffer is exported again. A writer that
 *     kept a view past take() would otherwise change a bytes object in use.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <sys/mman.h>

typedef struct {
    PyObject_HEAD
    PyObject *bytes; /* NULL once taken */
    Py_ssize_t exports;
} BytesBuffer;

/* Allocations from this size up get huge-page advice. glibc's malloc serves
 * them from a mapping of their own (its mmap threshold never rises above 32 MiB
 * on 64-bit), so the advice goes with the mapping when the bytes are freed;
 * given to a smaller block, it would stay on a part of the heap that later
 * holds other, sparser data. */
#define ADVISE_FROM (32L << 20)
#define SMALL_PAGE 4096L

/* Advise huge pages for the page-aligned part of a large allocation: its first
 * touch then faults 2 MiB at a time (secpack.buffers measures about five times
 * faster). Advice only: an error, or huge pages turned off, changes nothing. */
static void advise_huge(char *data, Py_ssize_t n) {
#ifdef MADV_HUGEPAGE
    if (n < ADVISE_FROM) return;
    uintptr_t start = ((uintptr_t)data + SMALL_PAGE - 1) & ~(uintptr_t)(SMALL_PAGE - 1);
    uintptr_t end = ((uintptr_t)data + (uintptr_t)n) & ~(uintptr_t)(SMALL_PAGE - 1);
    if (end > start) (void)madvise((void *)start, end - start, MADV_HUGEPAGE);
#else
    (void)data;
    (void)n;
#endif
}

static PyObject *bb_new(PyTypeObject *type, PyObject *args, PyObject *kwargs) {
    Py_ssize_t n;
    static char *names[] = {"size", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "n:BytesBuffer", names, &n)) return NULL;
    if (n < 0) {
        PyErr_SetString(PyExc_ValueError, "size must not be negative");
        return NULL;
    }
    BytesBuffer *self = (BytesBuffer *)type->tp_alloc(type, 0);
    if (self == NULL) return NULL;
    /* Contents undefined until written, as for any buffer of this size. */
    self->bytes = PyBytes_FromStringAndSize(NULL, n);
    if (self->bytes == NULL) {
        Py_DECREF(self);
        return NULL;
    }
    self->exports = 0;
    advise_huge(PyBytes_AS_STRING(self->bytes), n);
    return (PyObject *)self;
}

static void bb_dealloc(BytesBuffer *self) {
    Py_XDECREF(self->bytes);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int bb_getbuffer(BytesBuffer *self, Py_buffer *view, int flags) {
    if (self->bytes == NULL) {
        PyErr_SetString(PyExc_BufferError, "the bytes were taken");
        view->obj = NULL;
        return -1;
    }
    if (PyBuffer_FillInfo(view, (PyObject *)self, PyBytes_AS_STRING(self->bytes),
                          PyBytes_GET_SIZE(self->bytes), 0, flags) < 0)
        return -1;
    self->exports++;
    return 0;
}

static void bb_releasebuffer(BytesBuffer *self, Py_buffer *view) {
    (void)view;
    self->exports--;
}

static PyObject *bb_take(BytesBuffer *self, PyObject *unused) {
    (void)unused;
    if (self->bytes == NULL) {
        PyErr_SetString(PyExc_BufferError, "the bytes were taken");
        return NULL;
    }
    if (self->exports > 0) {
        PyErr_Format(PyExc_BufferError, "%zd buffer(s) still exported", self->exports);
        return NULL;
    }
    PyObject *out = self->bytes;
    self->bytes = NULL;
    return out;
}

static PyObject *bb_len(BytesBuffer *self, void *closure) {
    (void)closure;
    return PyLong_FromSsize_t(self->bytes == NULL ? 0 : PyBytes_GET_SIZE(self->bytes));
}

static PyBufferProcs bb_as_buffer = {
    (getbufferproc)bb_getbuffer,
    (releasebufferproc)bb_releasebuffer,
};

static PyMethodDef bb_methods[] = {
    {"take", (PyCFunction)bb_take, METH_NOARGS,
     "take() -> bytes: the bytes, once no buffer of them is held; only once"},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef bb_getset[] = {
    {"size", (getter)bb_len, NULL, "bytes held (0 once taken)", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject BytesBufferType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "secpack._bytesbuf.BytesBuffer",
    .tp_basicsize = sizeof(BytesBuffer),
    .tp_dealloc = (destructor)bb_dealloc,
    .tp_as_buffer = &bb_as_buffer,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "BytesBuffer(size): a new bytes object written in place, then take()n",
    .tp_methods = bb_methods,
    .tp_getset = bb_getset,
    .tp_new = bb_new,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_bytesbuf", "A bytes object written in place.", -1, NULL,
};

PyMODINIT_FUNC PyInit__bytesbuf(void) {
    if (PyType_Ready(&BytesBufferType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    Py_INCREF(&BytesBufferType);
    if (PyModule_AddObject(m, "BytesBuffer", (PyObject *)&BytesBufferType) < 0) {
        Py_DECREF(&BytesBufferType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
