/*
 * Byte planes of fixed-width elements, with the optional one-bit rotation of the
 * "bg" codec, and the exponent-window planes of the "bgx" codec (docs/FORMAT.md,
 * "Codecs"). Pure functions over caller-owned,
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
#include <math.h>
#include <string.h>

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


/* ---- bgx: exponent-window planes of IEEE floats (docs/FORMAT.md, "bgx") -------
 *
 * Each element: sign s, exponent e (EB bits), mantissa m (MB bits). With column
 * offsets (period P > 0) the exponent coded is e' = (e - O[j]) mod 2^EB, where
 * j = element index mod P. m3 is the top 3 mantissa bits.
 *   H = ((e' - lo) << 3) | m3   when lo <= e' < lo + span (span <= 31), else 255
 *   X = (e' << 3) | m3, uint16 little-endian, for each H == 255 in element order
 *   L = (next mantissa bits << 1) | s: fp32 m[19:13], bf16 m[3:0], fp16 m[6:0]
 *   fp32 only: B1 = m[12:5], B0 = m[4:0]
 * The decoder refuses every value this encoder cannot produce, so each segment
 * has exactly one encoding for a given (lo, span, period, O).
 */
enum { KIND_FP32 = 0, KIND_BF16 = 1, KIND_FP16 = 2 };

typedef struct {
    int width, eb, mb, esh; /* bytes, exponent bits, mantissa bits, exponent shift */
} kind_t;

static const kind_t KINDS[3] = {{4, 8, 23, 23}, {2, 8, 7, 7}, {2, 5, 10, 10}};

static int get_kind(int kind, const kind_t **out) {
    if (kind < 0 || kind > 2) {
        PyErr_SetString(PyExc_ValueError, "unknown float kind");
        return 0;
    }
    *out = &KINDS[kind];
    return 1;
}


#if defined(__GNUC__)
#define INLINE static inline __attribute__((always_inline))
#define RARE(x) __builtin_expect(!!(x), 0)
/* The planes of one call never overlap (bgx.py passes distinct buffers, or
 * disjoint slices of one payload), so the
 * loops may say so: without it the compiler must check every pair of pointers
 * for overlap at run time, and past ten pairs it gives up vectorising. Were a
 * caller to pass one buffer twice, the bytes written would be wrong, but every
 * access stays inside the buffers whose sizes were checked. */
#define RESTRICT __restrict__
#else
#define RESTRICT
#define INLINE static inline
#define RARE(x) (x)
#endif

/* The bgx plane loops are compiled twice on x86-64 with GCC or Clang: for the
 * baseline (SSE2) and for AVX2, which handles 32 bytes at a time; the module
 * picks the AVX2 ones when it loads, where the CPU has AVX2. They are 1.5-1.8x
 * faster here (bench/stages.py). simd() switches between them, so that the
 * tests run both on any machine that has both. Elsewhere there is only the
 * baseline. */
#if (defined(__GNUC__) || defined(__clang__)) && defined(__x86_64__)
#define HAVE_AVX2_LOOPS 1
#include <immintrin.h>
#define AVX2 __attribute__((target("avx2")))
#else
#define HAVE_AVX2_LOOPS 0
#endif
static int use_avx2 = 0;

/* bgx_split's loops; KIND is a constant at every call site, so each
 * specialisation below compiles to a branch-free first pass, and a second pass
 * that collects the rare escapes. Every plane byte is computed from the
 * element's bytes as a byte, which vectorises without widening to 32 bits (as
 * bgx_merge does). */
INLINE void split_range(const int KIND, const uint8_t *RESTRICT s, Py_ssize_t i0,
                        Py_ssize_t len, const uint8_t *RESTRICT o, unsigned ulo, unsigned uspan,
                        uint8_t *RESTRICT h, uint8_t *RESTRICT l, uint8_t *RESTRICT b1,
                        uint8_t *RESTRICT b0) {
    const uint8_t lo8 = (uint8_t)ulo, span8 = (uint8_t)uspan;
    for (Py_ssize_t j = 0; j < len; j++) {
        Py_ssize_t i = i0 + j;
        uint8_t off = o ? o[j] : 0, e, m3, sign;
        if (KIND == KIND_FP32) {
            uint8_t s0 = s[4 * i], s1 = s[4 * i + 1], s2 = s[4 * i + 2], s3 = s[4 * i + 3];
            sign = s3 >> 7;
            e = (uint8_t)((s3 << 1) | (s2 >> 7));
            m3 = (s2 >> 4) & 7;
            l[i] = (uint8_t)(((s2 & 15) << 4) | ((s1 >> 4) & 14) | sign);
            b1[i] = (uint8_t)((s1 << 3) | (s0 >> 5));
            b0[i] = s0 & 31;
        } else if (KIND == KIND_BF16) {
            uint8_t s0 = s[2 * i], s1 = s[2 * i + 1];
            sign = s1 >> 7;
            e = (uint8_t)((s1 << 1) | (s0 >> 7));
            m3 = (s0 >> 4) & 7;
            l[i] = (uint8_t)(((s0 & 15) << 1) | sign);
        } else {
            uint8_t s0 = s[2 * i], s1 = s[2 * i + 1];
            sign = s1 >> 7;
            e = (s1 >> 2) & 31;
            m3 = (uint8_t)(((s1 & 3) << 1) | (s0 >> 7));
            l[i] = (uint8_t)((s0 << 1) | sign);
        }
        /* e' - lo, with e' = (e - offset) mod 2^EB; 8-bit exponents wrap by
         * themselves. Values below lo wrap to 256 - x, outside the window. */
        uint8_t d = (uint8_t)(e - off);
        if (KIND == KIND_FP16) d &= 31;
        d = (uint8_t)(d - lo8);
        h[i] = d < span8 ? (uint8_t)((d << 3) | m3) : 255;
    }
}

/* The first pass of bgx_split: whole rows at a time when there are column
 * offsets, so that the offsets are read in order and the loop vectorises. */
INLINE void split_pass(const int KIND, const uint8_t *s, Py_ssize_t n, const uint8_t *o,
                       Py_ssize_t period, unsigned ulo, unsigned uspan, uint8_t *h, uint8_t *l,
                       uint8_t *b1, uint8_t *b0) {
    if (period == 0) {
        split_range(KIND, s, 0, n, NULL, ulo, uspan, h, l, b1, b0);
        return;
    }
    for (Py_ssize_t start = 0; start < n; start += period) {
        Py_ssize_t len = n - start < period ? n - start : period;
        split_range(KIND, s, start, len, o, ulo, uspan, h, l, b1, b0);
    }
}

INLINE Py_ssize_t split_loop(const int KIND, const uint8_t *s, Py_ssize_t n, const uint8_t *o,
                             Py_ssize_t period, unsigned ulo, unsigned uspan, uint8_t *h,
                             uint8_t *l, uint8_t *b1, uint8_t *b0, uint8_t *x) {
    const kind_t *k = &KINDS[KIND];
    const unsigned emask = (1u << k->eb) - 1;
    if (period)
        split_pass(KIND, s, n, o, period, ulo, uspan, h, l, b1, b0);
    else
        split_pass(KIND, s, n, NULL, 0, ulo, uspan, h, l, b1, b0);
    Py_ssize_t esc = 0;
    /* memchr: a vectorised scan for the rare escapes. */
    for (const uint8_t *p = h; (p = memchr(p, 255, (size_t)(h + n - p))) != NULL; p++) {
        Py_ssize_t i = p - h;
        {
            uint32_t v = k->width == 4 ? LOAD32(s + 4 * i) : LOAD16(s + 2 * i);
            unsigned off = period ? o[i % period] : 0;
            unsigned e = ((v >> k->esh) - off) & emask;
            unsigned xv = (e << 3) | ((v & ((1u << k->mb) - 1)) >> (k->mb - 3));
            x[2 * esc] = (uint8_t)xv;
            x[2 * esc + 1] = (uint8_t)(xv >> 8);
            esc++;
        }
    }
    return esc;
}

/* One bgx_split loop per kind, all with one signature (B1, B0 are NULL for 16-bit
 * kinds), in a baseline and an AVX2 build. */
typedef Py_ssize_t (*split_fn)(const uint8_t *s, Py_ssize_t n, const uint8_t *o, Py_ssize_t p,
                               unsigned ulo, unsigned uspan, uint8_t *h, uint8_t *l,
                               uint8_t *b1, uint8_t *b0, uint8_t *x);
#define SPLIT_FN(NAME, ATTR, KIND)                                                        \
    ATTR static Py_ssize_t NAME(const uint8_t *s, Py_ssize_t n, const uint8_t *o,          \
                                Py_ssize_t p, unsigned ulo, unsigned uspan, uint8_t *h,     \
                                uint8_t *l, uint8_t *b1, uint8_t *b0, uint8_t *x) {         \
        return split_loop(KIND, s, n, o, p, ulo, uspan, h, l, b1, b0, x);                  \
    }
SPLIT_FN(split_fp32, , KIND_FP32)
SPLIT_FN(split_bf16, , KIND_BF16)
SPLIT_FN(split_fp16, , KIND_FP16)
static const split_fn SPLIT_BASE[3] = {split_fp32, split_bf16, split_fp16};
#if HAVE_AVX2_LOOPS
SPLIT_FN(split_fp32_avx2, AVX2, KIND_FP32)
SPLIT_FN(split_bf16_avx2, AVX2, KIND_BF16)
SPLIT_FN(split_fp16_avx2, AVX2, KIND_FP16)
static const split_fn SPLIT_AVX2[3] = {split_fp32_avx2, split_bf16_avx2, split_fp16_avx2};
#endif

static split_fn split_kernel(int kind) {
#if HAVE_AVX2_LOOPS
    if (use_avx2) return SPLIT_AVX2[kind];
#endif
    return SPLIT_BASE[kind];
}

/* bgx_split(src, kind, lo, span, offsets, H, L, B1, B0, X) -> escapes.
 * H, L (and B1, B0 for fp32) hold n bytes each; X has room for 2n bytes; offsets
 * is empty or holds P bytes, each below 2^EB. B1 and B0 are empty for 16-bit kinds. */
static PyObject *bgx_split(PyObject *self, PyObject *args) {
    Py_buffer src, off, H, L, B1, B0, X;
    int kind, lo, span;
    (void)self;
    if (!PyArg_ParseTuple(args, "y*iiiy*w*w*w*w*w*", &src, &kind, &lo, &span, &off, &H, &L,
                          &B1, &B0, &X))
        return NULL;
    PyObject *result = NULL;
    const kind_t *k;
    if (!get_kind(kind, &k)) goto done;
    Py_ssize_t n = src.len / k->width;
    unsigned nb = 1u << k->eb;
    if (src.len % k->width || H.len != n || L.len != n || X.len < 2 * n ||
        (k->width == 4 && (B1.len != n || B0.len != n)) ||
        (k->width == 2 && (B1.len != 0 || B0.len != 0))) {
        PyErr_SetString(PyExc_ValueError, "buffer sizes disagree");
        goto done;
    }
    if (lo < 0 || span < 1 || span > 31 || (unsigned)(lo + span) > nb) {
        PyErr_SetString(PyExc_ValueError, "bad exponent window");
        goto done;
    }
    const uint8_t *o = (const uint8_t *)off.buf;
    Py_ssize_t period = off.len;
    for (Py_ssize_t j = 0; j < period; j++)
        if (o[j] >= nb) {
            PyErr_SetString(PyExc_ValueError, "column offset out of range");
            goto done;
        }
    Py_ssize_t esc = 0;
    {
        const uint8_t *s = (const uint8_t *)src.buf;
        uint8_t *h = (uint8_t *)H.buf, *l = (uint8_t *)L.buf, *b1 = (uint8_t *)B1.buf,
                *b0 = (uint8_t *)B0.buf, *x = (uint8_t *)X.buf;
        unsigned ulo = (unsigned)lo, uspan = (unsigned)span;
        Py_BEGIN_ALLOW_THREADS;
        esc = split_kernel(kind)(s, n, o, period, ulo, uspan, h, l, kind == KIND_FP32 ? b1 : NULL,
                                 kind == KIND_FP32 ? b0 : NULL, x);
        Py_END_ALLOW_THREADS;
    }
    result = PyLong_FromSsize_t(esc);
done:
    PyBuffer_Release(&src);
    PyBuffer_Release(&off);
    PyBuffer_Release(&H);
    PyBuffer_Release(&L);
    PyBuffer_Release(&B1);
    PyBuffer_Release(&B0);
    PyBuffer_Release(&X);
    return result;
}


/* One element from its parts (bgx_merge). */
INLINE uint32_t bgx_value(const int KIND, unsigned sign, unsigned e, unsigned m3, unsigned lv,
                          unsigned b1v, unsigned b0v) {
    const kind_t *k = &KINDS[KIND];
    if (KIND == KIND_FP32)
        return ((uint32_t)sign << 31) | ((uint32_t)e << 23) | ((uint32_t)m3 << 20) |
               ((uint32_t)(lv >> 1) << 13) | ((uint32_t)b1v << 5) | b0v;
    return ((uint32_t)sign << 15) | ((uint32_t)e << k->esh) | ((uint32_t)m3 << (k->mb - 3)) |
           (lv >> 1);
}

INLINE void store(const int KIND, uint8_t *d, Py_ssize_t i, uint32_t v) {
    if (KINDS[KIND].width == 4) {
        d[4 * i] = (uint8_t)v;
        d[4 * i + 1] = (uint8_t)(v >> 8);
        d[4 * i + 2] = (uint8_t)(v >> 16);
        d[4 * i + 3] = (uint8_t)(v >> 24);
    } else {
        d[2 * i] = (uint8_t)v;
        d[2 * i + 1] = (uint8_t)(v >> 8);
    }
}

/* Elements i0 .. i0 + len of bgx_merge's first pass, with offsets o[0 ..] (or
 * none): every element as if it were common (escaped ones are rewritten by the
 * second pass), branch-free. Each output byte is computed as a byte, so the loop
 * vectorises as byte operations and one interleave, not as a widening of every
 * plane to 32 bits: about three times faster (bench/stages.py). Returns, for the
 * caller's range check, the largest H + 1 (mod 256, so that the escape byte 255
 * counts as 0) in the high byte and the OR of every B0 (fp32) or L (bf16) byte in
 * the low byte. */
INLINE unsigned merge_range(const int KIND, const uint8_t *RESTRICT h,
                            const uint8_t *RESTRICT l, const uint8_t *RESTRICT b1,
                            const uint8_t *RESTRICT b0, const uint8_t *RESTRICT o,
                            Py_ssize_t i0, Py_ssize_t len, unsigned ulo, uint8_t *RESTRICT d) {
    uint8_t top = 0, low = 0;
    const uint8_t lo8 = (uint8_t)ulo;
    for (Py_ssize_t j = 0; j < len; j++) {
        Py_ssize_t i = i0 + j;
        uint8_t hv = h[i], lv = l[i], next = (uint8_t)(hv + 1);
        top = next > top ? next : top;
        /* The coded exponent plus the column offset, mod 2^EB (8 bits wrap). */
        uint8_t e = (uint8_t)(lo8 + (hv >> 3) + (o ? o[j] : 0));
        if (KIND == KIND_FP32) {
            uint8_t x1 = b1[i], x0 = b0[i];
            low |= x0;
            d[4 * i] = (uint8_t)((x1 << 5) | x0);
            d[4 * i + 1] = (uint8_t)(((lv << 4) & 0xE0) | (x1 >> 3));
            d[4 * i + 2] = (uint8_t)((e << 7) | ((hv & 7) << 4) | (lv >> 4));
            d[4 * i + 3] = (uint8_t)((lv << 7) | (e >> 1));
        } else if (KIND == KIND_BF16) {
            low |= lv;
            d[2 * i] = (uint8_t)((e << 7) | ((hv & 7) << 4) | (lv >> 1));
            d[2 * i + 1] = (uint8_t)((lv << 7) | (e >> 1));
        } else {
            e &= 31;
            d[2 * i] = (uint8_t)(((hv & 1) << 7) | (lv >> 1));
            d[2 * i + 1] = (uint8_t)((lv << 7) | (e << 2) | ((hv & 7) >> 1));
        }
    }
    return ((unsigned)top << 8) | low;
}

/* First pass of bgx_merge (whole rows at a time with column offsets, like
 * split_pass). Returns 0, or 1 when some plane holds a value bgx_split cannot
 * write: H in [8 * span, 255), or a B0 (fp32) or L (bf16) byte of 32 or more. */
INLINE int merge_pass(const int KIND, const uint8_t *h, const uint8_t *l, const uint8_t *b1,
                      const uint8_t *b0, const uint8_t *o, Py_ssize_t period, unsigned ulo,
                      unsigned uspan, uint8_t *d, Py_ssize_t n) {
    unsigned top = 0, low = 0;
    if (period == 0) {
        unsigned r = merge_range(KIND, h, l, b1, b0, NULL, 0, n, ulo, d);
        top = r >> 8;
        low = r & 255;
    } else {
        for (Py_ssize_t start = 0; start < n; start += period) {
            Py_ssize_t len = n - start < period ? n - start : period;
            unsigned r = merge_range(KIND, h, l, b1, b0, o, start, len, ulo, d);
            top = (r >> 8) > top ? (r >> 8) : top;
            low |= r & 255;
        }
    }
    return top > 8u * uspan || (KIND != KIND_FP16 && low >= 32);
}

/* The loops of bgx_merge, specialised per KIND like split_loop. Returns NULL, or
 * what is wrong with the planes. */
INLINE const char *merge_loop(const int KIND, const uint8_t *h, const uint8_t *l,
                              const uint8_t *b1, const uint8_t *b0, const uint8_t *x,
                              Py_ssize_t nesc, const uint8_t *o, Py_ssize_t period, unsigned ulo,
                              unsigned uspan, uint8_t *d, Py_ssize_t n) {
    const kind_t *k = &KINDS[KIND];
    const unsigned nb = 1u << k->eb, emask = nb - 1;
    int bad = period ? merge_pass(KIND, h, l, b1, b0, o, period, ulo, uspan, d, n)
                     : merge_pass(KIND, h, l, b1, b0, NULL, 0, ulo, uspan, d, n);
    if (bad) return "a plane holds a value out of range";
    /* The second pass: every H == 255, in order, takes the next escape; there
     * must be exactly as many as the record says. */
    Py_ssize_t esc = 0;
    for (const uint8_t *p = h; (p = memchr(p, 255, (size_t)(h + n - p))) != NULL; p++) {
        if (esc == nesc) return "escape count disagrees with the record";
        Py_ssize_t i = p - h;
        unsigned xv = x[2 * esc] | ((unsigned)x[2 * esc + 1] << 8);
        esc++;
        unsigned e = xv >> 3;
        if (e >= nb || e - ulo < uspan)
            return "escaped exponent inside the window or out of range";
        if (period) e = (e + o[i % period]) & emask;
        unsigned lv = l[i];
        unsigned b1v = KIND == KIND_FP32 ? b1[i] : 0, b0v = KIND == KIND_FP32 ? b0[i] : 0;
        store(KIND, d, i, bgx_value(KIND, lv & 1, e, xv & 7, lv, b1v, b0v));
    }
    if (esc != nesc) return "escape count disagrees with the record";
    return NULL;
}

/* One bgx_merge loop per kind, like the split loops. */
typedef const char *(*merge_fn)(const uint8_t *h, const uint8_t *l, const uint8_t *b1,
                                const uint8_t *b0, const uint8_t *x, Py_ssize_t nesc,
                                const uint8_t *o, Py_ssize_t p, unsigned ulo, unsigned uspan,
                                uint8_t *d, Py_ssize_t n);
#define MERGE_FN(NAME, ATTR, KIND)                                                        \
    ATTR static const char *NAME(const uint8_t *h, const uint8_t *l, const uint8_t *b1,     \
                                 const uint8_t *b0, const uint8_t *x, Py_ssize_t nesc,      \
                                 const uint8_t *o, Py_ssize_t p, unsigned ulo,              \
                                 unsigned uspan, uint8_t *d, Py_ssize_t n) {                \
        return merge_loop(KIND, h, l, b1, b0, x, nesc, o, p, ulo, uspan, d, n);            \
    }
MERGE_FN(merge_fp32, , KIND_FP32)
MERGE_FN(merge_bf16, , KIND_BF16)
MERGE_FN(merge_fp16, , KIND_FP16)
static const merge_fn MERGE_BASE[3] = {merge_fp32, merge_bf16, merge_fp16};
#if HAVE_AVX2_LOOPS
MERGE_FN(merge_fp32_avx2, AVX2, KIND_FP32)
MERGE_FN(merge_bf16_avx2, AVX2, KIND_BF16)
MERGE_FN(merge_fp16_avx2, AVX2, KIND_FP16)
static const merge_fn MERGE_AVX2[3] = {merge_fp32_avx2, merge_bf16_avx2, merge_fp16_avx2};
#endif

static merge_fn merge_kernel(int kind) {
#if HAVE_AVX2_LOOPS
    if (use_avx2) return MERGE_AVX2[kind];
#endif
    return MERGE_BASE[kind];
}

/* bgx_merge(H, L, B1, B0, X, offsets, dst, kind, lo, span): the inverse of bgx_split.
 * Every plane must have exactly its decoded size (X: 2 bytes per escape), and
 * every value must be one bgx_split can write; otherwise ValueError, with ``dst``
 * zeroed so that no partial output is left behind. */
static PyObject *bgx_merge(PyObject *self, PyObject *args) {
    Py_buffer H, L, B1, B0, X, off, dst;
    int kind, lo, span;
    (void)self;
    if (!PyArg_ParseTuple(args, "y*y*y*y*y*y*w*iii", &H, &L, &B1, &B0, &X, &off, &dst, &kind,
                          &lo, &span))
        return NULL;
    PyObject *result = NULL;
    const kind_t *k;
    if (!get_kind(kind, &k)) goto done;
    Py_ssize_t n = dst.len / k->width;
    unsigned nb = 1u << k->eb;
    if (dst.len % k->width || H.len != n || L.len != n || X.len % 2 ||
        (k->width == 4 && (B1.len != n || B0.len != n)) ||
        (k->width == 2 && (B1.len != 0 || B0.len != 0))) {
        PyErr_SetString(PyExc_ValueError, "plane sizes disagree with the output");
        goto done;
    }
    if (lo < 0 || span < 1 || span > 31 || (unsigned)(lo + span) > nb) {
        PyErr_SetString(PyExc_ValueError, "bad exponent window");
        goto done;
    }
    const uint8_t *o = (const uint8_t *)off.buf;
    Py_ssize_t period = off.len;
    for (Py_ssize_t j = 0; j < period; j++)
        if (o[j] >= nb) {
            PyErr_SetString(PyExc_ValueError, "column offset out of range");
            goto done;
        }
    const char *problem = NULL;
    {
        const uint8_t *h = (const uint8_t *)H.buf, *l = (const uint8_t *)L.buf,
                      *b1 = (const uint8_t *)B1.buf, *b0 = (const uint8_t *)B0.buf,
                      *x = (const uint8_t *)X.buf;
        uint8_t *d = (uint8_t *)dst.buf;
        Py_ssize_t nesc = X.len / 2;
        unsigned ulo = (unsigned)lo, uspan = (unsigned)span;
        Py_BEGIN_ALLOW_THREADS;
        problem = merge_kernel(kind)(h, l, kind == KIND_FP32 ? b1 : NULL,
                                     kind == KIND_FP32 ? b0 : NULL, x, nesc, o, period, ulo,
                                     uspan, d, n);
        if (problem != NULL) memset(d, 0, (size_t)dst.len);
        Py_END_ALLOW_THREADS;
    }
    if (problem != NULL) {
        PyErr_SetString(PyExc_ValueError, problem);
        goto done;
    }
    result = Py_NewRef(Py_None);
done:
    PyBuffer_Release(&H);
    PyBuffer_Release(&L);
    PyBuffer_Release(&B1);
    PyBuffer_Release(&B0);
    PyBuffer_Release(&X);
    PyBuffer_Release(&off);
    PyBuffer_Release(&dst);
    return result;
}


/* ---- 5-bit packing ("p5" planes of bgx) and byte entropy ----------------------
 * p5: value i (< 32) occupies bits 5i .. 5i+4 of the plane, least significant
 * bit first; the plane has ceil(5n / 8) bytes and its padding bits are zero. */

static Py_ssize_t p5_size(Py_ssize_t n) { return (5 * n + 7) / 8; }

/* Eight bytes as a little-endian integer (one load where the host is little-endian). */
static inline uint64_t load64le(const uint8_t *p) {
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    uint64_t v;
    memcpy(&v, p, 8);
    return v;
#else
    uint64_t v = 0;
    for (int k = 0; k < 8; k++) v |= (uint64_t)p[k] << (8 * k);
    return v;
#endif
}

/* Eight bytes stored little-endian. */
static inline void store64le(uint8_t *p, uint64_t v) {
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    memcpy(p, &v, 8);
#else
    for (int k = 0; k < 8; k++) p[k] = (uint8_t)(v >> (8 * k));
#endif
}

/* pack5(src, dst): ValueError if a value is 32 or more, or sizes disagree. */
static PyObject *pack5(PyObject *self, PyObject *args) {
    Py_buffer src, dst;
    (void)self;
    if (!PyArg_ParseTuple(args, "y*w*", &src, &dst)) return NULL;
    PyObject *result = NULL;
    Py_ssize_t n = src.len;
    if (dst.len != p5_size(n)) {
        PyErr_SetString(PyExc_ValueError, "buffer sizes disagree");
        goto done;
    }
    {
        const uint8_t *s = (const uint8_t *)src.buf;
        uint8_t *d = (uint8_t *)dst.buf;
        unsigned bad = 0;
        Py_BEGIN_ALLOW_THREADS;
        Py_ssize_t i = 0, o = 0;
        /* 8 values per 5 bytes. While 8 bytes can be read and written, one load
         * takes the group's values and one store writes it (its last 3 bytes are
         * overwritten by the next group). */
        uint64_t seen = 0;
        for (; i + 8 <= n && o + 8 <= dst.len; i += 8, o += 5) {
            uint64_t x = load64le(s + i), v = 0;
            seen |= x;
            for (int k = 0; k < 8; k++) v |= ((x >> (8 * k)) & 31) << (5 * k);
            store64le(d + o, v);
        }
        /* Any byte of 32 or more sets a bit above 5 in some byte of seen. */
        bad = (seen & 0xE0E0E0E0E0E0E0E0ull) ? 32 : 0;
        /* The rest; the last group may hold fewer values and bytes. */
        for (; i < n; i += 8, o += 5) {
            Py_ssize_t count = n - i < 8 ? n - i : 8, bytes = dst.len - o < 5 ? dst.len - o : 5;
            uint64_t v = 0;
            for (Py_ssize_t k = 0; k < count; k++) {
                bad |= s[i + k];
                v |= (uint64_t)(s[i + k] & 31) << (5 * k);
            }
            for (Py_ssize_t k = 0; k < bytes; k++) d[o + k] = (uint8_t)(v >> (8 * k));
        }
        Py_END_ALLOW_THREADS;
        if (bad >= 32) {
            PyErr_SetString(PyExc_ValueError, "a value does not fit in 5 bits");
            goto done;
        }
    }
    result = Py_NewRef(Py_None);
done:
    PyBuffer_Release(&src);
    PyBuffer_Release(&dst);
    return result;
}

#if HAVE_AVX2_LOOPS
/* unpack5's whole groups, 32 values (20 bytes) at a time: each group of eight
 * values is one 64-bit load, its low 32 bits spread to six lanes and bits 8..39
 * to two, each lane shifted to its value; the four groups' lanes are then packed
 * to bytes. 3.2x the plain loop here. Returns the values done; every load stays
 * below src + slen. */
__attribute__((target("avx2"))) static Py_ssize_t unpack5_avx2(const uint8_t *s, uint8_t *d,
                                                              Py_ssize_t n, Py_ssize_t slen) {
    const __m256i spread = _mm256_setr_epi32(0, 0, 0, 0, 0, 0, 2, 2),
                  shift = _mm256_setr_epi32(0, 5, 10, 15, 20, 25, 22, 27),
                  low5 = _mm256_set1_epi32(31), order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    Py_ssize_t i = 0, o = 0;
    for (; i + 32 <= n && o + 23 <= slen; i += 32, o += 20) {
        __m256i g[4];
        for (int k = 0; k < 4; k++) {
            uint64_t v = load64le(s + o + 5 * k);
            __m256i x = _mm256_castsi128_si256(_mm_set_epi64x((long long)(v >> 8), (long long)v));
            g[k] = _mm256_and_si256(_mm256_srlv_epi32(_mm256_permutevar8x32_epi32(x, spread), shift),
                                    low5);
        }
        __m256i b = _mm256_packus_epi16(_mm256_packus_epi32(g[0], g[1]), _mm256_packus_epi32(g[2], g[3]));
        _mm256_storeu_si256((__m256i *)(d + i), _mm256_permutevar8x32_epi32(b, order));
    }
    return i;
}
#endif

/* unpack5(src, dst): the n = len(dst) values of a p5 plane. ValueError if the
 * sizes disagree or a padding bit is set; dst is then zeroed. */
static PyObject *unpack5(PyObject *self, PyObject *args) {
    Py_buffer src, dst;
    (void)self;
    if (!PyArg_ParseTuple(args, "y*w*", &src, &dst)) return NULL;
    PyObject *result = NULL;
    Py_ssize_t n = dst.len;
    if (src.len != p5_size(n)) {
        memset(dst.buf, 0, (size_t)dst.len);
        PyErr_SetString(PyExc_ValueError, "p5 plane size disagrees with its values");
        goto done;
    }
    {
        const uint8_t *s = (const uint8_t *)src.buf;
        uint8_t *d = (uint8_t *)dst.buf;
        int padded = 0, wide = use_avx2;
        Py_BEGIN_ALLOW_THREADS;
        Py_ssize_t i = 0, o = 0;
#if HAVE_AVX2_LOOPS
        if (wide) {
            i = unpack5_avx2(s, d, n, src.len);
            o = i / 8 * 5;
        }
#else
        (void)wide;
#endif
        /* 8 values per 5 bytes; while 8 bytes can be read, one load does it. */
        for (; i + 8 <= n && o + 8 <= src.len; i += 8, o += 5) {
            uint64_t v = load64le(s + o);
            for (int k = 0; k < 8; k++) d[i + k] = (uint8_t)((v >> (5 * k)) & 31);
        }
        /* The rest, and the last group, which may hold fewer values and bytes:
         * the bits after its last value are padding and must be zero. */
        for (; i < n; i += 8, o += 5) {
            Py_ssize_t count = n - i < 8 ? n - i : 8, bytes = src.len - o < 5 ? src.len - o : 5;
            uint64_t v = 0;
            for (Py_ssize_t k = 0; k < bytes; k++) v |= (uint64_t)s[o + k] << (8 * k);
            for (Py_ssize_t k = 0; k < count; k++) d[i + k] = (uint8_t)((v >> (5 * k)) & 31);
            if (v >> (5 * count)) padded = 1;
        }
        if (padded) memset(d, 0, (size_t)n);
        Py_END_ALLOW_THREADS;
        if (padded) {
            PyErr_SetString(PyExc_ValueError, "p5 padding bits are not zero");
            goto done;
        }
    }
    result = Py_NewRef(Py_None);
done:
    PyBuffer_Release(&src);
    PyBuffer_Release(&dst);
    return result;
}

/* entropy(buf, step) -> float: order-0 entropy, in bits per byte, of every
 * step-th byte of buf (step >= 1). */
static PyObject *entropy(PyObject *self, PyObject *args) {
    Py_buffer buf;
    Py_ssize_t step;
    (void)self;
    if (!PyArg_ParseTuple(args, "y*n", &buf, &step)) return NULL;
    if (step < 1) {
        PyBuffer_Release(&buf);
        PyErr_SetString(PyExc_ValueError, "step must be at least 1");
        return NULL;
    }
    double bits = 0.0;
    {
        const uint8_t *s = (const uint8_t *)buf.buf;
        Py_ssize_t n = buf.len;
        Py_BEGIN_ALLOW_THREADS;
        /* Four interleaved histograms keep the increments independent. */
        uint32_t h[4][256];
        memset(h, 0, sizeof h);
        Py_ssize_t i = 0, seen = 0;
        for (; i + 3 * step < n; i += 4 * step, seen += 4) {
            h[0][s[i]]++;
            h[1][s[i + step]]++;
            h[2][s[i + 2 * step]]++;
            h[3][s[i + 3 * step]]++;
        }
        for (; i < n; i += step, seen++) h[0][s[i]]++;
        for (int b = 0; b < 256; b++) {
            double c = (double)h[0][b] + h[1][b] + h[2][b] + h[3][b];
            if (c > 0) bits -= c * log2(c / (double)seen);
        }
        if (seen > 0) bits /= (double)seen;
        Py_END_ALLOW_THREADS;
    }
    PyBuffer_Release(&buf);
    return PyFloat_FromDouble(bits);
}

/* ---- "ans" planes: static order-0 rANS (docs/FORMAT.md, "ans planes") -------
 * Probabilities are frequencies f[s] out of ANS_M = 2^12 (12 bits are within
 * 0.0001 of the order-0 entropy on weight planes and keep the decode table at
 * 16 KB, inside L1). Four 32-bit states take turns (symbol i uses state i mod 4)
 * so that the decoder has four independent chains in flight; they share one
 * byte stream. A state lives in [ANS_L, 256 * ANS_L): ANS_L = 2^23 is the usual
 * byte-wise rANS bound (a multiple of ANS_M, and 256 * ANS_L fits in 32 bits).
 * The table itself (which symbols, which frequencies) is parsed by the caller,
 * which passes the 256 frequencies as little-endian uint16. */
enum { ANS_BITS = 12, ANS_M = 1 << ANS_BITS, ANS_LANES = 4 };
#define ANS_L (1u << 23)

/* Checks a frequency table (256 little-endian uint16, summing to ANS_M) and
 * writes the cumulative starts. */
static int ans_table(const Py_buffer *freqs, uint32_t *f, uint32_t *start) {
    if (freqs->len != 512) {
        PyErr_SetString(PyExc_ValueError, "frequency table must be 256 uint16");
        return 0;
    }
    const uint8_t *b = (const uint8_t *)freqs->buf;
    uint32_t total = 0;
    for (int s = 0; s < 256; s++) {
        f[s] = LOAD16(b + 2 * s);
        start[s] = total;
        total += f[s];
    }
    if (total != ANS_M) {
        PyErr_SetString(PyExc_ValueError, "frequencies do not sum to 4096");
        return 0;
    }
    return 1;
}

/* The decoder's slot table: slot -> symbol | (slot - start) << 8 | (f - 1) << 20,
 * one 16 KB lookup per symbol (the new state is f * (x >> 12) + (slot - start)). */
static void ans_slots(const uint32_t *f, const uint32_t *start, uint32_t *table) {
    for (int sym = 0; sym < 256; sym++)
        for (uint32_t k = 0; k < f[sym]; k++)
            table[start[sym] + k] = (uint32_t)sym | (k << 8) | ((f[sym] - 1) << 20);
}

/* An encoder's last step: its final states, little-endian, in front of the
 * stream at *pp (the caller has checked the room). */
static void ans_put_states(uint8_t **pp, const uint32_t *x, int lanes) {
    uint8_t *p = *pp;
    for (int k = lanes - 1; k >= 0; k--) {
        p -= 4;
        p[0] = (uint8_t)x[k];
        p[1] = (uint8_t)(x[k] >> 8);
        p[2] = (uint8_t)(x[k] >> 16);
        p[3] = (uint8_t)(x[k] >> 24);
    }
    *pp = p;
}

/* ans_encode(freqs, src, out) -> offset: codes src into the end of out (states,
 * then the byte stream), returning where the coded plane starts in out; -1 when
 * it does not fit (the caller then keeps another form). ValueError for a
 * symbol whose frequency is 0. */
static PyObject *ans_encode(PyObject *self, PyObject *args) {
    Py_buffer freqs, src, out;
    (void)self;
    if (!PyArg_ParseTuple(args, "y*y*w*", &freqs, &src, &out)) return NULL;
    PyObject *result = NULL;
    uint32_t f[256], start[256];
    if (!ans_table(&freqs, f, start)) goto done;
    {
        const uint8_t *s = (const uint8_t *)src.buf;
        uint8_t *base = (uint8_t *)out.buf, *p = base + out.len;
        Py_ssize_t n = src.len, offset = -1;
        int missing = 0;
        Py_BEGIN_ALLOW_THREADS;
        /* x / f by multiplication: for every x < 2^31 and 1 <= f <= 2^12,
         * x / f == (x * rcp) >> (31 + shift) with shift = ceil(log2 f) and
         * rcp = floor(2^(31 + shift) / f) + 1 (the round-up method of Granlund
         * and Montgomery; x * rcp < 2^64). Division was half the encoder's time. */
        struct {
            uint64_t rcp, limit;
            uint32_t f, start, shift;
        } tab[256];
        for (int k = 0; k < 256; k++) {
            unsigned sh = 0;
            while (f[k] > (1u << sh)) sh++;
            tab[k].f = f[k];
            tab[k].start = start[k];
            tab[k].shift = 31 + sh;
            tab[k].rcp = f[k] ? (((uint64_t)1 << (31 + sh)) / f[k]) + 1 : 0;
            tab[k].limit = (uint64_t)f[k] << (31 - ANS_BITS);
        }
        uint32_t x[ANS_LANES] = {ANS_L, ANS_L, ANS_L, ANS_L};
        /* One symbol into state x[k]. p only moves down, and the states need 16
         * bytes below the stream: below that the plane cannot fit (and the 2
         * bytes written next are in room). 0, 1 or 2 bytes are emitted (v < 2^31
         * <= limit << 16) without a branch: both are written, and one not taken
         * is overwritten later (by the next byte or by the states). */
#define ANS_PUT(k, idx)                                                            \
    do {                                                                           \
        unsigned sym = s[idx];                                                     \
        if (RARE(tab[sym].f == 0)) {                                               \
            missing = 1;                                                           \
            goto put_stop;                                                         \
        }                                                                          \
        if (RARE(p - base < 4 * ANS_LANES)) goto put_stop;                         \
        uint32_t v = x[k];                                                         \
        unsigned c = (v >= tab[sym].limit) + ((uint64_t)v >= tab[sym].limit << 8); \
        p[-1] = (uint8_t)v;                                                        \
        p[-2] = (uint8_t)(v >> 8);                                                 \
        p -= c;                                                                    \
        v >>= 8 * c;                                                               \
        uint32_t q = (uint32_t)(((uint64_t)v * tab[sym].rcp) >> tab[sym].shift);   \
        x[k] = (q << ANS_BITS) + (v - q * tab[sym].f) + tab[sym].start;            \
    } while (0)
        /* Backwards, so that the decoder reads forwards: first the symbols past
         * the last whole group of four, then four at a time with each state's
         * index a constant, so that the states stay in registers. */
        Py_ssize_t i = n;
        for (; i % ANS_LANES; i--) ANS_PUT((i - 1) & (ANS_LANES - 1), i - 1);
        for (; i > 0; i -= ANS_LANES) {
            ANS_PUT(3, i - 1);
            ANS_PUT(2, i - 2);
            ANS_PUT(1, i - 3);
            ANS_PUT(0, i - 4);
        }
#undef ANS_PUT
    put_stop:
        if (i == 0 && !missing && p - base >= 4 * ANS_LANES) {
            ans_put_states(&p, x, ANS_LANES);
            offset = p - base;
        }
        Py_END_ALLOW_THREADS;
        if (missing) {
            PyErr_SetString(PyExc_ValueError, "a symbol has frequency 0");
            goto done;
        }
        result = PyLong_FromSsize_t(offset);
    }
done:
    PyBuffer_Release(&freqs);
    PyBuffer_Release(&src);
    PyBuffer_Release(&out);
    return result;
}

/* ans_decode(freqs, src, dst): decodes len(dst) symbols from src (states, then
 * the byte stream). ValueError, with dst zeroed, unless every state starts in
 * [ANS_L, 256 ANS_L), no read passes the end, every byte is used and every
 * state ends at ANS_L (where the encoder started). */
static PyObject *ans_decode(PyObject *self, PyObject *args) {
    Py_buffer freqs, src, dst;
    (void)self;
    if (!PyArg_ParseTuple(args, "y*y*w*", &freqs, &src, &dst)) return NULL;
    PyObject *result = NULL;
    uint32_t f[256], start[256];
    if (!ans_table(&freqs, f, start)) {
        memset(dst.buf, 0, (size_t)dst.len);
        goto done;
    }
    if (src.len < 4 * ANS_LANES) {
        memset(dst.buf, 0, (size_t)dst.len);
        PyErr_SetString(PyExc_ValueError, "ans plane shorter than its states");
        goto done;
    }
    {
        const uint8_t *p = (const uint8_t *)src.buf, *end = p + src.len;
        uint8_t *d = (uint8_t *)dst.buf;
        Py_ssize_t n = dst.len;
        const char *problem = NULL;
        Py_BEGIN_ALLOW_THREADS;
        uint32_t table[ANS_M];
        ans_slots(f, start, table);
        uint32_t x[ANS_LANES];
        for (int k = 0; k < ANS_LANES; k++) {
            x[k] = (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) |
                   ((uint32_t)p[3] << 24);
            p += 4;
            if (x[k] < ANS_L || x[k] >= ANS_L << 8) problem = "ans state out of range";
        }
        /* A step needs at most 2 bytes: the new state is at least
         * f * (x >> 12) >= ANS_L >> 12, and 2^11 << 16 >= ANS_L. */
#define ANS_STEP(k, i)                                                             \
    do {                                                                           \
        uint32_t e = table[x[k] & (ANS_M - 1)];                                    \
        d[i] = (uint8_t)e;                                                         \
        x[k] = ((e >> 20) + 1) * (x[k] >> ANS_BITS) + ((e >> 8) & (ANS_M - 1));    \
        while (x[k] < ANS_L) {                                                     \
            if (RARE(p == end)) {                                                  \
                problem = "ans stream ends early";                                 \
                goto stop;                                                         \
            }                                                                      \
            x[k] = (x[k] << 8) | *p++;                                             \
        }                                                                          \
    } while (0)
/* The same step without branches, for when 2 bytes per lane are surely left.
 * Both possible next bytes are loaded before the state is known, and the state
 * picks how many to take: the loop's branch would be taken about every other
 * symbol, unpredictably, and a load that waits for the state would serialise
 * the lanes (measured: 2.4 against 3.3-4.5 ms per million symbols). */
#define ANS_FAST(k, i)                                                             \
    do {                                                                           \
        uint32_t e = table[x[k] & (ANS_M - 1)];                                    \
        d[i] = (uint8_t)e;                                                         \
        uint32_t v = ((e >> 20) + 1) * (x[k] >> ANS_BITS) + ((e >> 8) & (ANS_M - 1)); \
        uint32_t b0 = p[0], b1 = p[1];                                             \
        unsigned one = v < ANS_L, two = v < (ANS_L >> 8);                          \
        uint32_t v1 = (v << 8) | b0, v2 = (v << 16) | (b0 << 8) | b1;              \
        x[k] = two ? v2 : (one ? v1 : v);                                          \
        p += one + two;                                                            \
    } while (0)
        if (problem == NULL) {
            Py_ssize_t i = 0;
            for (; i + ANS_LANES <= n && end - p >= 2 * ANS_LANES; i += ANS_LANES) {
                ANS_FAST(0, i);
                ANS_FAST(1, i + 1);
                ANS_FAST(2, i + 2);
                ANS_FAST(3, i + 3);
            }
            for (; i + ANS_LANES <= n; i += ANS_LANES) {
                ANS_STEP(0, i);
                ANS_STEP(1, i + 1);
                ANS_STEP(2, i + 2);
                ANS_STEP(3, i + 3);
            }
            for (; i < n; i++) ANS_STEP(i & (ANS_LANES - 1), i);
            if (p != end) problem = "ans stream has bytes left over";
            for (int k = 0; k < ANS_LANES && problem == NULL; k++)
                if (x[k] != ANS_L) problem = "ans final state is not the initial one";
        }
#undef ANS_STEP
#undef ANS_FAST
    stop:
        if (problem != NULL) memset(d, 0, (size_t)n);
        Py_END_ALLOW_THREADS;
        if (problem != NULL) {
            PyErr_SetString(PyExc_ValueError, problem);
            goto done;
        }
        result = Py_NewRef(Py_None);
    }
done:
    PyBuffer_Release(&freqs);
    PyBuffer_Release(&src);
    PyBuffer_Release(&dst);
    return result;
}

/* ---- "ans32" planes: the same coder with 32 states and 16-bit words -----------
 * (docs/FORMAT.md, "ans32 planes"). The "ans" layout above is bounded by its one
 * byte stream: each state's step waits for the bytes the state before it took,
 * so its four chains never truly overlap (1.8 ns per symbol here, the largest
 * single cost of loading bf16 weights). Here a state is renormalised by at most
 * one 16-bit word (it lives in [2^16, 2^32), and a step leaves it at least
 * f * 2^4 >= 2^4, so one word always brings it back), and 32 of them take turns:
 * eight at a time fit one AVX2 register, a gather does their table lookups, and
 * the words the eight need are spread to them with one permutation. 0.73 ns per
 * symbol with AVX2, 1.7 without, on the same planes (the encoder: 1.2 and 2.2);
 * the coded size is the same to within the 112 bytes of extra states. */
enum { ANS32_LANES = 32 };
#if defined(__GNUC__) && !defined(__clang__)
#define UNROLL8 _Pragma("GCC unroll 8")
#else
#define UNROLL8
#endif
#define ANS32_L (1u << 16)

#if HAVE_AVX2_LOOPS
/* For each mask of the eight lanes that give a word: the lanes, in order, moved
 * to the top of the register (the words then end where the stream begins). */
static uint32_t ans32_gather_top[256][8];

static void ans32_gather_init(void) {
    for (int m = 0; m < 256; m++) {
        int c = __builtin_popcount((unsigned)m), t = 8 - c;
        for (int j = 0; j < 8; j++) ans32_gather_top[m][j] = 0;
        for (int j = 0; j < 8; j++)
            if (m >> j & 1) ans32_gather_top[m][t++] = (uint32_t)j;
    }
}

/* ans32_encode's whole rounds, eight lanes per register, from symbol i down
 * while the room check passes; the same steps and bytes as ANS32_PUT. Per group:
 * a gather of f and start, the word test as (x >> 20) >= f (x >= f * 2^20,
 * without the 2^32 of f = 4096), the words of the lanes that give one moved to
 * the top and stored as one 16-byte write that ends at p (its lower bytes fall
 * below the stream, where later words and the states overwrite them), and the
 * quotient through the same double reciprocal, four lanes at a time. Returns
 * the new i; *pp and x follow. */
__attribute__((target("avx2,popcnt"))) static Py_ssize_t ans32_put_avx2(
    const uint8_t *s, Py_ssize_t i, uint32_t *x, uint8_t **pp, const uint8_t *base,
    const uint32_t *fstart, const double *inv, unsigned *absent) {
    uint8_t *p = *pp;
    __m256i xv[4];
    for (int g = 0; g < 4; g++) xv[g] = _mm256_loadu_si256((const __m256i *)(x + 8 * g));
    const __m256i zero = _mm256_setzero_si256(), lo16 = _mm256_set1_epi32(0xFFFF),
                  flip = _mm256_set1_epi32((int)0x80000000u);
    const __m256d two31 = _mm256_set1_pd(2147483648.0), nudge = _mm256_set1_pd(0x1p-20);
    __m256i missing = zero;
    for (; i > 0 && p - base >= 2 * ANS32_LANES + 4 * ANS32_LANES; i -= ANS32_LANES) {
        for (int g = 3; g >= 0; g--) {
            __m256i v = xv[g];
            __m256i sym = _mm256_cvtepu8_epi32(
                _mm_loadl_epi64((const __m128i *)(s + i - ANS32_LANES + 8 * g)));
            __m256i fs = _mm256_i32gather_epi32((const int *)fstart, sym, 4);
            __m256i f = _mm256_srli_epi32(fs, 16), st = _mm256_and_si256(fs, lo16);
            missing = _mm256_or_si256(missing, _mm256_cmpeq_epi32(f, zero));
            __m256i keep = _mm256_cmpgt_epi32(f, _mm256_srli_epi32(v, 20));
            unsigned give = ~(unsigned)_mm256_movemask_ps(_mm256_castsi256_ps(keep)) & 0xFF;
            __m256i w = _mm256_permutevar8x32_epi32(
                _mm256_and_si256(v, lo16),
                _mm256_loadu_si256((const __m256i *)ans32_gather_top[give]));
            __m256i words = _mm256_permute4x64_epi64(_mm256_packus_epi32(w, w), 0xD8);
            _mm_storeu_si128((__m128i *)(p - 16), _mm256_castsi256_si128(words));
            p -= 2 * __builtin_popcount(give);
            v = _mm256_blendv_epi8(_mm256_srli_epi32(v, 16), v, keep);
            __m256i biased = _mm256_xor_si256(v, flip); /* v - 2^31, as a signed int */
            __m256d dlo = _mm256_add_pd(_mm256_cvtepi32_pd(_mm256_castsi256_si128(biased)), two31);
            __m256d dhi =
                _mm256_add_pd(_mm256_cvtepi32_pd(_mm256_extracti128_si256(biased, 1)), two31);
            __m256d rlo = _mm256_i32gather_pd(inv, _mm256_castsi256_si128(sym), 8);
            __m256d rhi = _mm256_i32gather_pd(inv, _mm256_extracti128_si256(sym, 1), 8);
            __m128i qlo = _mm256_cvttpd_epi32(_mm256_add_pd(_mm256_mul_pd(dlo, rlo), nudge));
            __m128i qhi = _mm256_cvttpd_epi32(_mm256_add_pd(_mm256_mul_pd(dhi, rhi), nudge));
            __m256i q = _mm256_inserti128_si256(_mm256_castsi128_si256(qlo), qhi, 1);
            xv[g] = _mm256_add_epi32(
                _mm256_add_epi32(_mm256_slli_epi32(q, ANS_BITS),
                                 _mm256_sub_epi32(v, _mm256_mullo_epi32(q, f))),
                st);
        }
    }
    for (int g = 0; g < 4; g++) _mm256_storeu_si256((__m256i *)(x + 8 * g), xv[g]);
    if (_mm256_movemask_epi8(missing)) *absent = 1;
    *pp = p;
    return i;
}
#endif

/* ans32_encode(freqs, src, out) -> offset, as ans_encode. */
static PyObject *ans32_encode(PyObject *self, PyObject *args) {
    Py_buffer freqs, src, out;
    (void)self;
    if (!PyArg_ParseTuple(args, "y*y*w*", &freqs, &src, &out)) return NULL;
    PyObject *result = NULL;
    uint32_t f[256], start[256];
    if (!ans_table(&freqs, f, start)) goto done;
    {
        const uint8_t *s = (const uint8_t *)src.buf;
        uint8_t *base = (uint8_t *)out.buf, *p = base + out.len;
        Py_ssize_t n = src.len, offset = -1;
        int missing = 0, wide = use_avx2;
        (void)wide;
        Py_BEGIN_ALLOW_THREADS;
        /* x / f through a double reciprocal: after renormalisation x < f * 2^20,
         * so the quotient is below 2^20 and x * (1/f) is within 2^-31 of x / f
         * (two roundings of 2^-53 each), while a fraction that is not 0 is at
         * least 1/f >= 2^-12 away from the next integer. Adding 2^-20 therefore
         * truncates to the exact quotient, multiples of f included. An integer
         * reciprocal as ans_encode's would need a 65-bit product for x < 2^32. */
        struct {
            double inv;
            uint64_t limit;
            uint32_t f, start;
        } tab[256];
        for (int k = 0; k < 256; k++) {
            tab[k].inv = f[k] ? 1.0 / (double)f[k] : 0.0;
            tab[k].limit = (uint64_t)f[k] << (32 - ANS_BITS); /* 2^32 for f = 4096 */
            tab[k].f = f[k];
            tab[k].start = start[k];
        }
        uint32_t x[ANS32_LANES];
        for (int k = 0; k < ANS32_LANES; k++) x[k] = ANS32_L;
        /* One symbol into x[k]. Both bytes of the word are written below the
         * stream, and p moves down over them only when the state gives a word
         * (x >= f * 2^20): a word not taken is overwritten later. A symbol of
         * frequency 0 is noted and refused at the end (its step computes garbage,
         * within bounds). The callers check the room: 2 bytes a symbol, and the
         * states. */
        unsigned absent = 0;
#define ANS32_PUT(k, idx)                                                          \
    do {                                                                           \
        unsigned sym = s[idx];                                                     \
        absent |= tab[sym].f == 0;                                                 \
        uint32_t v = x[k];                                                         \
        unsigned c = v >= tab[sym].limit;                                          \
        p[-2] = (uint8_t)v;                                                        \
        p[-1] = (uint8_t)(v >> 8);                                                 \
        p -= 2 * c;                                                                \
        v >>= 16 * c;                                                              \
        uint32_t q = (uint32_t)((double)v * tab[sym].inv + 0x1p-20);               \
        x[k] = (q << ANS_BITS) + (v - q * tab[sym].f) + tab[sym].start;            \
    } while (0)
        Py_ssize_t i = n;
        for (; i % ANS32_LANES; i--) {
            if (RARE(p - base < 2 + 4 * ANS32_LANES)) goto put_stop;
            ANS32_PUT((i - 1) % ANS32_LANES, i - 1);
        }
#if HAVE_AVX2_LOOPS
        if (wide) {
            uint32_t fstart[256];
            double inv[256];
            for (int k = 0; k < 256; k++) {
                fstart[k] = tab[k].f << 16 | tab[k].start;
                inv[k] = tab[k].inv;
            }
            i = ans32_put_avx2(s, i, x, &p, base, fstart, inv, &absent);
        }
#endif
        for (; i > 0; i -= ANS32_LANES) {
            if (RARE(p - base < 2 * ANS32_LANES + 4 * ANS32_LANES)) goto put_stop;
            /* Unrolled, so that the states stay in registers as far as they fit. */
            UNROLL8 for (int k = ANS32_LANES - 1; k >= 0; k--) ANS32_PUT(k, i - ANS32_LANES + k);
        }
#undef ANS32_PUT
    put_stop:
        missing = absent != 0;
        if (i == 0 && !missing && p - base >= 4 * ANS32_LANES) {
            ans_put_states(&p, x, ANS32_LANES);
            offset = p - base;
        }
        Py_END_ALLOW_THREADS;
        if (missing) {
            PyErr_SetString(PyExc_ValueError, "a symbol has frequency 0");
            goto done;
        }
        result = PyLong_FromSsize_t(offset);
    }
done:
    PyBuffer_Release(&freqs);
    PyBuffer_Release(&src);
    PyBuffer_Release(&out);
    return result;
}

/* One decoding step of state x[k] for symbol i, entry e of the slot table. */
#define ANS32_NEXT(e, xk) (((e) >> 20) + 1) * ((xk) >> ANS_BITS) + (((e) >> 8) & (ANS_M - 1))

/* Symbols i .. n-1 from states x and the stream at *pp, without SIMD: whole
 * rounds of 32 without a branch while 64 bytes are left (a round takes at most
 * 64, and every read stays below *pp + 64), then one checked step at a time.
 * Returns a problem, or NULL. */
static const char *ans32_steps(const uint32_t *table, uint32_t *x, const uint8_t **pp,
                               const uint8_t *end, uint8_t *d, Py_ssize_t i, Py_ssize_t n) {
    const uint8_t *p = *pp;
    for (; i + ANS32_LANES <= n && end - p >= 2 * ANS32_LANES; i += ANS32_LANES) {
        UNROLL8 for (int k = 0; k < ANS32_LANES; k++) {
            uint32_t e = table[x[k] & (ANS_M - 1)];
            d[i + k] = (uint8_t)e;
            uint32_t v = ANS32_NEXT(e, x[k]);
            uint32_t w = LOAD16(p), need = v < ANS32_L;
            x[k] = (v << (16 * need)) | (w & (0u - need));
            p += 2 * need;
        }
    }
    for (; i < n; i++) {
        int k = (int)(i % ANS32_LANES);
        uint32_t e = table[x[k] & (ANS_M - 1)];
        d[i] = (uint8_t)e;
        uint32_t v = ANS32_NEXT(e, x[k]);
        if (v < ANS32_L) {
            if (RARE(end - p < 2)) {
                *pp = p;
                return "ans32 stream ends early";
            }
            v = (v << 16) | LOAD16(p);
            p += 2;
        }
        x[k] = v;
    }
    *pp = p;
    return NULL;
}

#if HAVE_AVX2_LOOPS
/* For each mask of the eight lanes that need a word: which of the words loaded
 * in order goes to each lane (lane j takes word popcount(mask & (2^j - 1))). */
static uint32_t ans32_spread[256][8];

static void ans32_spread_init(void) {
    for (int m = 0; m < 256; m++) {
        int taken = 0;
        for (int j = 0; j < 8; j++) ans32_spread[m][j] = (m >> j & 1) ? (uint32_t)taken++ : 0;
    }
}

/* Whole rounds while 64 bytes of stream are left (four groups of eight lanes,
 * each taking at most 16 bytes, and each reading 16 from where it starts);
 * returns the symbols done, with x and *pp where the rounds left them. */
__attribute__((target("avx2,popcnt"))) static Py_ssize_t ans32_rounds_avx2(
    const uint32_t *table, uint32_t *x, const uint8_t **pp, const uint8_t *end, uint8_t *d,
    Py_ssize_t n) {
    const uint8_t *p = *pp;
    __m256i x0 = _mm256_loadu_si256((const __m256i *)x),
            x1 = _mm256_loadu_si256((const __m256i *)(x + 8)),
            x2 = _mm256_loadu_si256((const __m256i *)(x + 16)),
            x3 = _mm256_loadu_si256((const __m256i *)(x + 24));
    const __m256i slot = _mm256_set1_epi32(ANS_M - 1), one = _mm256_set1_epi32(1),
                  byte = _mm256_set1_epi32(255), zero = _mm256_setzero_si256(),
                  order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    Py_ssize_t i = 0;
#define ANS32_GROUP(X, S)                                                          \
    do {                                                                           \
        __m256i e = _mm256_i32gather_epi32((const int *)table, _mm256_and_si256(X, slot), 4); \
        S = _mm256_and_si256(e, byte);                                             \
        __m256i f = _mm256_add_epi32(_mm256_srli_epi32(e, 20), one);               \
        __m256i v = _mm256_add_epi32(_mm256_mullo_epi32(f, _mm256_srli_epi32(X, ANS_BITS)), \
                                     _mm256_and_si256(_mm256_srli_epi32(e, 8), slot)); \
        __m256i need = _mm256_cmpeq_epi32(_mm256_srli_epi32(v, 16), zero);         \
        unsigned mask = (unsigned)_mm256_movemask_ps(_mm256_castsi256_ps(need));   \
        __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p));    \
        w = _mm256_permutevar8x32_epi32(                                           \
            w, _mm256_loadu_si256((const __m256i *)ans32_spread[mask]));           \
        X = _mm256_blendv_epi8(v, _mm256_or_si256(_mm256_slli_epi32(v, 16), w), need); \
        p += 2 * __builtin_popcount(mask);                                         \
    } while (0)
    for (; i + ANS32_LANES <= n && end - p >= 2 * ANS32_LANES; i += ANS32_LANES) {
        __m256i s0, s1, s2, s3;
        ANS32_GROUP(x0, s0);
        ANS32_GROUP(x1, s1);
        ANS32_GROUP(x2, s2);
        ANS32_GROUP(x3, s3);
        /* The 32 symbols (each below 256) to bytes, in lane order: the packs work
         * within 128-bit halves, and the permutation puts the halves back. */
        __m256i b = _mm256_packus_epi16(_mm256_packus_epi32(s0, s1), _mm256_packus_epi32(s2, s3));
        _mm256_storeu_si256((__m256i *)(d + i), _mm256_permutevar8x32_epi32(b, order));
    }
#undef ANS32_GROUP
    _mm256_storeu_si256((__m256i *)x, x0);
    _mm256_storeu_si256((__m256i *)(x + 8), x1);
    _mm256_storeu_si256((__m256i *)(x + 16), x2);
    _mm256_storeu_si256((__m256i *)(x + 24), x3);
    *pp = p;
    return i;
}
#endif

/* ans32_decode(freqs, src, dst): as ans_decode, for an ans32 plane's states and
 * word stream. ValueError, with dst zeroed, unless the stream is whole words,
 * every state starts at 2^16 or above, no read passes the end, every word is
 * used and every state ends at 2^16. */
static PyObject *ans32_decode(PyObject *self, PyObject *args) {
    Py_buffer freqs, src, dst;
    (void)self;
    if (!PyArg_ParseTuple(args, "y*y*w*", &freqs, &src, &dst)) return NULL;
    PyObject *result = NULL;
    uint32_t f[256], start[256];
    if (!ans_table(&freqs, f, start)) {
        memset(dst.buf, 0, (size_t)dst.len);
        goto done;
    }
    if (src.len < 4 * ANS32_LANES || (src.len - 4 * ANS32_LANES) % 2) {
        memset(dst.buf, 0, (size_t)dst.len);
        PyErr_SetString(PyExc_ValueError,
                        src.len < 4 * ANS32_LANES ? "ans32 plane shorter than its states"
                                                  : "ans32 stream is not whole 16-bit words");
        goto done;
    }
    {
        const uint8_t *p = (const uint8_t *)src.buf, *end = p + src.len;
        uint8_t *d = (uint8_t *)dst.buf;
        Py_ssize_t n = dst.len, i = 0;
        const char *problem = NULL;
        int wide = use_avx2;
        Py_BEGIN_ALLOW_THREADS;
        uint32_t table[ANS_M];
        ans_slots(f, start, table);
        uint32_t x[ANS32_LANES];
        for (int k = 0; k < ANS32_LANES; k++, p += 4) {
            x[k] = LOAD32(p);
            if (x[k] < ANS32_L) problem = "ans32 state out of range";
        }
        if (problem == NULL) {
#if HAVE_AVX2_LOOPS
            if (wide) i = ans32_rounds_avx2(table, x, &p, end, d, n);
#else
            (void)wide;
#endif
            problem = ans32_steps(table, x, &p, end, d, i, n);
        }
        if (problem == NULL && p != end) problem = "ans32 stream has words left over";
        for (int k = 0; k < ANS32_LANES && problem == NULL; k++)
            if (x[k] != ANS32_L) problem = "ans32 final state is not the initial one";
        if (problem != NULL) memset(d, 0, (size_t)n);
        Py_END_ALLOW_THREADS;
        if (problem != NULL) {
            PyErr_SetString(PyExc_ValueError, problem);
            goto done;
        }
        result = Py_NewRef(Py_None);
    }
done:
    PyBuffer_Release(&freqs);
    PyBuffer_Release(&src);
    PyBuffer_Release(&dst);
    return result;
}

/* histogram(buf, counts): counts (256 uint64, native order) of every byte value. */
static PyObject *histogram(PyObject *self, PyObject *args) {
    Py_buffer buf, counts;
    (void)self;
    if (!PyArg_ParseTuple(args, "y*w*", &buf, &counts)) return NULL;
    PyObject *result = NULL;
    if (counts.len != 256 * (Py_ssize_t)sizeof(uint64_t)) {
        PyErr_SetString(PyExc_ValueError, "counts must be 256 uint64");
        goto done;
    }
    {
        const uint8_t *s = (const uint8_t *)buf.buf;
        uint64_t *c = (uint64_t *)counts.buf;
        Py_ssize_t n = buf.len;
        Py_BEGIN_ALLOW_THREADS;
        /* Four interleaved histograms keep the increments independent. */
        uint64_t h[4][256];
        memset(h, 0, sizeof h);
        Py_ssize_t i = 0;
        for (; i + 4 <= n; i += 4) {
            h[0][s[i]]++;
            h[1][s[i + 1]]++;
            h[2][s[i + 2]]++;
            h[3][s[i + 3]]++;
        }
        for (; i < n; i++) h[0][s[i]]++;
        for (int b = 0; b < 256; b++) c[b] = h[0][b] + h[1][b] + h[2][b] + h[3][b];
        Py_END_ALLOW_THREADS;
    }
    result = Py_NewRef(Py_None);
done:
    PyBuffer_Release(&buf);
    PyBuffer_Release(&counts);
    return result;
}

/* ---- bgx encoder decisions: column offsets and the exponent window ---------
 * The encoder's choices for one segment, from samples of its exponents (see
 * bgx.py for what they are and why). They were numpy code; in C they need no
 * temporary arrays and run without the GIL, which the seal's workers were
 * queueing for. tests/unit/test_bgx.py checks them against that numpy code. */

/* Exponent values at least this frequent (in a sample) go into the window;
 * rarer ones are escaped at 2 bytes each plus an H symbol. 2^-9 was the best of
 * the powers of two tried on all-MiniLM-L6-v2 and Whisper tiny.en. */
#define BGX_TAU (1.0 / 512.0)
/* Elements sampled to choose the window: enough to see every exponent that
 * passes BGX_TAU, and cheap next to the transform itself. */
#define BGX_WINDOW_SAMPLE ((Py_ssize_t)1 << 16)
/* Column offsets are considered for segments of at least this many rows, from
 * about this many sampled rows (so at most 255), and kept when they save more
 * than BGX_OFFSET_GAIN bits per element and more than their own P bytes. */
#define BGX_OFFSET_MIN_ROWS 64
#define BGX_OFFSET_SAMPLE_ROWS 128
#define BGX_OFFSET_GAIN 0.02
/* A cheap screen before the offsets are computed: the variance of the columns'
 * mean exponents (in binades squared) must be material. Most segments stop here. */
#define BGX_OFFSET_SCREEN 0.12
/* Periods above this are not worth an offset table (it is stored raw). */
#define BGX_MAX_PERIOD ((Py_ssize_t)1 << 16)
/* Exponents relative to 32 below the median, clipped to 64 values: zeros and
 * other outliers must not stretch the range that the medians are read from. */
#define BGX_OFFSET_SPAN 64

INLINE uint32_t exponent_at(const uint8_t *s, Py_ssize_t i, const kind_t *k) {
    uint32_t v = k->width == 4 ? (uint32_t)s[4 * i] | ((uint32_t)s[4 * i + 1] << 8) |
                                     ((uint32_t)s[4 * i + 2] << 16) | ((uint32_t)s[4 * i + 3] << 24)
                               : (uint32_t)LOAD16(s + 2 * i);
    return (v >> k->mb) & ((1u << k->eb) - 1);
}

/* The value numpy's median gives, truncated to an integer as int() does, of
 * `total` values whose histogram is hist[0..bins). Values are >= 0, so the
 * mean of the two middle ones truncates to its floor. */
static Py_ssize_t histogram_median(const uint64_t *hist, int bins, uint64_t total) {
    uint64_t below = 0, lo_rank = (total - 1) / 2, hi_rank = total / 2;
    Py_ssize_t lo_val = -1, hi_val = -1;
    for (int b = 0; b < bins && hi_val < 0; b++) {
        if (lo_val < 0 && below + hist[b] > lo_rank) lo_val = b;
        if (below + hist[b] > hi_rank) hi_val = b;
        below += hist[b];
    }
    return (lo_val + hi_val) / 2;
}

/* Bits per sampled element of an order-0 code for hist (what bgx.py's bits() gives). */
static double histogram_bits(const uint64_t *hist, int bins, double size) {
    double total = 0.0, bits = 0.0;
    for (int b = 0; b < bins; b++) total += (double)hist[b];
    for (int b = 0; b < bins; b++)
        if (hist[b]) bits += (double)hist[b] * log2(total / (double)hist[b]);
    return bits / size;
}

/* Column offsets (mod 2^EB) into off[0..period), or 0 when they do not pay;
 * -1 when out of memory. */
static int column_offsets(const uint8_t *s, Py_ssize_t n, const kind_t *k, Py_ssize_t period,
                          uint8_t *off) {
    if (period < 2 || period > BGX_MAX_PERIOD) return 0;
    Py_ssize_t rows = n / period;
    if (rows < BGX_OFFSET_MIN_ROWS) return 0;
    Py_ssize_t step = rows / BGX_OFFSET_SAMPLE_ROWS > 1 ? rows / BGX_OFFSET_SAMPLE_ROWS : 1;
    Py_ssize_t sampled = (rows + step - 1) / step; /* at most 255 */
    double *mean = calloc((size_t)period, sizeof *mean);
    uint16_t *counts = calloc((size_t)period * BGX_OFFSET_SPAN, sizeof *counts);
    int16_t *med = calloc((size_t)period, sizeof *med);
    int result = -1;
    if (!mean || !counts || !med) goto out;
    result = 0;
    /* The screen: the variance of the columns' mean exponents. */
    uint64_t ehist[256] = {0};
    for (Py_ssize_t r = 0; r < rows; r += step) {
        const uint8_t *row = s + (size_t)r * period * k->width;
        for (Py_ssize_t j = 0; j < period; j++) {
            uint32_t e = exponent_at(row, j, k);
            mean[j] += e;
            ehist[e]++;
        }
    }
    double mu = 0.0, var = 0.0;
    for (Py_ssize_t j = 0; j < period; j++) {
        mean[j] /= (double)sampled;
        mu += mean[j];
    }
    mu /= (double)period;
    for (Py_ssize_t j = 0; j < period; j++) var += (mean[j] - mu) * (mean[j] - mu);
    var /= (double)period;
    if (var < BGX_OFFSET_SCREEN) goto out;
    /* Each column's median exponent, from bins relative to the sample's median. */
    uint64_t total = (uint64_t)sampled * (uint64_t)period;
    Py_ssize_t e0 = histogram_median(ehist, 256, total) - 32;
    uint64_t rhist[BGX_OFFSET_SPAN] = {0};
    for (Py_ssize_t r = 0; r < rows; r += step) {
        const uint8_t *row = s + (size_t)r * period * k->width;
        for (Py_ssize_t j = 0; j < period; j++) {
            Py_ssize_t d = (Py_ssize_t)exponent_at(row, j, k) - e0;
            d = d < 0 ? 0 : (d > BGX_OFFSET_SPAN - 1 ? BGX_OFFSET_SPAN - 1 : d);
            counts[j * BGX_OFFSET_SPAN + d]++;
            rhist[d]++;
        }
    }
    uint64_t mhist[BGX_OFFSET_SPAN] = {0};
    for (Py_ssize_t j = 0; j < period; j++) {
        const uint16_t *c = counts + j * BGX_OFFSET_SPAN;
        Py_ssize_t acc = 0, b = 0;
        while (2 * (acc + c[b]) < sampled) acc += c[b++];
        med[j] = (int16_t)b;
        mhist[b]++;
    }
    Py_ssize_t mm = histogram_median(mhist, BGX_OFFSET_SPAN, (uint64_t)period);
    int any = 0;
    for (Py_ssize_t j = 0; j < period; j++) {
        med[j] = (int16_t)(med[j] - mm);
        any |= med[j] != 0;
    }
    if (!any) goto out;
    /* The gain: bits per element of the binned exponents, before and after. */
    uint64_t shifted[2 * BGX_OFFSET_SPAN + BGX_OFFSET_SPAN] = {0};
    for (Py_ssize_t j = 0; j < period; j++) {
        const uint16_t *c = counts + j * BGX_OFFSET_SPAN;
        for (int b = 0; b < BGX_OFFSET_SPAN; b++) shifted[b - med[j] + 64] += c[b];
    }
    double size = (double)total;
    double gain = histogram_bits(rhist, BGX_OFFSET_SPAN, size) -
                  histogram_bits(shifted, 3 * BGX_OFFSET_SPAN, size);
    if (gain <= BGX_OFFSET_GAIN || gain * (double)n / 8.0 <= (double)period) goto out;
    uint32_t mask = (1u << k->eb) - 1;
    for (Py_ssize_t j = 0; j < period; j++) off[j] = (uint8_t)((uint32_t)med[j] & mask);
    result = 1;
out:
    free(mean);
    free(counts);
    free(med);
    return result;
}

/* The exponent window (lo, span) of a sample of the segment's exponents, taken
 * relative to the column offsets when there are any. */
static void exponent_window(const uint8_t *s, Py_ssize_t n, const kind_t *k, const uint8_t *off,
                            Py_ssize_t p, int *lo_out, int *span_out) {
    int nb = 1 << k->eb;
    uint64_t hist[256] = {0}, total = 0;
    Py_ssize_t step = n / BGX_WINDOW_SAMPLE > 1 ? n / BGX_WINDOW_SAMPLE : 1;
    for (Py_ssize_t i = 0; i < n; i += step, total++) {
        uint32_t e = exponent_at(s, i, k);
        if (p) e = (e - off[i % p]) & (uint32_t)(nb - 1);
        hist[e]++;
    }
    double floor_count = BGX_TAU * (double)(total ? total : 1);
    if (floor_count < 1.0) floor_count = 1.0;
    int lo = -1, hi = -1;
    for (int b = 0; b < nb; b++)
        if ((double)hist[b] >= floor_count) {
            if (lo < 0) lo = b;
            hi = b + 1;
        }
    if (lo < 0) /* no sample (cannot happen for a non-empty segment): any value seen */
        for (int b = 0; b < nb; b++)
            if (hist[b]) {
                if (lo < 0) lo = b;
                hi = b + 1;
            }
    if (lo < 0) {
        *lo_out = 0;
        *span_out = 1;
        return;
    }
    if (hi - lo > 31) {
        /* The 31 consecutive values that cover most of the sample (the first such). */
        uint64_t run = 0, best = 0;
        for (int b = 0; b < 31; b++) run += hist[b];
        best = run;
        lo = 0;
        for (int b = 1; b + 31 <= nb; b++) {
            run += hist[b + 30];
            run -= hist[b - 1];
            if (run > best) best = run, lo = b;
        }
        hi = lo + 31;
    }
    *lo_out = lo;
    *span_out = hi - lo;
}

/* bgx_analyze(src, kind, period) -> (lo, span, offsets): the encoder's window,
 * and its column offsets (b"" when there are none) for a segment of rows of
 * `period` elements (0: not a matrix). */
static PyObject *bgx_analyze(PyObject *self, PyObject *args) {
    Py_buffer src;
    int kind_code;
    Py_ssize_t period;
    (void)self;
    if (!PyArg_ParseTuple(args, "y*in", &src, &kind_code, &period)) return NULL;
    PyObject *result = NULL, *offsets = NULL;
    const kind_t *k;
    if (!get_kind(kind_code, &k)) goto done;
    if (src.len % k->width || period < 0) {
        PyErr_SetString(PyExc_ValueError, "bad segment length or period");
        goto done;
    }
    {
        Py_ssize_t n = src.len / k->width;
        Py_ssize_t room = period >= 2 && period <= BGX_MAX_PERIOD ? period : 0;
        offsets = PyBytes_FromStringAndSize(NULL, room);
        if (offsets == NULL) goto done;
        uint8_t *off = (uint8_t *)PyBytes_AS_STRING(offsets);
        const uint8_t *s = (const uint8_t *)src.buf;
        int found = 0, lo = 0, span = 1;
        Py_BEGIN_ALLOW_THREADS;
        found = room ? column_offsets(s, n, k, period, off) : 0;
        if (found >= 0) exponent_window(s, n, k, off, found > 0 ? period : 0, &lo, &span);
        Py_END_ALLOW_THREADS;
        if (found < 0) {
            PyErr_NoMemory();
            goto done;
        }
        if (found == 0) Py_SETREF(offsets, PyBytes_FromStringAndSize(NULL, 0));
        if (offsets != NULL) result = Py_BuildValue("iiO", lo, span, offsets);
    }
done:
    Py_XDECREF(offsets);
    PyBuffer_Release(&src);
    return result;
}

/* ans_quantize(counts) -> freqs: frequencies out of ANS_M (256 little-endian
 * uint16) for 256 symbol counts (native uint64, not all zero). Every symbol
 * that occurs gets at least 1; the rounding error is then settled one step at
 * a time where it costs fewest bits: +1 to the symbol that gains most, or -1
 * from the one (above 1) that loses least, the first such on a tie. This is
 * ans.py's quantize_python, in C so that it runs without the GIL. */
static PyObject *ans_quantize(PyObject *self, PyObject *args) {
    Py_buffer counts;
    (void)self;
    if (!PyArg_ParseTuple(args, "y*", &counts)) return NULL;
    PyObject *result = NULL;
    uint64_t c[256], total = 0;
    if (counts.len != 256 * (Py_ssize_t)sizeof(uint64_t)) {
        PyErr_SetString(PyExc_ValueError, "counts must be 256 uint64");
        goto done;
    }
    memcpy(c, counts.buf, sizeof c);
    for (int s = 0; s < 256; s++) {
        if (c[s] >> 40) { /* keeps c * ANS_M below 2^64; a plane is far shorter */
            PyErr_SetString(PyExc_ValueError, "symbol count out of range");
            goto done;
        }
        total += c[s];
    }
    if (total == 0) {
        PyErr_SetString(PyExc_ValueError, "no symbol to quantize");
        goto done;
    }
    {
        int64_t q[256], diff = ANS_M;
        uint8_t out[512];
        Py_BEGIN_ALLOW_THREADS;
        for (int s = 0; s < 256; s++) {
            uint64_t v = c[s] ? (c[s] * ANS_M + total / 2) / total : 0;
            q[s] = c[s] && v == 0 ? 1 : (int64_t)v;
            diff -= q[s];
        }
        for (; diff > 0; diff--) {
            int best = 0;
            double top = -2.0;
            for (int s = 0; s < 256; s++) {
                double g = c[s] ? (double)c[s] * log2(((double)q[s] + 1.0) / (double)q[s]) : -1.0;
                if (g > top) top = g, best = s;
            }
            q[best]++;
        }
        for (; diff < 0; diff++) {
            int best = 0;
            double low = INFINITY;
            int found = 0;
            for (int s = 0; s < 256; s++) {
                if (q[s] <= 1) continue;
                double l = (double)c[s] * log2((double)q[s] / ((double)q[s] - 1.0));
                if (!found || l < low) low = l, best = s, found = 1;
            }
            q[best]--;
        }
        for (int s = 0; s < 256; s++) {
            out[2 * s] = (uint8_t)q[s];
            out[2 * s + 1] = (uint8_t)(q[s] >> 8);
        }
        Py_END_ALLOW_THREADS;
        result = PyBytes_FromStringAndSize((const char *)out, sizeof out);
    }
done:
    PyBuffer_Release(&counts);
    return result;
}

/* simd(on=-1) -> bool: whether the bgx loops in use are the AVX2 build. With on
 * = 0 or 1, first switch to the baseline or (where the CPU has AVX2) to AVX2:
 * both write the same bytes, and the tests check it. */
static int cpu_has_avx2(void) {
#if HAVE_AVX2_LOOPS
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") != 0;
#else
    return 0;
#endif
}

static PyObject *simd(PyObject *self, PyObject *args) {
    int on = -1;
    (void)self;
    if (!PyArg_ParseTuple(args, "|i", &on)) return NULL;
    if (on >= 0) use_avx2 = on && cpu_has_avx2();
    return PyBool_FromLong(use_avx2);
}

static PyMethodDef methods[] = {
    {"simd", simd, METH_VARARGS, "simd(on=-1) -> bool: the AVX2 bgx loops are in use"},
    {"split", split, METH_VARARGS, "split(src, dst, width, rotate): element bytes to planes"},
    {"merge", merge, METH_VARARGS, "merge(planes, dst, width, rotate): planes to element bytes"},
    {"bgx_split", bgx_split, METH_VARARGS,
     "bgx_split(src, kind, lo, span, offsets, H, L, B1, B0, X) -> escapes"},
    {"pack5", pack5, METH_VARARGS, "pack5(src, dst): bytes below 32 to a p5 plane"},
    {"unpack5", unpack5, METH_VARARGS, "unpack5(src, dst): a p5 plane to bytes"},
    {"entropy", entropy, METH_VARARGS, "entropy(buf, step) -> order-0 entropy of every step-th byte, in bits"},
    {"histogram", histogram, METH_VARARGS, "histogram(buf, counts): byte counts, 256 uint64"},
    {"ans_encode", ans_encode, METH_VARARGS,
     "ans_encode(freqs, src, out) -> offset of the coded plane in out, or -1"},
    {"ans_decode", ans_decode, METH_VARARGS, "ans_decode(freqs, src, dst): an ans plane to bytes"},
    {"ans32_encode", ans32_encode, METH_VARARGS,
     "ans32_encode(freqs, src, out) -> offset of the coded plane in out, or -1"},
    {"ans32_decode", ans32_decode, METH_VARARGS,
     "ans32_decode(freqs, src, dst): an ans32 plane to bytes"},
    {"bgx_analyze", bgx_analyze, METH_VARARGS,
     "bgx_analyze(src, kind, period) -> (lo, span, offsets): the encoder's choices"},
    {"ans_quantize", ans_quantize, METH_VARARGS,
     "ans_quantize(counts) -> 256 little-endian uint16 frequencies out of 4096"},
    {"bgx_merge", bgx_merge, METH_VARARGS,
     "bgx_merge(H, L, B1, B0, X, offsets, dst, kind, lo, span): bgx planes to floats"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_planes", "Byte-plane split and merge for the bg codec.", -1,
    methods,
};

PyMODINIT_FUNC PyInit__planes(void) {
    use_avx2 = cpu_has_avx2();
#if HAVE_AVX2_LOOPS
    ans32_spread_init();
    ans32_gather_init();
#endif
    return PyModule_Create(&module);
}
