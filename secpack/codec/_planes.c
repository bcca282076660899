/*
 * Byte planes of fixed-width elements, with the optional one-bit rotation of the
 * "bg" codec (docs/FORMAT.md, "Codecs"). Pure functions over caller-owned,
 * exactly sized buffers: nothing here parses input, allocates, or reads a length
 * from data. Every size is checked against the buffers it came with before the
 * GIL is released. secpack.codec.planes holds the numpy version these must match
 * byte for byte (tests/unit/test_planes.py compares them).
 *
 * Why native: splitting and merging planes is a strided byte shuffle that numpy
 * can only do in several passes (transpose copy, shift, shift, or), and it was
 * the largest single cost of decoding a segment. One pass in C, with the GIL
 * released, is several times faster and lets the loader's threads overlap.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

/* Element value as a little-endian integer, independent of the host's order. */
#define LOAD16(p) ((uint16_t)((p)[0] | ((uint16_t)(p)[1] << 8)))
#define LOAD32(p)                                                                  \
    ((uint32_t)(p)[0] | ((uint32_t)(p)[1] << 8) | ((uint32_t)(p)[2] << 16) |        \
     ((uint32_t)(p)[3] << 24))

static void split2(const uint8_t *src, uint8_t *dst, Py_ssize_t n, int rot) {
    uint8_t *p0 = dst, *p1 = dst + n;
    for (Py_ssize_t i = 0; i < n; i++) {
        uint16_t v = LOAD16(src + 2 * i);
        if (rot) v = (uint16_t)((v << 1) | (v >> 15));
        p0[i] = (uint8_t)v;
        p1[i] = (uint8_t)(v >> 8);
    }
}

static void split4(const uint8_t *src, uint8_t *dst, Py_ssize_t n, int rot) {
    uint8_t *p0 = dst, *p1 = dst + n, *p2 = dst + 2 * n, *p3 = dst + 3 * n;
    for (Py_ssize_t i = 0; i < n; i++) {
        uint32_t v = LOAD32(src + 4 * i);
        if (rot) v = (v << 1) | (v >> 31);
        p0[i] = (uint8_t)v;
        p1[i] = (uint8_t)(v >> 8);
        p2[i] = (uint8_t)(v >> 16);
        p3[i] = (uint8_t)(v >> 24);
    }
}

static void split8(const uint8_t *src, uint8_t *dst, Py_ssize_t n, int rot) {
    for (Py_ssize_t i = 0; i < n; i++) {
        uint64_t v = (uint64_t)LOAD32(src + 8 * i) | ((uint64_t)LOAD32(src + 8 * i + 4) << 32);
        if (rot) v = (v << 1) | (v >> 63);
        for (int k = 0; k < 8; k++) dst[(Py_ssize_t)k * n + i] = (uint8_t)(v >> (8 * k));
    }
}

static void merge2(const uint8_t *const *pl, uint8_t *dst, Py_ssize_t n, int rot) {
    const uint8_t *p0 = pl[0], *p1 = pl[1];
    for (Py_ssize_t i = 0; i < n; i++) {
        uint16_t v = (uint16_t)(p0[i] | ((uint16_t)p1[i] << 8));
        if (rot) v = (uint16_t)((v >> 1) | (v << 15));
        dst[2 * i] = (uint8_t)v;
        dst[2 * i + 1] = (uint8_t)(v >> 8);
    }
}

static void merge4(const uint8_t *const *pl, uint8_t *dst, Py_ssize_t n, int rot) {
    const uint8_t *p0 = pl[0], *p1 = pl[1], *p2 = pl[2], *p3 = pl[3];
    for (Py_ssize_t i = 0; i < n; i++) {
        uint32_t v = (uint32_t)p0[i] | ((uint32_t)p1[i] << 8) | ((uint32_t)p2[i] << 16) |
                     ((uint32_t)p3[i] << 24);
        if (rot) v = (v >> 1) | (v << 31);
        dst[4 * i] = (uint8_t)v;
        dst[4 * i + 1] = (uint8_t)(v >> 8);
        dst[4 * i + 2] = (uint8_t)(v >> 16);
        dst[4 * i + 3] = (uint8_t)(v >> 24);
    }
}

static void merge8(const uint8_t *const *pl, uint8_t *dst, Py_ssize_t n, int rot) {
    for (Py_ssize_t i = 0; i < n; i++) {
        uint64_t v = 0;
        for (int k = 0; k < 8; k++) v |= (uint64_t)pl[k][i] << (8 * k);
        if (rot) v = (v >> 1) | (v << 63);
        for (int k = 0; k < 8; k++) dst[8 * i + k] = (uint8_t)(v >> (8 * k));
    }
}

static int check_width(int width) {
    if (width == 2 || width == 4 || width == 8) return 1;
    PyErr_SetString(PyExc_ValueError, "width must be 2, 4 or 8");
    return 0;
}

/* split(src, dst, width, rotate): plane k of n = len(src) / width elements goes to
 * dst[k*n : (k+1)*n]. len(dst) must equal len(src), a multiple of width. */
static PyObject *split(PyObject *self, PyObject *args) {
    Py_buffer src, dst;
    int width, rot;
    (void)self;
    if (!PyArg_ParseTuple(args, "y*w*ip", &src, &dst, &width, &rot)) return NULL;
    PyObject *result = NULL;
    if (!check_width(width)) goto done;
    if (src.len % width != 0 || dst.len != src.len) {
        PyErr_SetString(PyExc_ValueError, "buffer sizes disagree with the width");
        goto done;
    }
    {
        Py_ssize_t n = src.len / width;
        const uint8_t *s = (const uint8_t *)src.buf;
        uint8_t *d = (uint8_t *)dst.buf;
        Py_BEGIN_ALLOW_THREADS;
        if (width == 2)
            split2(s, d, n, rot);
        else if (width == 4)
            split4(s, d, n, rot);
        else
            split8(s, d, n, rot);
        Py_END_ALLOW_THREADS;
    }
    result = Py_NewRef(Py_None);
done:
    PyBuffer_Release(&src);
    PyBuffer_Release(&dst);
    return result;
}

/* merge(planes, dst, width, rotate): the inverse of split. ``planes`` is a sequence
 * of exactly ``width`` buffers of n bytes each, and len(dst) == width * n. */
static PyObject *merge(PyObject *self, PyObject *args) {
    PyObject *seq_obj;
    Py_buffer dst;
    int width, rot;
    (void)self;
    if (!PyArg_ParseTuple(args, "Ow*ip", &seq_obj, &dst, &width, &rot)) return NULL;
    Py_buffer views[8];
    const uint8_t *ptrs[8];
    int held = 0;
    PyObject *result = NULL;
    PyObject *seq = NULL;
    if (!check_width(width)) goto done;
    seq = PySequence_Fast(seq_obj, "planes must be a sequence");
    if (seq == NULL) goto done;
    if (PySequence_Fast_GET_SIZE(seq) != width || dst.len % width != 0) {
        PyErr_SetString(PyExc_ValueError, "plane count or output size disagrees with the width");
        goto done;
    }
    Py_ssize_t n = dst.len / width;
    for (int k = 0; k < width; k++) {
        if (PyObject_GetBuffer(PySequence_Fast_GET_ITEM(seq, k), &views[k], PyBUF_SIMPLE) < 0)
            goto done;
        held++;
        if (views[k].len != n) {
            PyErr_SetString(PyExc_ValueError, "a plane's size disagrees with the output");
            goto done;
        }
        ptrs[k] = (const uint8_t *)views[k].buf;
    }
    {
        uint8_t *d = (uint8_t *)dst.buf;
        Py_BEGIN_ALLOW_THREADS;
        if (width == 2)
            merge2(ptrs, d, n, rot);
        else if (width == 4)
            merge4(ptrs, d, n, rot);
        else
            merge8(ptrs, d, n, rot);
        Py_END_ALLOW_THREADS;
    }
    result = Py_NewRef(Py_None);
done:
    for (int k = 0; k < held; k++) PyBuffer_Release(&views[k]);
    Py_XDECREF(seq);
    PyBuffer_Release(&dst);
    return result;
}

static PyMethodDef methods[] = {
    {"split", split, METH_VARARGS, "split(src, dst, width, rotate): element bytes to planes"},
    {"merge", merge, METH_VARARGS, "merge(planes, dst, width, rotate): planes to element bytes"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_planes", "Byte-plane split and merge for the bg codec.", -1,
    methods,
};

PyMODINIT_FUNC PyInit__planes(void) { return PyModule_Create(&module); }
