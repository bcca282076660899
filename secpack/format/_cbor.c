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
#include <float.h>
#include <math.h>
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

/* Whether a finite value is exactly a binary16 number: at most 11 significant
 * bits, a multiple of 2^-24 (the smallest subnormal), and at most 65504. */
static int half_exact(double v) {
    double a = fabs(v), q = a * 16777216.0; /* exact: a scaling by 2^24 */
    int e;
    if (a == 0) return 1;
    if (a > 65504.0 || q != floor(q)) return 0;
    double frac = frexp(a, &e) * 2048.0;
    return frac == floor(frac);
}

/* The shortest-float rule (RFC 8949 §4.2.1), as cbor2's canonical mode writes
 * floats: every NaN as the half 0x7e00, infinities as halves, and any other
 * value in the narrowest of half, single and double that holds it exactly.
 * ``bits`` is the float's big-endian argument under additional info ``ai``. */
static int float_shortest(int ai, uint64_t bits) {
    if (ai == 25) {
        int nan = (bits & 0x7c00) == 0x7c00 && (bits & 0x3ff);
        return !nan || bits == 0x7e00;
    }
    if (ai == 26) {
        uint32_t u = (uint32_t)bits;
        float f;
        memcpy(&f, &u, sizeof f);
        return isfinite(f) && !half_exact(f);
    }
    double d;
    memcpy(&d, &bits, sizeof d);
    if (!isfinite(d)) return 0;
    /* (Past FLT_MAX the conversion below would be undefined; no single holds it.) */
    return fabs(d) > FLT_MAX || (double)(float)d != d;
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
            if (ai >= 25 && ai <= 27) {
                floats = 1;
                if (!float_shortest(ai, arg))
                    FAIL("cbor.noncanonical", "float not in its shortest form at offset %zd",
                         start);
            } else if (ai < 20 || ai > 22)
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

/* ---- encode: the deterministic encoding of secpack's own objects ------------
 * cbor2's canonical mode encodes every map key on its own to sort them, and was
 * most of the time of each segment's AAD (16 us of about 20) and of a manifest's
 * encoding (60 ms for 6,000 segment records). This writes the same bytes for the
 * subset secpack builds: dict (any keys of this subset), list, tuple, str, bytes,
 * int up to 64 bits either way, bool and None. For anything else (floats, int
 * subclasses, lone surrogates, nesting past ENC_MAX_DEPTH) it returns None and
 * cbor.py falls back to cbor2, so no object is encoded differently than before.
 * tests/unit/test_cbor.py compares the two on random objects.
 *
 * Map keys are sorted as cbor2's canonical mode sorts them: the shorter encoding
 * first, then bytewise. For text keys, which is all secpack writes but COSE's
 * small positive labels, that is also RFC 8949 §4.2.1's bytewise order, which
 * the scan above checks. Each map's entries are encoded into a buffer of their
 * own, then copied out in order. */

enum { ENC_MAX_DEPTH = 64 };
enum { ENC_OK = 1, ENC_ERROR = 0, ENC_UNSUPPORTED = -1 };

typedef struct {
    uint8_t *buf;
    size_t len, cap;
} enc_buf;

static int enc_put(enc_buf *b, const void *data, size_t n) {
    if (n > b->cap - b->len) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap - b->len < n) {
            if (cap > (size_t)PY_SSIZE_T_MAX / 2) {
                PyErr_NoMemory();
                return ENC_ERROR;
            }
            cap *= 2;
        }
        uint8_t *grown = PyMem_Realloc(b->buf, cap);
        if (grown == NULL) {
            PyErr_NoMemory();
            return ENC_ERROR;
        }
        b->buf = grown;
        b->cap = cap;
    }
    if (n) memcpy(b->buf + b->len, data, n);
    b->len += n;
    return ENC_OK;
}

/* A head in its shortest form (RFC 8949 §4.2.1). */
static int enc_head(enc_buf *b, int major, uint64_t arg) {
    uint8_t h[9];
    size_t n;
    uint8_t m = (uint8_t)(major << 5);
    if (arg < 24) {
        h[0] = m | (uint8_t)arg;
        n = 1;
    } else if (arg <= 0xff) {
        h[0] = m | 24;
        h[1] = (uint8_t)arg;
        n = 2;
    } else if (arg <= 0xffff) {
        h[0] = m | 25;
        for (int i = 0; i < 2; i++) h[1 + i] = (uint8_t)(arg >> (8 * (1 - i)));
        n = 3;
    } else if (arg <= 0xffffffffu) {
        h[0] = m | 26;
        for (int i = 0; i < 4; i++) h[1 + i] = (uint8_t)(arg >> (8 * (3 - i)));
        n = 5;
    } else {
        h[0] = m | 27;
        for (int i = 0; i < 8; i++) h[1 + i] = (uint8_t)(arg >> (8 * (7 - i)));
        n = 9;
    }
    return enc_put(b, h, n);
}

typedef struct {
    size_t key, key_len, end; /* the key's offset and length, and the entry's end */
} enc_entry;

/* The buffer the entries being sorted live in. qsort takes no context argument;
 * the GIL is held from the start of encode to its end, and the comparison calls
 * nothing, so no other encode can change this while a sort runs. */
static const uint8_t *enc_sort_base;

static int enc_key_cmp(const void *pa, const void *pb) {
    const enc_entry *a = pa, *b = pb;
    if (a->key_len != b->key_len) return a->key_len < b->key_len ? -1 : 1;
    return memcmp(enc_sort_base + a->key, enc_sort_base + b->key, a->key_len);
}

static int enc_item(enc_buf *b, PyObject *obj, int depth);

static int enc_map(enc_buf *b, PyObject *obj, int depth) {
    Py_ssize_t n = PyDict_GET_SIZE(obj), pos = 0, i = 0;
    PyObject *key, *value;
    int rc = enc_head(b, 5, (uint64_t)n);
    if (rc != ENC_OK || n == 0) return rc;
    enc_buf tmp = {NULL, 0, 0};
    enc_entry *entries = PyMem_Malloc((size_t)n * sizeof(enc_entry));
    if (entries == NULL) {
        PyErr_NoMemory();
        return ENC_ERROR;
    }
    while (PyDict_Next(obj, &pos, &key, &value)) {
        if (i == n) { /* the dict changed size under us: not ours to encode */
            rc = ENC_UNSUPPORTED;
            goto done;
        }
        entries[i].key = tmp.len;
        if ((rc = enc_item(&tmp, key, depth + 1)) != ENC_OK) goto done;
        entries[i].key_len = tmp.len - entries[i].key;
        if ((rc = enc_item(&tmp, value, depth + 1)) != ENC_OK) goto done;
        entries[i].end = tmp.len;
        i++;
    }
    if (i != n) {
        rc = ENC_UNSUPPORTED;
        goto done;
    }
    enc_sort_base = tmp.buf;
    qsort(entries, (size_t)n, sizeof(enc_entry), enc_key_cmp);
    for (i = 0; i < n; i++) {
        /* Two keys that encode alike (never in a dict of this subset) would make
         * a map no reader takes: leave it to cbor2. */
        if (i && enc_key_cmp(&entries[i - 1], &entries[i]) == 0) {
            rc = ENC_UNSUPPORTED;
            goto done;
        }
        if ((rc = enc_put(b, tmp.buf + entries[i].key, entries[i].end - entries[i].key)) != ENC_OK)
            goto done;
    }
    rc = ENC_OK;
done:
    PyMem_Free(entries);
    PyMem_Free(tmp.buf);
    return rc;
}

static int enc_item(enc_buf *b, PyObject *obj, int depth) {
    if (depth > ENC_MAX_DEPTH) return ENC_UNSUPPORTED;
    if (obj == Py_None) return enc_put(b, "\xf6", 1);
    if (obj == Py_True) return enc_put(b, "\xf5", 1);
    if (obj == Py_False) return enc_put(b, "\xf4", 1);
    if (PyLong_CheckExact(obj)) {
        int overflow = 0;
        long long v = PyLong_AsLongLongAndOverflow(obj, &overflow);
        if (v == -1 && PyErr_Occurred()) return ENC_ERROR;
        if (overflow > 0) {
            unsigned long long u = PyLong_AsUnsignedLongLong(obj);
            if (u == (unsigned long long)-1 && PyErr_Occurred()) {
                PyErr_Clear(); /* past 64 bits: cbor2 writes a bignum */
                return ENC_UNSUPPORTED;
            }
            return enc_head(b, 0, u);
        }
        if (overflow < 0) return ENC_UNSUPPORTED; /* below -2^63: rare, cbor2's */
        return v >= 0 ? enc_head(b, 0, (uint64_t)v) : enc_head(b, 1, (uint64_t)(-(v + 1)));
    }
    if (PyUnicode_CheckExact(obj)) {
        Py_ssize_t n;
        const char *s = PyUnicode_AsUTF8AndSize(obj, &n);
        if (s == NULL) {
            PyErr_Clear(); /* a lone surrogate: cbor2 raises its own error */
            return ENC_UNSUPPORTED;
        }
        int rc = enc_head(b, 3, (uint64_t)n);
        return rc == ENC_OK ? enc_put(b, s, (size_t)n) : rc;
    }
    if (PyBytes_CheckExact(obj)) {
        Py_ssize_t n = PyBytes_GET_SIZE(obj);
        int rc = enc_head(b, 2, (uint64_t)n);
        return rc == ENC_OK ? enc_put(b, PyBytes_AS_STRING(obj), (size_t)n) : rc;
    }
    if (PyList_CheckExact(obj) || PyTuple_CheckExact(obj)) {
        PyObject *seq = obj;
        Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
        int rc = enc_head(b, 4, (uint64_t)n);
        /* (No Python code runs while an item is encoded, so n stays right.) */
        for (Py_ssize_t i = 0; rc == ENC_OK && i < n; i++)
            rc = enc_item(b, PySequence_Fast_GET_ITEM(seq, i), depth + 1);
        return rc;
    }
    if (PyDict_CheckExact(obj)) return enc_map(b, obj, depth);
    return ENC_UNSUPPORTED;
}

/* encode(obj) -> bytes, or None when obj is outside the subset above. */
static PyObject *encode(PyObject *self, PyObject *obj) {
    (void)self;
    enc_buf b = {NULL, 0, 0};
    int rc = enc_item(&b, obj, 0);
    PyObject *result = NULL;
    if (rc == ENC_OK)
        result = PyBytes_FromStringAndSize((const char *)b.buf, (Py_ssize_t)b.len);
    else if (rc == ENC_UNSUPPORTED)
        result = Py_NewRef(Py_None);
    PyMem_Free(b.buf);
    return result;
}

static PyMethodDef methods[] = {
    {"scan", scan, METH_VARARGS,
     "scan(data, max_depth, max_items, text_keys, max_map_entries) -> bool | (code, message)"},
    {"encode", encode, METH_O, "encode(obj) -> canonical CBOR bytes, or None outside the subset"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_cbor", "The strict CBOR scan and the canonical encoder of secpack.format.cbor, in C.", -1,
    methods,
};

PyMODINIT_FUNC PyInit__cbor(void) { return PyModule_Create(&module); }
