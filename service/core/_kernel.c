/* The parsing kernel: classify and sum whole lines of the input grammar in one pass, in C.
 *
 * Rule 1: the core (`ck_scan`) is plain C over a byte buffer and its length: no Python, no
 *         allocation, no global state. It reads only bytes in [0, len); every load is checked
 *         against `len` before it is made. It is what the fuzzer (tests/fuzz/) drives.
 * Rule 2: a line is what CONTRACT.md "Input" says (service/core/parsing.py holds the same rules in
 *         Python, the reference this kernel is tested against): optional spaces or tabs, an
 *         optional '+' or '-', ASCII digits, optional spaces or tabs, an optional '\r', '\n'.
 *         Blank lines are neither records nor bad records. A line longer than `max_line`
 *         bytes (the '\r' counts, the '\n' does not) is bad whatever it holds.
 * Rule 3: numbers of up to 38 significant digits (below 2^127) are summed here, exactly, into
 *         two 192-bit magnitudes (positive and negative); no count of lines can overflow them.
 *         A longer number stops the scan at its line (`CK_STOP_LONG_NUMBER`), and the caller
 *         converts it exactly and scans on. So do a bad line under `stop_at_bad` and a bad line
 *         whose detail would not fit in the result's fixed table (`CK_STOP_DETAILS_FULL`).
 * Rule 4: line ends are found 64 bytes at a time, as a bit mask: by SWAR words in the scalar
 *         path, always built, or by AVX2 when the CPU has it (chosen at run time, never at
 *         build time). Both paths share the per-line code, so they cannot disagree.
 * Rule 5: the Python glue at the end holds the buffer, releases the GIL around the scan only,
 *         and turns the result struct into Python values in one place.
 */

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define CK_HAVE_AVX2 1
#else
#define CK_HAVE_AVX2 0
#endif

#define CK_DETAILS 32       /* bad records one scan can report; the caller scans on for more */
#define CK_MAX_DIGITS 38    /* 10^38 - 1 < 2^127: fits the 128-bit per-line value */
#define CK_BLOCK 64         /* bytes whose line ends one mask holds */

enum { CK_NOT_AN_INTEGER = 1, CK_LINE_TOO_LONG = 2 };
enum { CK_STOP_END = 0, CK_STOP_LONG_NUMBER = 1, CK_STOP_BAD = 2, CK_STOP_DETAILS_FULL = 3 };
enum { CK_RECORD, CK_BLANK, CK_BAD_TEXT, CK_BAD_LENGTH, CK_LONG };

typedef struct {
    size_t line;   /* 1-based, counted from the scan's start */
    size_t offset; /* the line's first byte, in the buffer */
    int reason;    /* CK_NOT_AN_INTEGER or CK_LINE_TOO_LONG */
} ck_bad;

typedef struct {
    /* Where the scan stopped: just past the last '\n' it took. For a stop other than
     * CK_STOP_END, the start of the line it stopped at (not taken), whose '\n' is at
     * `stop_newline` and whose bad reason (CK_STOP_BAD) is `stop_reason`. */
    size_t end;
    size_t stop_newline;
    int stop;
    int stop_reason;
    size_t lines, records, bad_records;
    uint64_t positive[3], negative[3]; /* magnitudes, 192-bit, least significant limb first */
    size_t details;
    ck_bad bad[CK_DETAILS];
} ck_result;

typedef struct {
    size_t max_line;
    int stop_at_bad;
    size_t details; /* bad records wanted; at most CK_DETAILS are reported per scan */
} ck_options;

/* --- one line ------------------------------------------------------------------------------ */

static inline int ck_blank(uint8_t c) { return c == ' ' || c == '\t'; }

static inline uint64_t ck_load(const uint8_t *p) {
    uint64_t word;
    memcpy(&word, p, sizeof word);
    return word;
}

/* The value of the k (1..8) digits ending at buf[q - 1], or -1 if one is not a digit. */
static inline int64_t ck_chunk(const uint8_t *buf, size_t q, unsigned k) {
    uint64_t word;
    if (q >= 8) {
        word = ck_load(buf + q - 8); /* bytes before the digits are masked off below */
    } else {                        /* too close to the buffer's start for a whole word */
        uint8_t padded[8] = {0};
        memcpy(padded + 8 - k, buf + q - k, k);
        word = ck_load(padded);
    }
    word ^= 0x3030303030303030ULL; /* a digit becomes 0..9 */
    word &= ~0ULL << (8 * (8 - k)); /* the digits are the top k lanes (little-endian) */
    if (((word + 0x7676767676767676ULL) | word) & 0x8080808080808080ULL) return -1;
    /* Eight decimal lanes to one number (the simdjson recipe), most significant digit first. */
    word = word * 10 + (word >> 8);
    word = ((word & 0x000000FF000000FFULL) * 0x000F424000000064ULL +
            ((word >> 16) & 0x000000FF000000FFULL) * 0x0000271000000001ULL) >> 32;
    return (int64_t)(uint32_t)word;
}

/* The value of n (1..38) digits starting at buf[a]; 0 if one is not a digit. */
static inline int ck_digits(const uint8_t *buf, size_t a, size_t n, unsigned __int128 *value) {
    unsigned first = (unsigned)(n - 8 * ((n - 1) / 8));
    size_t q = a + first;
    int64_t chunk = ck_chunk(buf, q, first);
    if (chunk < 0) return 0;
    if (n <= 16) {
        uint64_t small = (uint64_t)chunk;
        if (n > 8) {
            chunk = ck_chunk(buf, q + 8, 8);
            if (chunk < 0) return 0;
            small = small * 100000000ULL + (uint64_t)chunk;
        }
        *value = small;
        return 1;
    }
    unsigned __int128 wide = (uint64_t)chunk;
    for (q += 8; q <= a + n; q += 8) {
        chunk = ck_chunk(buf, q, 8);
        if (chunk < 0) return 0;
        wide = wide * 100000000ULL + (uint64_t)chunk;
    }
    *value = wide;
    return 1;
}

/* The kind of the line buf[s..e) ('\n' at buf[e]); its magnitude and sign for a record. */
static inline int ck_line(const uint8_t *buf, size_t s, size_t e, size_t max_line,
                          unsigned __int128 *value, int *negative) {
    if (e - s > max_line) return CK_BAD_LENGTH;
    if (e - s - 1 < 10 && e >= 9) { /* the common line: a sign, 1 to 8 digits, a '\r' */
        size_t b = e - (buf[e - 1] == '\r');
        *negative = buf[s] == '-';
        size_t a = s + (*negative | (buf[s] == '+'));
        if (b - a - 1 < 8) { /* b >= a always: a line of one byte is not both */
            int64_t chunk = ck_chunk(buf, b, (unsigned)(b - a));
            if (chunk >= 0) {
                *value = (uint64_t)chunk;
                return CK_RECORD;
            }
        }
    }
    size_t a = s, b = e;
    if (b > a && buf[b - 1] == '\r') b--;
    while (b > a && ck_blank(buf[b - 1])) b--;
    while (a < b && ck_blank(buf[a])) a++;
    if (a == b) return CK_BLANK;
    *negative = buf[a] == '-';
    if (buf[a] == '-' || buf[a] == '+') a++;
    size_t n = b - a;
    if (n == 0) return CK_BAD_TEXT;
    while (n > CK_MAX_DIGITS && buf[a] == '0') { /* leading zeros add nothing */
        a++;
        n--;
    }
    if (n > CK_MAX_DIGITS) {
        for (size_t i = a; i < b; i++)
            if (buf[i] < '0' || buf[i] > '9') return CK_BAD_TEXT;
        return CK_LONG;
    }
    return ck_digits(buf, a, n, value) ? CK_RECORD : CK_BAD_TEXT;
}

/* --- the scan ------------------------------------------------------------------------------ */

typedef struct {
    unsigned __int128 low;
    uint64_t high;
} ck_sum;

static inline void ck_add(ck_sum *sum, unsigned __int128 value) {
    sum->low += value;
    sum->high += sum->low < value; /* the carry out of the low 128 bits */
}

/* Bit i set where p[i] == '\n', for the n < 64 bytes at p. */
static inline uint64_t ck_mask_tail(const uint8_t *p, size_t n) {
    uint64_t mask = 0;
    for (size_t i = 0; i < n; i++) mask |= (uint64_t)(p[i] == '\n') << i;
    return mask;
}

/* The high bit of each byte of x that is 0, exactly (no false positives from borrows). */
static inline uint64_t ck_zero_bytes(uint64_t x) {
    uint64_t t = (x & 0x7F7F7F7F7F7F7F7FULL) + 0x7F7F7F7F7F7F7F7FULL;
    return ~(t | x | 0x7F7F7F7F7F7F7F7FULL);
}

/* Bit i set where p[i] == '\n', for the 64 bytes at p, eight bytes a word. */
static inline uint64_t ck_mask_scalar(const uint8_t *p) {
    uint64_t mask = 0;
    for (unsigned w = 0; w < 8; w++) {
        uint64_t t = ck_zero_bytes(ck_load(p + 8 * w) ^ 0x0A0A0A0A0A0A0A0AULL); /* '\n's */
        mask |= (((t >> 7) * 0x0102040810204080ULL) >> 56) << (8 * w);
    }
    return mask;
}

typedef struct {
    ck_sum positive, negative;
    size_t lines, records, bad_records, details;
} ck_state;

/* Take the line buf[s..newline): count it, add it, note it if bad; or say why to stop at it. */
static inline __attribute__((always_inline)) int ck_take(const uint8_t *buf, size_t s,
                                                         size_t newline, const ck_options *o,
                                                         ck_state *st, ck_result *r) {
    unsigned __int128 value = 0;
    int negative = 0;
    int kind = ck_line(buf, s, newline, o->max_line, &value, &negative);
    if (kind == CK_RECORD) {
        if (negative)
            ck_add(&st->negative, value);
        else
            ck_add(&st->positive, value);
        st->records++;
    } else if (kind != CK_BLANK) {
        int reason = kind == CK_BAD_LENGTH ? CK_LINE_TOO_LONG : CK_NOT_AN_INTEGER;
        int wanted = st->details < o->details;
        int stop = kind == CK_LONG                         ? CK_STOP_LONG_NUMBER
                   : o->stop_at_bad                        ? CK_STOP_BAD
                   : wanted && st->details == CK_DETAILS ? CK_STOP_DETAILS_FULL
                                                           : CK_STOP_END;
        if (stop != CK_STOP_END) {
            r->stop_reason = reason;
            r->stop_newline = newline;
            return stop;
        }
        if (wanted && st->details < CK_DETAILS) {
            r->bad[st->details].line = st->lines + 1;
            r->bad[st->details].offset = s;
            r->bad[st->details].reason = reason;
            st->details++;
        }
        st->bad_records++;
    }
    st->lines++;
    return CK_STOP_END;
}

static inline void ck_store(const ck_sum *sum, uint64_t limbs[3]) {
    limbs[0] = (uint64_t)sum->low;
    limbs[1] = (uint64_t)(sum->low >> 64);
    limbs[2] = sum->high;
}

/* The scan loop, instantiated once per way of finding line ends (MASK): fills `r`. */
#define CK_SCAN_BODY(MASK)                                                                  \
    ck_state st = {{0, 0}, {0, 0}, 0, 0, 0, 0};                                             \
    size_t line_start = start;                                                              \
    int stop = CK_STOP_END;                                                                 \
    r->stop_newline = 0;                                                                    \
    r->stop_reason = 0;                                                                     \
    for (size_t base = start; base < len && stop == CK_STOP_END; base += CK_BLOCK) {        \
        uint64_t mask = len - base >= CK_BLOCK ? MASK(buf + base)                           \
                                               : ck_mask_tail(buf + base, len - base);     \
        while (mask) {                                                                      \
            size_t newline = base + (size_t)__builtin_ctzll(mask);                          \
            mask &= mask - 1;                                                               \
            stop = ck_take(buf, line_start, newline, o, &st, r);                            \
            if (stop != CK_STOP_END) break;                                                 \
            line_start = newline + 1;                                                       \
        }                                                                                   \
    }                                                                                       \
    r->stop = stop;                                                                         \
    r->end = line_start;                                                                    \
    r->lines = st.lines;                                                                    \
    r->records = st.records;                                                                \
    r->bad_records = st.bad_records;                                                        \
    r->details = st.details;                                                                \
    ck_store(&st.positive, r->positive);                                                    \
    ck_store(&st.negative, r->negative);

static void ck_scan_scalar(const uint8_t *buf, size_t len, size_t start, const ck_options *o,
                           ck_result *r) {
    CK_SCAN_BODY(ck_mask_scalar)
}

#if CK_HAVE_AVX2
__attribute__((target("avx2"))) static inline uint64_t ck_mask_avx2(const uint8_t *p) {
    const __m256i newline = _mm256_set1_epi8('\n');
    __m256i low = _mm256_loadu_si256((const __m256i *)p);
    __m256i high = _mm256_loadu_si256((const __m256i *)(p + 32));
    uint32_t a = (uint32_t)_mm256_movemask_epi8(_mm256_cmpeq_epi8(low, newline));
    uint32_t b = (uint32_t)_mm256_movemask_epi8(_mm256_cmpeq_epi8(high, newline));
    return (uint64_t)a | (uint64_t)b << 32;
}

__attribute__((target("avx2"))) static void ck_scan_avx2(const uint8_t *buf, size_t len,
                                                         size_t start, const ck_options *o,
                                                         ck_result *r) {
    CK_SCAN_BODY(ck_mask_avx2)
}
#endif

enum { CK_SCALAR = 0, CK_AVX2 = 1 };

static int ck_has_avx2(void) {
#if CK_HAVE_AVX2
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2");
#else
    return 0;
#endif
}

/* Scan the lines of buf[start..len) with the chosen implementation (CK_SCALAR or CK_AVX2). */
static void ck_scan(const uint8_t *buf, size_t len, size_t start, const ck_options *o,
                    int implementation, ck_result *r) {
    if (start > len) start = len;
#if CK_HAVE_AVX2
    if (implementation == CK_AVX2) {
        ck_scan_avx2(buf, len, start, o, r);
        return;
    }
#else
    (void)implementation;
#endif
    ck_scan_scalar(buf, len, start, o, r);
}

/* --- Python -------------------------------------------------------------------------------- */

#ifndef CK_NO_PYTHON
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif

static int ck_best = CK_SCALAR;

/* A signed Python int from a 192-bit two's-complement value, least significant limb first. */
static PyObject *ck_int192(const uint64_t limbs[3]) {
    unsigned char bytes[24];
    for (int limb = 0; limb < 3; limb++)
        for (int i = 0; i < 8; i++) bytes[8 * limb + i] = (unsigned char)(limbs[limb] >> (8 * i));
#if PY_VERSION_HEX >= 0x030D0000
    return PyLong_FromNativeBytes(bytes, sizeof bytes, Py_ASNATIVEBYTES_LITTLE_ENDIAN);
#else
    return _PyLong_FromByteArray(bytes, sizeof bytes, 1, 1);
#endif
}

/* positive - negative, each 192 bits; the difference of two such fits in 192 signed bits. */
static PyObject *ck_sum_of(const ck_result *r) {
    uint64_t difference[3];
    unsigned borrow = 0;
    for (int limb = 0; limb < 3; limb++) {
        uint64_t a = r->positive[limb], b = r->negative[limb];
        difference[limb] = a - b - borrow;
        borrow = (a < b) || (a - b < borrow);
    }
    return ck_int192(difference);
}

static PyObject *ck_result_to_python(const ck_result *r) {
    PyObject *bad = PyTuple_New((Py_ssize_t)r->details);
    if (bad == NULL) return NULL;
    for (size_t i = 0; i < r->details; i++) {
        PyObject *item = Py_BuildValue("(nni)", (Py_ssize_t)r->bad[i].line,
                                       (Py_ssize_t)r->bad[i].offset, r->bad[i].reason);
        if (item == NULL) {
            Py_DECREF(bad);
            return NULL;
        }
        PyTuple_SET_ITEM(bad, i, item);
    }
    PyObject *sum = ck_sum_of(r);
    if (sum == NULL) {
        Py_DECREF(bad);
        return NULL;
    }
    return Py_BuildValue("(nnnnNiniN)", (Py_ssize_t)r->end, (Py_ssize_t)r->lines,
                         (Py_ssize_t)r->records, (Py_ssize_t)r->bad_records, sum, r->stop,
                         (Py_ssize_t)r->stop_newline, r->stop_reason, bad);
}

static PyObject *ck_py_scan(PyObject *self, PyObject *args, PyObject *kwargs) {
    (void)self;
    static char *keywords[] = {"data", "start", "max_line_bytes", "stop_at_bad", "details",
                               "implementation", NULL};
    Py_buffer view;
    Py_ssize_t start, max_line, details;
    int stop_at_bad, implementation = ck_best;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "y*nnpn|$i", keywords, &view, &start,
                                     &max_line, &stop_at_bad, &details, &implementation))
        return NULL;
    const char *problem = NULL;
    if (start < 0 || start > view.len) problem = "start outside the data";
    else if (max_line < 0 || details < 0) problem = "max_line_bytes and details must be >= 0";
    else if (implementation != CK_SCALAR && !(implementation == CK_AVX2 && ck_has_avx2()))
        problem = "implementation not available on this CPU";
    if (problem != NULL) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, problem);
        return NULL;
    }
    ck_options options = {(size_t)max_line, stop_at_bad, (size_t)details};
    ck_result result;
    Py_BEGIN_ALLOW_THREADS
    ck_scan((const uint8_t *)view.buf, (size_t)view.len, (size_t)start, &options,
            implementation, &result);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&view);
    return ck_result_to_python(&result);
}

/* The reader allocates a few MB per chunk, in several threads. glibc hands blocks that large
 * back to the kernel when they are freed (mmap, trim), so every chunk faults its pages in again:
 * a third of the worker's CPU time on a large input. Keeping them makes the next chunk reuse
 * them. The reading and parsing threads share one arena, so they share those blocks too. */
static PyObject *ck_py_reuse_freed_memory(PyObject *self, PyObject *unused) {
    (void)self;
    (void)unused;
#ifdef __GLIBC__
    mallopt(M_MMAP_THRESHOLD, 16 * 1024 * 1024);
    mallopt(M_TRIM_THRESHOLD, 64 * 1024 * 1024);
    mallopt(M_ARENA_MAX, 1); /* one pool: a block freed by one thread serves the next in any */
    Py_RETURN_TRUE;
#else
    Py_RETURN_FALSE;
#endif
}

static PyMethodDef ck_methods[] = {
    {"reuse_freed_memory", ck_py_reuse_freed_memory, METH_NOARGS,
     "reuse_freed_memory() -> bool\n"
     "Keep freed chunk-sized blocks in the process (glibc) instead of faulting them in again;\n"
     "False where the C library is not glibc. For a process that streams a large input."},
    {"scan", (PyCFunction)(void (*)(void))ck_py_scan, METH_VARARGS | METH_KEYWORDS,
     "scan(data, start, max_line_bytes, stop_at_bad, details, *, implementation=best)\n"
     "Classify and sum the whole lines of data[start:]: (end, lines, records, bad_records,\n"
     "sum, stop, stop_newline, stop_reason, bad), bad as (line, offset, reason) tuples."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef ck_module = {
    PyModuleDef_HEAD_INIT, "_kernel", "The native parsing kernel (service/core/_kernel.c).", -1,
    ck_methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__kernel(void) {
    PyObject *module = PyModule_Create(&ck_module);
    if (module == NULL) return NULL;
    ck_best = ck_has_avx2() ? CK_AVX2 : CK_SCALAR;
    PyObject *available = ck_has_avx2() ? Py_BuildValue("(ss)", "scalar", "avx2")
                                        : Py_BuildValue("(s)", "scalar");
    int failed = available == NULL || PyModule_AddObjectRef(module, "IMPLEMENTATIONS", available) < 0;
    Py_XDECREF(available);
    if (failed ||
        PyModule_AddIntConstant(module, "SCALAR", CK_SCALAR) < 0 ||
        PyModule_AddIntConstant(module, "AVX2", CK_AVX2) < 0 ||
        PyModule_AddIntConstant(module, "BEST", ck_best) < 0 ||
        PyModule_AddIntConstant(module, "DETAILS", CK_DETAILS) < 0 ||
        PyModule_AddIntConstant(module, "MAX_DIGITS", CK_MAX_DIGITS) < 0 ||
        PyModule_AddIntConstant(module, "NOT_AN_INTEGER", CK_NOT_AN_INTEGER) < 0 ||
        PyModule_AddIntConstant(module, "LINE_TOO_LONG", CK_LINE_TOO_LONG) < 0 ||
        PyModule_AddIntConstant(module, "STOP_END", CK_STOP_END) < 0 ||
        PyModule_AddIntConstant(module, "STOP_LONG_NUMBER", CK_STOP_LONG_NUMBER) < 0 ||
        PyModule_AddIntConstant(module, "STOP_BAD", CK_STOP_BAD) < 0 ||
        PyModule_AddIntConstant(module, "STOP_DETAILS_FULL", CK_STOP_DETAILS_FULL) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
#endif
