/*
 * The structural scan of secpack's strict CBOR (secpack/format/cbor.py, step 1):
 * one pass over the raw bytes, building no object, that refuses everything
 * outside the subset secpack writes before cbor2 decodes anything.
 *
 * Why native: the scan runs on unauthenticated bytes, before the signature check
 * (docs/FORMAT.md §9), and in Python it is a loop of about 1.3 us an item: a
 * crafted unsigned manifest within the default limits (150 000 segments, 11 MB)
 * cost 2.1 s of CPU in the scan alone before it was refused. Here it is about
 * 50 times faster. cbor2's own native decoder reads the same bytes right after.
 *
 * cbor.py keeps the Python scan as the reference and as the fallback where this
 * was not built. Both must give the same verdict, the same error code and the
 * same message on every input: tests/unit/test_cbor.py runs its cases through
 * both, and compares them on random and mutated inputs.
 *
 * Input: one bytes object, never modified and never read past its length. Every
 * length read from the data is compared with the bytes that remain before it is
 * used; counts are uint64 and never multiplied unchecked.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

enum { M_UINT, M_NINT, M_BSTR, M_TSTR, M_ARRAY, M_MAP, M_TAG, M_SIMPLE };

typedef struct {
    uint64_t left;              /* items still to come in this container */
    int is_map;
    Py_ssize_t key_start;       /* the previous key's bytes, or -1 before the first */
    Py_ssize_t key_end;
} frame_t;

/* Strict UTF-8 (RFC 3629), as Python's bytes.decode("utf-8") accepts it: no
 * overlong forms, no surrogates, nothing above U+10FFFF. Returns the offset of
 * the first bad byte, or -1 when all n bytes are valid. */
static Py_ssize_t utf8_invalid(const uint8_t *s, Py_ssize_t n) {
    Py_ssize_t i = 0;
    while (i < n) {
        uint8_t c = s[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        Py_ssize_t need;
        uint8_t lo = 0x80, hi = 0xBF; /* allowed range of the second byte */
        if (c >= 0xC2 && c <= 0xDF) {
            need = 1;
        } else if (c >= 0xE0 && c <= 0xEF) {
            need = 2;
            if (c == 0xE0) lo = 0xA0;      /* overlong */
            else if (c == 0xED) hi = 0x9F; /* surrogates */
        } else if (c >= 0xF0 && c <= 0xF4) {
            need = 3;
            if (c == 0xF0) lo = 0x90;      /* overlong */
            else if (c == 0xF4) hi = 0x8F; /* above U+10FFFF */
        } else {
            return i;
        }
        if (n - i <= need) return i;
        if (s[i + 1] < lo || s[i + 1] > hi) return i;
        for (Py_ssize_t k = 2; k <= need; k++)
            if ((s[i + k] & 0xC0) != 0x80) return i;
        i += need + 1;
    }
    return -1;
}

/* Bytewise comparison of two encoded keys, shorter first on a common prefix:
 * RFC 8949 §4.2.1 order. */
static int key_cmp(const uint8_t *a, Py_ssize_t na, const uint8_t *b, Py_ssize_t nb) {
    int c = memcmp(a, b, (size_t)(na < nb ? na : nb));
    if (c) return c;
    return (na > nb) - (na < nb);
}

/* scan(data, max_depth, max_items, text_keys, max_map_entries) -> result:
 * True or False (whether the item holds a float) when it passes, or a tuple
 * (code, message) when it does not. */
static PyObject *scan(PyObject *self, PyObject *args) {
    const uint8_t *data;
    Py_ssize_t end;
    unsigned long long max_depth_in, max_items, max_map_entries;
    int text_keys;
    (void)self;
    if (!PyArg_ParseTuple(args, "y#KKpK", (const char **)&data, &end, &max_depth_in,
                          &max_items, &text_keys, &max_map_entries))
        return NULL;
    /* Every open container took at least one byte, so the stack never holds more
     * than min(max_depth, len) frames. */
    size_t max_depth = (size_t)(max_depth_in < (unsigned long long)end ? max_depth_in
                                                                        : (unsigned long long)end);
    frame_t *stack = PyMem_Malloc((max_depth + 1) * sizeof(frame_t));
    if (stack == NULL) return PyErr_NoMemory();
    size_t depth = 0;
    uint64_t items = 0;
    int floats = 0;
    Py_ssize_t pos = 0;
    PyObject *fail = NULL;
#define FAIL(code, ...)                                                            \
    do {                                                                           \
        fail = Py_BuildValue("(sN)", code, PyUnicode_FromFormat(__VA_ARGS__));     \
        goto out;                                                                  \
    } while (0)
    for (;;) {
        if (pos >= end) FAIL("cbor.malformed", "truncated item");
        Py_ssize_t start = pos;
        uint8_t ib = data[pos++];
        items++;
        int major = ib >> 5, ai = ib & 0x1F;
        frame_t *top = depth ? &stack[depth - 1] : NULL;
        int is_key = top != NULL && top->is_map && !(top->left & 1);
        uint64_t arg;
        if (ai < 24) {
            arg = (uint64_t)ai;
        } else if (ai <= 27) {
            int width = 1 << (ai - 24);
            if (width > end - pos) FAIL("cbor.malformed", "truncated head");
            arg = 0;
            for (int k = 0; k < width; k++) arg = (arg << 8) | data[pos + k];
            pos += width;
            /* Smallest value that needs this width: 24, 2^8, 2^16, 2^32. */
            static const uint64_t min_arg[4] = {24, 0x100, 0x10000, 0x100000000ULL};
            if (major != M_SIMPLE && arg < min_arg[ai - 24])
                FAIL("cbor.noncanonical", "non-shortest head at offset %zd", start);
        } else if (ai == 31) {
            if (major >= M_BSTR && major <= M_MAP)
                FAIL("cbor.forbidden", "indefinite length at offset %zd", start);
            FAIL("cbor.malformed", "break or invalid head at offset %zd", start);
        } else {
            FAIL("cbor.malformed", "reserved additional information at %zd", start);
        }
        if (is_key && major != M_TSTR && (text_keys || major > M_NINT))
            FAIL("cbor.forbidden", "map key of major type %d at %zd", major, start);
        if (major == M_BSTR || major == M_TSTR) {
            if (arg > (uint64_t)(end - pos))
                FAIL("cbor.malformed", "string length %llu runs past the input",
                     (unsigned long long)arg);
            if (major == M_TSTR && utf8_invalid(data + pos, (Py_ssize_t)arg) >= 0)
                FAIL("cbor.malformed", "invalid UTF-8 at offset %zd", pos);
            pos += (Py_ssize_t)arg;
        } else if (major == M_ARRAY || major == M_MAP) {
            /* Every item takes at least one byte: a longer declared count cannot
             * be real. A map holds 2 * arg items; compared without the product. */
            uint64_t rem = (uint64_t)(end - pos);
            if (major == M_ARRAY ? arg > rem : arg > rem / 2)
                FAIL("cbor.malformed", "container of %llu runs past the input",
                     (unsigned long long)arg);
            if (major == M_MAP && arg > max_map_entries)
                FAIL("cbor.limit", "map of %llu entries at offset %zd", (unsigned long long)arg,
                     start);
            if (arg) {
                if (items > max_items)
                    FAIL("cbor.limit", "more than %llu items", (unsigned long long)max_items);
                if (depth >= max_depth_in || depth >= max_depth)
                    FAIL("cbor.limit", "nesting deeper than %llu",
                         (unsigned long long)max_depth_in);
                stack[depth].left = major == M_ARRAY ? arg : 2 * arg;
                stack[depth].is_map = major == M_MAP;
                stack[depth].key_start = stack[depth].key_end = -1;
                depth++;
                continue;
            }
        } else if (major == M_TAG) {
            FAIL("cbor.forbidden", "tag %llu at offset %zd", (unsigned long long)arg, start);
        } else if (major == M_SIMPLE) {
            if (ai >= 25 && ai <= 27)
                floats = 1;
            else if (ai < 20 || ai > 22)
                FAIL("cbor.forbidden", "simple value at offset %zd", start);
        }
        if (is_key) {
            if (top->key_start >= 0 &&
                key_cmp(data + top->key_start, top->key_end - top->key_start, data + start,
                        pos - start) >= 0)
                FAIL("cbor.noncanonical", "map keys unsorted or duplicated at %zd", start);
            top->key_start = start;
            top->key_end = pos;
        }
        if (items > max_items)
            FAIL("cbor.limit", "more than %llu items", (unsigned long long)max_items);
        /* Close every container this item completed. */
        while (depth) {
            if (--stack[depth - 1].left) break;
            depth--;
        }
        if (!depth) break;
    }
    if (pos != end) FAIL("cbor.malformed", "%zd trailing bytes", end - pos);
#undef FAIL
out:
    PyMem_Free(stack);
    if (fail != NULL) return fail;
    if (PyErr_Occurred()) return NULL; /* Py_BuildValue or the message failed */
    return PyBool_FromLong(floats);
}

static PyMethodDef methods[] = {
    {"scan", scan, METH_VARARGS,
     "scan(data, max_depth, max_items, text_keys, max_map_entries) -> bool | (code, message)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_cbor", "The strict CBOR scan of secpack.format.cbor, in C.", -1,
    methods,
};

PyMODINIT_FUNC PyInit__cbor(void) { return PyModule_Create(&module); }
