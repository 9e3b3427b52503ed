/* The parsing kernel: classify and sum whole lines of the input grammar in one pass, in C.
 *
 * Rule 1: the core (`ck_scan`) is plain C over a byte buffer and its length: no Python, no
 *         allocation, no global state. It reads only bytes in [0, len); every load is checked
 *         against `len` before it is made. It is what the fuzzer (tests/fuzz/) drives.
 * Rule 2: a line is a record by the input rules (service/core/parsing.py holds the same rules in
 *         Python, the reference this kernel is tested against): optional spaces or tabs, an
 *         optional '+' or '-', ASCII digits, optional spaces or tabs, an optional '\r', '\n'.
 *         Blank lines are neither records nor bad records. A line longer than `max_line`
 *         bytes (the '\r' counts, the '\n' does not) is bad whatever it holds.
 * Rule 3: numbers of up to 38 significant digits (below 2^127) are summed here, exactly, into
 *         two 192-bit magnitudes (positive and negative); no count of lines can overflow them.
 *         A longer number stops the scan at its line (`CK_STOP_LONG_NUMBER`), and the caller
 *         converts it exactly and scans on. So do a bad line under `stop_at_bad` and a bad line
 *         whose detail would not fit in the result's fixed table (`CK_STOP_DETAILS_FULL`).
 * Rule 4: three paths, one chosen at run time from what the CPU has (never at build time), or
 *         forced by `set_path`: scalar (always built: line ends found by SWAR words, each line
 *         by `ck_line`), AVX2 and AVX-512 (whole steps of lines checked by bit masks and summed
 *         by vector multiply-adds). The vector paths hand every line they cannot vouch for to
 *         the scalar path's own per-line code, so all paths agree; the fuzzer holds them to it.
 * Rule 5: the Python glue at the end holds the buffer, releases the GIL around the scan only,
 *         and turns the result struct into Python values in one place.
 */

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#if defined(__x86_64__)
#include <cpuid.h>
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

/* --- the vector paths ------------------------------------------------------------------------
 *
 * Each step takes the whole lines in the 64 bytes at a line start. AVX2 or AVX-512 classifies
 * the bytes into bit masks (digit, '\n', sign, blank, '\r'). When the masks show that every
 * line of the step is a record of at most 8 digits or a blank line (the common case, CRLF,
 * '+' and padding included), the step's digits are summed at once by place value: each
 * digit's place is the number of digits after it in its run, and a vector multiply-add
 * weighs every digit by its power of ten. When every line is a record of at most 38 digits
 * (or blank), each run of digits is multiply-added into 4-digit groups that are summed by
 * place in vector lanes, and weighed by their powers of ten only now and then; lines of such
 * wide numbers of digits alone are taken by whole blocks of 64 bytes instead, a line crossing
 * from one block into the next, since a step would leave up to half its bytes. Otherwise each
 * line of the step is checked on its own against its slice of the masks; its digits are
 * combined by multiply-adds, and a line the masks cannot vouch for (bad, blank, too long,
 * wider) goes to `ck_take`, the scalar path's own code, so every path reports bad lines,
 * stops and details alike.
 */

#if CK_HAVE_AVX2
/* LZCNT: where a step ends (its last '\n') is on the chain from one step to the next, and BSR,
 * which the compiler uses without it, takes several cycles where LZCNT takes one. */
#define CK_AVX2_TARGET __attribute__((target("avx2,bmi,bmi2,popcnt,lzcnt")))
#define CK_AVX512_TARGET __attribute__((target("avx512f,avx512bw,avx2,bmi,bmi2,popcnt,lzcnt")))
#define CK_LOOKBACK 128 /* vector lines read up to 48 bytes before their end: start past that */
#define CK_PREFETCH 2048 /* bytes ahead: this far, the bytes arrive before they are needed */
#define CK_FLUSH_STEPS (1u << 20) /* steps summed in 64-bit lanes before they are added up */

typedef struct {
    uint64_t digit, newline, sign, minus, blank, cr;
} ck_masks;

/* A step's digits by place (bit i: byte i): every digit, those in an odd place, those in
 * places 2, 3, 6, 7 and those in places 4 to 7. */
typedef struct {
    uint64_t digit, odd, hundreds, ten_thousands;
    unsigned width; /* bytes of the step's lines */
} ck_places;

/* The bits up to the highest set bit of `newlines` (not 0), that included: a step's lines. */
static inline uint64_t ck_through(uint64_t newlines) {
    return ~0ULL >> __builtin_clzll(newlines);
}

/* What a step's lines (`lines`: the bits up to its last '\n') are, from its masks. */
enum { CK_STEP_LINES, CK_STEP_RUNS, CK_STEP_PLACES };

/* Whether a byte of the step's lines breaks the grammar: each byte must be a digit, a '\n', a
 * blank, a sign right before a digit or a '\r' right before the '\n', and a line may hold one
 * run of digits. Counted in operations: it is the whole cost of a step with CRLF, signs or
 * padding over one of digits alone. */
CK_AVX2_TARGET static inline int ck_misplaced(const ck_masks *m, uint64_t lines) {
    uint64_t d = m->digit, later = d >> 1; /* later: the bytes right before a digit */
    uint64_t placed = d | m->newline | m->blank | (m->sign & later) |
                      (m->cr & (m->newline >> 1));
    /* With every byte placed, only blanks and signs can part two runs of a line. Adding the
     * byte after a run's end to the blank-or-sign bits carries over those that follow it, up
     * to the first byte that is neither: a digit there begins a second run. */
    uint64_t after_ends = (d & ~later) << 1;
    uint64_t second_runs = (after_ends + (m->blank | m->sign)) & d;
    return ((~placed | second_runs) & lines) != 0;
}

/* g[k], the digits followed by at least k more digits, for k = 1, 2, 4, 8. */
typedef struct {
    uint64_t g1, g2, g4, g8;
} ck_runs;

static inline ck_runs ck_runs_of(uint64_t d) {
    ck_runs g;
    g.g1 = d & (d >> 1);
    g.g2 = g.g1 & (g.g1 >> 1);
    g.g4 = g.g2 & (g.g2 >> 2);
    g.g8 = g.g4 & (g.g4 >> 4);
    return g;
}

/* The digits followed by at least 38 more: the first digits of numbers of 39 digits or more. */
static inline uint64_t ck_too_wide(const ck_runs *g) {
    uint64_t g16 = g->g8 & (g->g8 >> 8), g32 = g16 & (g16 >> 16);
    return g32 & (g->g4 >> 32) & (g->g2 >> 36);
}

/* CK_STEP_PLACES if every line is a record of at most 8 digits, none negative, or a blank
 * line (`p` gets the places); CK_STEP_RUNS if every line is a record of at most 38 digits or
 * a blank line; CK_STEP_LINES if a line is anything else. Lines of digits alone (the common
 * step) have nothing else to check. */
CK_AVX2_TARGET static inline int ck_step_kind(const ck_masks *m, uint64_t lines, ck_places *p) {
    uint64_t d = m->digit;
    if ((d | m->newline) != ~0ULL && ck_misplaced(m, lines)) return CK_STEP_LINES;
    ck_runs g = ck_runs_of(d);
    if (g.g8 & lines) /* a number of 9 digits or more: one of 39 or more takes the exact path */
        return ck_too_wide(&g) & lines ? CK_STEP_LINES : CK_STEP_RUNS;
    if (m->minus & lines) return CK_STEP_RUNS;
    uint64_t g3 = g.g2 & (g.g1 >> 2), g5 = g.g4 & (g.g1 >> 4), g6 = g.g4 & (g.g2 >> 4);
    uint64_t g7 = g.g4 & (g3 >> 4);
    p->digit = d & lines;
    p->width = 64 - (unsigned)__builtin_clzll(m->newline);
    p->odd = ((g.g1 & ~g.g2) | (g3 & ~g.g4) | (g5 & ~g6) | g7) & lines;
    p->hundreds = ((g.g2 & ~g.g4) | g6) & lines;
    p->ten_thousands = g.g4 & lines;
    return CK_STEP_PLACES;
}

/* ck_step_kind's kind without the places, for the loop of CK_STEP_RUNS steps: no branch on how
 * wide the numbers are, which is what varies from step to step there (with one, the compiler
 * put the wide case out of line, two jumps a step). */
CK_AVX2_TARGET static inline int ck_run_step_kind(const ck_masks *m, uint64_t lines) {
    uint64_t d = m->digit;
    if ((d | m->newline) != ~0ULL && ck_misplaced(m, lines)) return CK_STEP_LINES;
    ck_runs g = ck_runs_of(d);
    if (ck_too_wide(&g) & lines) return CK_STEP_LINES;
    return (g.g8 | m->minus) & lines ? CK_STEP_RUNS : CK_STEP_PLACES;
}

/* Per 16-byte lane: each digit 0..9 times ten. */
#define CK_TENS 0, 10, 20, 30, 40, 50, 60, 70, 80, 90, 0, 0, 0, 0, 0, 0

/* The 64 byte lanes of a step, all ones where `bits` has a 1: bytes 0..31 and 32..63. */
CK_AVX2_TARGET static inline __attribute__((always_inline)) void
ck_lanes64(uint64_t bits, __m256i *low, __m256i *high) {
    const __m256i select = _mm256_set1_epi64x((long long)0x8040201008040201ULL);
    __m256i v = _mm256_set1_epi64x((long long)bits);
    __m256i a = _mm256_shuffle_epi8(v, _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1,
                                                        1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3,
                                                        3, 3, 3, 3));
    __m256i b = _mm256_shuffle_epi8(v, _mm256_setr_epi8(4, 4, 4, 4, 4, 4, 4, 4, 5, 5, 5, 5, 5, 5,
                                                        5, 5, 6, 6, 6, 6, 6, 6, 6, 6, 7, 7, 7, 7,
                                                        7, 7, 7, 7));
    *low = _mm256_cmpeq_epi8(_mm256_and_si256(a, select), select);
    *high = _mm256_cmpeq_epi8(_mm256_and_si256(b, select), select);
}

/* 64 bytes of 0xFF then 64 zeros: the 32 bytes at `ck_prefix + 64 - n` keep the first n. */
static const uint8_t ck_prefix[128] = {
    255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255,
    255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255,
    255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255,
    255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255,
};

/* The sum of 32 digits weighed by place, in four 64-bit lanes: a digit times 1 or 10 (odd
 * places), pairs times 1 or 100, then quads times 1 or 10000; the places as byte lanes. */
CK_AVX2_TARGET static inline __attribute__((always_inline)) __m256i
ck_weigh_avx2(const uint8_t *p, const uint8_t *keep, __m256i odd, __m256i hundreds, __m256i top) {
    __m256i x = _mm256_sub_epi8(_mm256_loadu_si256((const __m256i *)p), _mm256_set1_epi8('0'));
    __m256i digit = _mm256_cmpeq_epi8(_mm256_min_epu8(x, _mm256_set1_epi8(9)), x);
    x = _mm256_and_si256(x, _mm256_and_si256(digit, _mm256_loadu_si256((const __m256i *)keep)));
    /* x * 10 in odd places, looked up (each 16-byte lane holds the table) */
    __m256i tens = _mm256_shuffle_epi8(_mm256_setr_epi8(CK_TENS, CK_TENS), x);
    x = _mm256_blendv_epi8(x, tens, odd);
    __m256i weight = _mm256_add_epi8(_mm256_set1_epi8(1),
                                     _mm256_and_si256(hundreds, _mm256_set1_epi8(99)));
    __m256i all = _mm256_maddubs_epi16(x, weight); /* <= 18000 */
    __m256i upper = _mm256_maddubs_epi16(_mm256_and_si256(top, x), weight);
    __m256i sum = _mm256_add_epi32(_mm256_madd_epi16(all, _mm256_set1_epi16(1)),
                                   _mm256_madd_epi16(upper, _mm256_set1_epi16(9999)));
    return _mm256_add_epi64(_mm256_unpacklo_epi32(sum, _mm256_setzero_si256()),
                            _mm256_unpackhi_epi32(sum, _mm256_setzero_si256()));
}

CK_AVX2_TARGET static inline __attribute__((always_inline)) __m256i
ck_sum_avx2(const uint8_t *p, const ck_places *w) {
    __m256i odd[2], hundreds[2], top[2];
    ck_lanes64(w->odd, &odd[0], &odd[1]);
    ck_lanes64(w->hundreds, &hundreds[0], &hundreds[1]);
    ck_lanes64(w->ten_thousands, &top[0], &top[1]);
    const uint8_t *keep = ck_prefix + 64 - w->width;
    return _mm256_add_epi64(ck_weigh_avx2(p, keep, odd[0], hundreds[0], top[0]),
                            ck_weigh_avx2(p + 32, keep + 32, odd[1], hundreds[1], top[1]));
}

CK_AVX512_TARGET static inline __attribute__((always_inline)) __m256i
ck_sum_avx512(const uint8_t *p, const ck_places *w) {
    __m512i x = _mm512_maskz_sub_epi8(w->digit, _mm512_loadu_si512((const void *)p),
                                      _mm512_set1_epi8('0'));
    __m512i tens = _mm512_shuffle_epi8(
        _mm512_broadcast_i32x4(_mm_setr_epi8(CK_TENS)), x);
    x = _mm512_mask_blend_epi8(w->odd, x, tens);
    __m512i weight = _mm512_mask_blend_epi8(w->hundreds, _mm512_set1_epi8(1),
                                            _mm512_set1_epi8(100));
    __m512i low = _mm512_maddubs_epi16(_mm512_maskz_mov_epi8(~w->ten_thousands, x), weight);
    __m512i upper = _mm512_maddubs_epi16(_mm512_maskz_mov_epi8(w->ten_thousands, x), weight);
    __m512i sum = _mm512_add_epi32(_mm512_madd_epi16(low, _mm512_set1_epi16(1)),
                                   _mm512_madd_epi16(upper, _mm512_set1_epi16(10000)));
    sum = _mm512_add_epi64(_mm512_unpacklo_epi32(sum, _mm512_setzero_si512()),
                           _mm512_unpackhi_epi32(sum, _mm512_setzero_si512()));
    return _mm256_add_epi64(_mm512_castsi512_si256(sum), _mm512_extracti64x4_epi64(sum, 1));
}

static inline void ck_add_lanes(ck_sum *sum, const uint64_t lanes[4]) {
    ck_add(sum, (unsigned __int128)lanes[0] + lanes[1] + lanes[2] + lanes[3]);
}

/* 32 zero bytes then 32 0xFF: the 16 bytes at `ck_keep + 16 + n`, or the 32 at `ck_keep + n`,
 * keep the last n lanes of a vector and zero the others. */
static const uint8_t ck_keep[64] = {
    0,    0,    0,    0,    0,    0,    0,    0,    0,    0,    0,    0,    0,    0,    0,    0,
    0,    0,    0,    0,    0,    0,    0,    0,    0,    0,    0,    0,    0,    0,    0,    0,
    0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF,
    0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF,
};

/* The value of the n (0..16) digits ending at q[-1], all known to be digits (q - 16 readable).
 * Digits to 0..9, the lanes before them zeroed, then pairs, quads and octets multiply-added. */
CK_AVX2_TARGET static inline uint64_t ck_digits16(const uint8_t *q, size_t n) {
    __m128i x = _mm_sub_epi8(_mm_loadu_si128((const __m128i *)(q - 16)), _mm_set1_epi8('0'));
    x = _mm_and_si128(x, _mm_loadu_si128((const __m128i *)(ck_keep + 16 + n)));
    x = _mm_maddubs_epi16(x, _mm_set1_epi16(0x010A)); /* bytes 10, 1 */
    x = _mm_madd_epi16(x, _mm_set1_epi32(0x00010064)); /* words 100, 1 */
    x = _mm_packus_epi32(x, x);
    x = _mm_madd_epi16(x, _mm_set1_epi32(0x00012710)); /* words 10000, 1 */
    uint64_t octets = (uint64_t)_mm_cvtsi128_si64(x); /* the first 8 digits low, the last 8 high */
    return (octets & 0xFFFFFFFF) * 100000000ULL + (octets >> 32);
}

/* The value of the n (1..38) digits ending at q[-1], all known to be digits (q - 48 readable). */
CK_AVX2_TARGET static inline unsigned __int128 ck_digits38(const uint8_t *q, size_t n) {
    if (n <= 16) return ck_digits16(q, n);
    size_t wide = n < 32 ? n : 32, front = n - wide; /* no branch on the width: it varies */
    __m256i x = _mm256_sub_epi8(_mm256_loadu_si256((const __m256i *)(q - 32)),
                                _mm256_set1_epi8('0'));
    x = _mm256_and_si256(x, _mm256_loadu_si256((const __m256i *)(ck_keep + wide)));
    x = _mm256_maddubs_epi16(x, _mm256_set1_epi16(0x010A));
    x = _mm256_madd_epi16(x, _mm256_set1_epi32(0x00010064));
    x = _mm256_packus_epi32(x, x);
    x = _mm256_madd_epi16(x, _mm256_set1_epi32(0x00012710));
    uint64_t high = (uint64_t)_mm_cvtsi128_si64(_mm256_castsi256_si128(x));
    uint64_t low = (uint64_t)_mm_cvtsi128_si64(_mm256_extracti128_si256(x, 1));
    unsigned __int128 value =
        (unsigned __int128)((high & 0xFFFFFFFF) * 100000000ULL + (high >> 32)) *
            10000000000000000ULL +
        ((low & 0xFFFFFFFF) * 100000000ULL + (low >> 32));
    /* 0 to 6 more digits in front: 10^6 * 10^32 < 2^127 */
    unsigned __int128 top = ck_digits16(q - 32, front);
    return value + top * ((unsigned __int128)10000000000000000ULL * 10000000000000000ULL);
}

/* --- the runs of a CK_STEP_RUNS step, summed by quads ------------------------------------
 *
 * A run of n (1..38) digits is loaded as the 64 bytes that end with it, the bytes before it
 * zeroed, and multiply-added into 16 quads (4-digit groups, 0..9999): lane j holds the digits of
 * places 4k..4k+3, k = 15 - j. The quads of every run are added into 32-bit lanes, those of a
 * negative run into lanes of their own, and only now and then weighed by 10^4k into the
 * 192-bit sums: a run costs a few vector instructions and no multiplication of wide integers. */
#define CK_QUAD_FLUSH_RUNS (1u << 17) /* runs added between flushes: 2^17 * 9999 < 2^31 */

/* 10^4k for k = 0..9: the weight of lane 15 - k. Lanes 0..5 (places 40 and up) stay 0. */
static const unsigned __int128 ck_quad_weight[10] = {
    1ULL,
    10000ULL,
    100000000ULL,
    1000000000000ULL,
    10000000000000000ULL,
    (unsigned __int128)10000000000000000ULL * 10000ULL,
    (unsigned __int128)10000000000000000ULL * 100000000ULL,
    (unsigned __int128)10000000000000000ULL * 1000000000000ULL,
    (unsigned __int128)10000000000000000ULL * 10000000000000000ULL,
    (unsigned __int128)10000000000000000ULL * 10000000000000000ULL * 10000ULL,
};

/* sum += a * w, where a * w < 2^192. */
static inline void ck_add_product(ck_sum *sum, uint64_t a, unsigned __int128 w) {
    unsigned __int128 low = (unsigned __int128)a * (uint64_t)w;
    unsigned __int128 high = (unsigned __int128)a * (uint64_t)(w >> 64); /* times 2^64 */
    ck_add(sum, low);
    ck_add(sum, (unsigned __int128)(uint64_t)high << 64);
    sum->high += (uint64_t)(high >> 64);
}

/* Add 16 lanes of quads (lane j: places 4(15 - j) and up) into a 192-bit sum. */
static inline void ck_add_quads(ck_sum *sum, const uint32_t lanes[16]) {
    for (unsigned k = 0; k < 10; k++)
        if (lanes[15 - k]) ck_add_product(sum, lanes[15 - k], ck_quad_weight[k]);
}

/* Each run of digits of a CK_STEP_RUNS step at `base` (`runs` gets how many): QUADS(q, n,
 * minus) adds the run of n digits ending at q[-1], minus 1 when a '-' is right before it. Runs
 * are taken two at a time with no branch (a step of wide numbers holds one or two,
 * unpredictably): a run that is not there is added as no digits (n = 0), from bytes before the
 * step, which are readable. */
#define CK_FOR_EACH_RUN(buf, base, m, lines, runs, QUADS)                                      \
    do {                                                                                    \
        uint64_t d_ = (m)->digit & (lines);                                                 \
        uint64_t starts_ = d_ & ~(d_ << 1), ends_ = d_ & ~(d_ >> 1);                        \
        uint64_t negative_ = starts_ & ((m)->minus << 1); /* runs right after a '-' */       \
        runs = (unsigned)__builtin_popcountll(ends_);                                       \
        do {                                                                                \
            CK_NEXT_RUN(buf, base, starts_, ends_, negative_, QUADS);                       \
            CK_NEXT_RUN(buf, base, starts_, ends_, negative_, QUADS);                       \
        } while (ends_);                                                                    \
    } while (0)

#define CK_NEXT_RUN(buf, base, starts, ends, negative, QUADS)                                  \
    do {                                                                                    \
        unsigned a_ = (unsigned)_tzcnt_u64(starts) & 63, b_ = (unsigned)_tzcnt_u64(ends) & 63; \
        size_t n_ = (size_t)(b_ + 1 - a_) & (size_t)(0 - (uint64_t)((ends) != 0));        \
        QUADS((buf) + (base) + b_ + 1, n_, ((negative) >> a_) & 1);                         \
        starts = _blsr_u64(starts);                                                         \
        ends = _blsr_u64(ends);                                                             \
    } while (0)

/* The lanes of quads of the AVX2 path: lanes 0..7 and 8..15, of positive and negative runs. */
typedef struct {
    __m256i front, back, minus_front, minus_back;
} ck_quads_avx2;

/* The quads of the n (0..38) digits ending at q[-1] (q - 64 readable), added into `into`. */
CK_AVX2_TARGET static inline __attribute__((always_inline)) void
ck_run_quads_avx2(ck_quads_avx2 *into, const uint8_t *q, size_t n, uint64_t minus) {
    size_t low = n < 32 ? n : 32, high = n - low;
    const __m256i zero = _mm256_set1_epi8('0'), pairs = _mm256_set1_epi16(0x010A);
    const __m256i quads = _mm256_set1_epi32(0x00010064);
    __m256i negative = _mm256_set1_epi32(-(int32_t)minus); /* all ones for a negative run */
    __m256i x = _mm256_sub_epi8(_mm256_loadu_si256((const __m256i *)(q - 32)), zero);
    __m256i y = _mm256_sub_epi8(_mm256_loadu_si256((const __m256i *)(q - 64)), zero);
    x = _mm256_and_si256(x, _mm256_loadu_si256((const __m256i *)(ck_keep + low)));
    y = _mm256_and_si256(y, _mm256_loadu_si256((const __m256i *)(ck_keep + high)));
    x = _mm256_madd_epi16(_mm256_maddubs_epi16(x, pairs), quads);
    y = _mm256_madd_epi16(_mm256_maddubs_epi16(y, pairs), quads);
    into->back = _mm256_add_epi32(into->back, _mm256_andnot_si256(negative, x));
    into->front = _mm256_add_epi32(into->front, _mm256_andnot_si256(negative, y));
    into->minus_back = _mm256_add_epi32(into->minus_back, _mm256_and_si256(negative, x));
    into->minus_front = _mm256_add_epi32(into->minus_front, _mm256_and_si256(negative, y));
}

CK_AVX2_TARGET static inline __attribute__((always_inline)) void
ck_flush_quads_avx2(ck_quads_avx2 *q, ck_state *st) {
    uint32_t lanes[16];
    _mm256_storeu_si256((__m256i *)lanes, q->front);
    _mm256_storeu_si256((__m256i *)(lanes + 8), q->back);
    ck_add_quads(&st->positive, lanes);
    _mm256_storeu_si256((__m256i *)lanes, q->minus_front);
    _mm256_storeu_si256((__m256i *)(lanes + 8), q->minus_back);
    ck_add_quads(&st->negative, lanes);
    q->front = q->back = q->minus_front = q->minus_back = _mm256_setzero_si256();
}

/* The lanes of quads of the AVX-512 path, of positive and negative runs. */
typedef struct {
    __m512i plus, minus;
} ck_quads_avx512;

CK_AVX512_TARGET static inline __attribute__((always_inline)) void
ck_run_quads_avx512(ck_quads_avx512 *into, const uint8_t *q, size_t n, uint64_t minus) {
    __mmask64 keep = ~(~0ULL >> n); /* the last n bytes */
    __mmask16 negative = (__mmask16)(0 - minus);
    __m512i x = _mm512_maskz_sub_epi8(keep, _mm512_loadu_si512((const void *)(q - 64)),
                                      _mm512_set1_epi8('0'));
    x = _mm512_madd_epi16(_mm512_maddubs_epi16(x, _mm512_set1_epi16(0x010A)),
                          _mm512_set1_epi32(0x00010064));
    into->plus = _mm512_mask_add_epi32(into->plus, (__mmask16)~negative, into->plus, x);
    into->minus = _mm512_mask_add_epi32(into->minus, negative, into->minus, x);
}

CK_AVX512_TARGET static inline __attribute__((always_inline)) void
ck_flush_quads_avx512(ck_quads_avx512 *q, ck_state *st) {
    uint32_t lanes[16];
    _mm512_storeu_si512((void *)lanes, q->plus);
    ck_add_quads(&st->positive, lanes);
    _mm512_storeu_si512((void *)lanes, q->minus);
    ck_add_quads(&st->negative, lanes);
    q->plus = q->minus = _mm512_setzero_si512();
}

/* Take the line buf[s..s+len) if it is a record the masks (bit 0: buf[s]) vouch for: 1 if it
 * was counted and added, 0 if it must go to the exact path. Requires s >= CK_LOOKBACK. */
CK_AVX2_TARGET static inline int ck_vector_line(const uint8_t *buf, size_t s, size_t len,
                                                const ck_masks *m, size_t max_line,
                                                ck_state *st) {
    if (len - 1 >= 63 || len > max_line) return 0; /* blank (len 0), long, or too long */
    uint64_t line = (1ULL << len) - 1;
    uint64_t digits = m->digit & line;
    if (digits == 0) return 0;
    unsigned a = (unsigned)__builtin_ctzll(digits), b = 64 - (unsigned)__builtin_clzll(digits);
    uint64_t before = (1ULL << a) - 1, through = (1ULL << b) - 1;
    if (digits != (through & ~before) || b - a > CK_MAX_DIGITS) return 0; /* not one run */
    uint64_t sign = m->sign & (before ^ (before >> 1)); /* only right before the digits */
    uint64_t cr = m->cr & (1ULL << (len - 1));          /* only as the last byte */
    if ((before & ~(m->blank | sign)) | (line & ~through & ~(m->blank | cr))) return 0;
    ck_add((m->minus & sign) ? &st->negative : &st->positive, ck_digits38(buf + s + b, b - a));
    st->records++;
    st->lines++;
    return 1;
}

/* The lines of one step (at `base`, masks `m`, '\n's `newlines`) one by one: by their masks,
 * or by the exact path. */
CK_AVX2_TARGET static inline int ck_vector_lines(const uint8_t *buf, size_t base, uint64_t newlines,
                                                 const ck_masks *m, size_t *line_start,
                                                 const ck_options *o, ck_state *st,
                                                 ck_result *r) {
    while (newlines) {
        size_t s = *line_start, e = base + (size_t)__builtin_ctzll(newlines);
        newlines &= newlines - 1;
        unsigned shift = (unsigned)(s - base);
        ck_masks line = {m->digit >> shift, 0,           m->sign >> shift, m->minus >> shift,
                         m->blank >> shift, m->cr >> shift};
        if (!ck_vector_line(buf, s, e - s, &line, o->max_line, st)) {
            int stop = ck_take(buf, s, e, o, st, r);
            if (stop != CK_STOP_END) return stop;
        }
        *line_start = e + 1;
    }
    return CK_STOP_END;
}

/* The lines ending at the '\n's of `newlines` (block at `base`), by the exact path alone. */
static inline int ck_exact_block(const uint8_t *buf, size_t base, uint64_t newlines,
                                 size_t *line_start, const ck_options *o, ck_state *st,
                                 ck_result *r) {
    while (newlines) {
        size_t e = base + (size_t)__builtin_ctzll(newlines);
        newlines &= newlines - 1;
        int stop = ck_take(buf, *line_start, e, o, st, r);
        if (stop != CK_STOP_END) return stop;
        *line_start = e + 1;
    }
    return CK_STOP_END;
}

static inline void ck_finish(const ck_state *st, size_t line_start, int stop, ck_result *r) {
    r->stop = stop;
    r->end = line_start;
    r->lines = st->lines;
    r->records = st->records;
    r->bad_records = st->bad_records;
    r->details = st->details;
    ck_store(&st->positive, r->positive);
    ck_store(&st->negative, r->negative);
}

/* The steps from `s` on that the masks vouch for whole (every line a record of at most 38
 * digits, or blank), summed into `st`; where it stopped is returned: at a step it does not take,
 * less than a step before `len`, or when its lanes are due to be flushed (the caller calls it
 * again). A function of its own with no call on its way: its lanes stay in registers, where a
 * loop that also held the exact path's calls kept them in memory, a store and a load a step.
 * CLASSIFY makes a step's masks, SUM weighs its digits, and QUADS names the path's lanes of
 * quads (ck_quads_QUADS, CK_RUN_QUADS). Requires s >= CK_LOOKBACK, and max_line >= a step. */
#define CK_WHOLE_STEPS(CLASSIFY, SUM, QUADS)                                                \
    __m256i sums = _mm256_setzero_si256();                                                  \
    ck_quads_##QUADS quads;                                                                 \
    memset(&quads, 0, sizeof quads);                                                        \
    unsigned quad_runs = 0; /* runs added to the quads: flushed before they could overflow */ \
    size_t lines = 0, records = 0;                                                          \
    unsigned steps = 0;                                                                     \
    int kind = CK_STEP_PLACES;                                                              \
    ck_masks m;                                                                             \
    ck_places w;                                                                            \
    uint64_t taken;                                                                         \
    /* Two loops, one a kind of step, so each holds only its own lanes in registers. */     \
    while (kind != CK_STEP_LINES) {                                                         \
        while (CK_NEXT_STEP(CLASSIFY, ck_step_kind(&m, taken, &w)) &&                       \
               kind == CK_STEP_PLACES) {                                                    \
            sums = _mm256_add_epi64(sums, SUM(buf + s, &w));                                \
            records += (size_t)__builtin_popcountll(w.digit & ~(w.digit >> 1));             \
            CK_STEP_DONE();                                                                 \
        }                                                                                   \
        if (kind != CK_STEP_RUNS) break;                                                    \
        while (CK_NEXT_STEP(CLASSIFY, ck_run_step_kind(&m, taken)) &&                       \
               kind == CK_STEP_RUNS &&                                                      \
               quad_runs < CK_QUAD_FLUSH_RUNS - 64) {                                       \
            if ((m.digit | m.newline) == ~0ULL) {                                           \
                size_t from = s;                                                            \
                CK_DIGIT_BLOCKS(CLASSIFY, QUADS);                                           \
                if (s != from) continue; /* the step at the open line's start, anew */      \
            }                                                                               \
            unsigned runs;                                                                  \
            CK_FOR_EACH_RUN(buf, s, &m, taken, runs, CK_RUN_##QUADS);                       \
            records += runs;                                                                \
            quad_runs += runs;                                                              \
            CK_STEP_DONE();                                                                 \
        }                                                                                   \
        if (kind == CK_STEP_RUNS) break; /* the quads are due to be flushed */              \
    }                                                                                       \
    uint64_t lanes[4];                                                                      \
    _mm256_storeu_si256((__m256i *)lanes, sums);                                            \
    ck_add_lanes(&st->positive, lanes);                                                     \
    if (quad_runs) ck_flush_quads_##QUADS(&quads, st);                                      \
    st->lines += lines;                                                                     \
    st->records += records;                                                                 \
    return s;

/* Lines of digits alone, 9 to 38 of them, by whole blocks of 64 bytes from the line start `s`:
 * a step ends at its last '\n', which leaves up to half of it for the next step when lines are
 * that wide, where a block leaves nothing. The line still open at a block's end is carried over
 * to the next block as its start. A block is taken only when every byte of it is a digit or a
 * '\n' and no line ending in it is wider than 38 digits; `s` is then the open line's start,
 * where the steps go on. */
#define CK_DIGIT_BLOCKS(CLASSIFY, QUADS)                                                    \
    do {                                                                                    \
        size_t b_ = s;                                                                      \
        while (len - b_ >= CK_BLOCK && quad_runs < CK_QUAD_FLUSH_RUNS - 64) {               \
            __builtin_prefetch(buf + b_ + CK_PREFETCH);                                     \
            CLASSIFY(buf + b_, &m);                                                         \
            uint64_t ends_ = m.newline;                                                     \
            if ((m.digit | ends_) != ~0ULL || ends_ == 0) break;                            \
            size_t open_ = b_ + 64 - (size_t)__builtin_clzll(ends_);                        \
            ck_runs g_ = ck_runs_of(m.digit);                                               \
            if (b_ + (size_t)__builtin_ctzll(ends_) - s > CK_MAX_DIGITS || ck_too_wide(&g_)) \
                break;                                                                      \
            unsigned ends_count_ = (unsigned)__builtin_popcountll(ends_);                   \
            /* a line is a record when a digit is right before its '\n': bit 0 looks back */ \
            records += (size_t)__builtin_popcountll(ends_ & ((m.digit << 1) | (s < b_)));   \
            lines += ends_count_;                                                           \
            quad_runs += ends_count_;                                                       \
            do {                                                                            \
                CK_NEXT_LINE(buf, b_, ends_, s, CK_RUN_##QUADS);                            \
                CK_NEXT_LINE(buf, b_, ends_, s, CK_RUN_##QUADS);                            \
            } while (ends_);                                                                \
            s = open_;                                                                      \
            b_ += CK_BLOCK;                                                                 \
        }                                                                                   \
    } while (0)

/* The run of digits of the line from `start` to the next '\n' of `ends` (block at `base`) added
 * by QUADS, and `start` moved past it; with no '\n' left, no digits are added (n = 0). */
#define CK_NEXT_LINE(buf, base, ends, start, QUADS)                                         \
    do {                                                                                    \
        size_t e_ = (base) + ((unsigned)_tzcnt_u64(ends) & 63);                             \
        QUADS((buf) + e_, (e_ - (start)) & (size_t)(0 - (uint64_t)((ends) != 0)), 0);       \
        start = e_ + 1;                                                                     \
        ends = _blsr_u64(ends);                                                             \
    } while (0)

/* Classify the step at `s` into m and taken (its lines' bits), and set kind to KIND (which may
 * fill w): 1. Or 0, kind set to CK_STEP_LINES, when no step is to be taken here: less than a
 * step left, a line longer than a step, or the lanes due to be added up. */
#define CK_NEXT_STEP(CLASSIFY, KIND)                                                        \
    ((steps < CK_FLUSH_STEPS && len - s >= CK_BLOCK &&                                      \
      (__builtin_prefetch(buf + s + CK_PREFETCH), CLASSIFY(buf + s, &m), m.newline != 0) && \
      (taken = ck_through(m.newline), kind = (KIND), 1)) ||                                 \
     (kind = CK_STEP_LINES, 0))

#define CK_STEP_DONE()                                                                      \
    do {                                                                                    \
        lines += (size_t)__builtin_popcountll(m.newline);                                   \
        s += 64 - (size_t)__builtin_clzll(m.newline);                                       \
        steps++;                                                                            \
    } while (0)

/* The scan loop of a vector path: WHOLE takes the steps it can (CK_WHOLE_STEPS), and each step
 * it leaves is taken here: line by line (ck_vector_lines), or by the exact path when the lines
 * are too near the buffer's start for the look-back loads, or longer than a step, and for the
 * last bytes (less than a step). */
#define CK_VECTOR_SCAN(CLASSIFY, WHOLE)                                                     \
    ck_state st = {{0, 0}, {0, 0}, 0, 0, 0, 0};                                             \
    size_t s = start;                                                                       \
    int stop = CK_STOP_END;                                                                 \
    int whole_steps = o->max_line >= CK_BLOCK - 1; /* a step's lines cannot be too long */  \
    r->stop_newline = 0;                                                                    \
    r->stop_reason = 0;                                                                     \
    while (stop == CK_STOP_END && len - s >= CK_BLOCK) {                                    \
        if (whole_steps && s >= CK_LOOKBACK) {                                              \
            s = WHOLE(buf, len, s, &st);                                                    \
            if (len - s < CK_BLOCK) break;                                                  \
        }                                                                                   \
        ck_masks m;                                                                         \
        size_t base = s;                                                                    \
        CLASSIFY(buf + base, &m);                                                           \
        if (m.newline == 0) { /* a line longer than a step */                              \
            const uint8_t *e = memchr(buf + base + CK_BLOCK, '\n', len - base - CK_BLOCK);  \
            if (e == NULL) break; /* no '\n' up to the end: nothing more to take */         \
            stop = ck_exact_block(buf, (size_t)(e - buf), 1, &s, o, &st, r); /* '\n' at e */ \
        } else if (base < CK_LOOKBACK) {                                                    \
            stop = ck_exact_block(buf, base, m.newline, &s, o, &st, r);                     \
        } else {                                                                            \
            ck_places w;                                                                    \
            if (whole_steps && ck_step_kind(&m, ck_through(m.newline), &w) != CK_STEP_LINES) \
                continue; /* left only for a flush of the lanes: WHOLE takes it */          \
            stop = ck_vector_lines(buf, base, m.newline, &m, &s, o, &st, r);                \
        }                                                                                   \
    }                                                                                       \
    if (stop == CK_STOP_END && len - s < CK_BLOCK)                                          \
        stop = ck_exact_block(buf, s, ck_mask_tail(buf + s, len - s), &s, o, &st, r);       \
    ck_finish(&st, s, stop, r);

#define CK_RUN_avx2(q, n, minus) ck_run_quads_avx2(&quads, q, n, minus)
#define CK_RUN_avx512(q, n, minus) ck_run_quads_avx512(&quads, q, n, minus)

#define CK_EQ2(x, c) _mm256_cmpeq_epi8(x, _mm256_set1_epi8(c))
#define CK_EQ512(x, c) _mm512_cmpeq_epi8_mask(x, _mm512_set1_epi8(c))

CK_AVX2_TARGET static inline __attribute__((always_inline)) uint64_t
ck_movemask2(__m256i low, __m256i high) {
    return (uint32_t)_mm256_movemask_epi8(low) |
           (uint64_t)(uint32_t)_mm256_movemask_epi8(high) << 32;
}

CK_AVX2_TARGET static inline __attribute__((always_inline)) void
ck_classify_avx2(const uint8_t *p, ck_masks *m) {
    __m256i x = _mm256_loadu_si256((const __m256i *)p);
    __m256i y = _mm256_loadu_si256((const __m256i *)(p + 32));
    /* A digit, shifted by 128 - '0', is one of the ten lowest signed bytes. */
    __m256i shift = _mm256_set1_epi8((char)(128 - '0')), below = _mm256_set1_epi8(-128 + 10);
    m->digit = ck_movemask2(_mm256_cmpgt_epi8(below, _mm256_add_epi8(x, shift)),
                            _mm256_cmpgt_epi8(below, _mm256_add_epi8(y, shift)));
    m->newline = ck_movemask2(CK_EQ2(x, '\n'), CK_EQ2(y, '\n'));
    /* Each mask costs compares and moves to general registers: those of bytes the step cannot
     * hold are not made. Digits and '\n's are the common step, then blanks and '\r's, taken in
     * one mask: where each of them is right before a '\n' (CRLF endings, or one trailing
     * blank), a blank and a '\r' are alike valid, so `cr` holds them all and `blank` none. */
    m->sign = m->minus = m->blank = m->cr = 0;
    if ((m->digit | m->newline) == ~0ULL) return;
    __m256i crx = CK_EQ2(x, '\r'), cry = CK_EQ2(y, '\r');
    uint64_t loose = ck_movemask2(
        _mm256_or_si256(_mm256_or_si256(CK_EQ2(x, ' '), CK_EQ2(x, '\t')), crx),
        _mm256_or_si256(_mm256_or_si256(CK_EQ2(y, ' '), CK_EQ2(y, '\t')), cry));
    if ((loose & ~(m->newline >> 1)) == 0) {
        m->cr = loose;
    } else {
        m->cr = ck_movemask2(crx, cry);
        m->blank = loose & ~m->cr;
    }
    if ((m->digit | m->newline | loose) == ~0ULL) return;
    m->sign = ck_movemask2(_mm256_or_si256(CK_EQ2(x, '+'), CK_EQ2(x, '-')),
                           _mm256_or_si256(CK_EQ2(y, '+'), CK_EQ2(y, '-')));
    if (m->sign) m->minus = ck_movemask2(CK_EQ2(x, '-'), CK_EQ2(y, '-'));
}

CK_AVX512_TARGET static inline __attribute__((always_inline)) void
ck_classify_avx512(const uint8_t *p, ck_masks *m) {
    __m512i x = _mm512_loadu_si512((const void *)p);
    m->digit = _mm512_cmplt_epu8_mask(_mm512_sub_epi8(x, _mm512_set1_epi8('0')),
                                      _mm512_set1_epi8(10));
    m->newline = CK_EQ512(x, '\n');
    m->minus = CK_EQ512(x, '-');
    m->sign = m->minus | CK_EQ512(x, '+');
    m->blank = CK_EQ512(x, ' ') | CK_EQ512(x, '\t');
    m->cr = CK_EQ512(x, '\r');
}

CK_AVX2_TARGET __attribute__((noinline)) static size_t
ck_whole_steps_avx2(const uint8_t *buf, size_t len, size_t s, ck_state *st) {
    CK_WHOLE_STEPS(ck_classify_avx2, ck_sum_avx2, avx2)
}

CK_AVX2_TARGET static void ck_scan_avx2(const uint8_t *buf, size_t len, size_t start,
                                        const ck_options *o, ck_result *r) {
    CK_VECTOR_SCAN(ck_classify_avx2, ck_whole_steps_avx2)
}

CK_AVX512_TARGET __attribute__((noinline)) static size_t
ck_whole_steps_avx512(const uint8_t *buf, size_t len, size_t s, ck_state *st) {
    CK_WHOLE_STEPS(ck_classify_avx512, ck_sum_avx512, avx512)
}

CK_AVX512_TARGET static void ck_scan_avx512(const uint8_t *buf, size_t len, size_t start,
                                            const ck_options *o, ck_result *r) {
    CK_VECTOR_SCAN(ck_classify_avx512, ck_whole_steps_avx512)
}
#endif

enum { CK_SCALAR = 0, CK_AVX2 = 1, CK_AVX512 = 2, CK_PATHS = 3 };
static const char *const ck_path_names[CK_PATHS] = {"scalar", "avx2", "avx512"};

/* Whether this CPU (and its OS) can run a path; read from the CPU at run time. */
static int ck_has_path(int path) {
    if (path == CK_SCALAR) return 1;
#if CK_HAVE_AVX2
    __builtin_cpu_init();
    unsigned eax, ebx, ecx = 0, edx;
    int lzcnt = __get_cpuid(0x80000001, &eax, &ebx, &ecx, &edx) && (ecx & bit_LZCNT);
    int avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("bmi") &&
               __builtin_cpu_supports("bmi2") && __builtin_cpu_supports("popcnt") && lzcnt;
    if (path == CK_AVX2) return avx2;
    if (path == CK_AVX512)
        return avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw");
#endif
    return 0;
}

/* Scan the lines of buf[start..len) with `path`, one this CPU has (ck_has_path). */
static void ck_scan(const uint8_t *buf, size_t len, size_t start, const ck_options *o,
                    int path, ck_result *r) {
    if (start > len) start = len;
#if CK_HAVE_AVX2
    if (path == CK_AVX2) {
        ck_scan_avx2(buf, len, start, o, r);
        return;
    }
    if (path == CK_AVX512) {
        ck_scan_avx512(buf, len, start, o, r);
        return;
    }
#else
    (void)path;
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

static int ck_path = CK_SCALAR; /* the path `scan` takes: the fastest this CPU has, or forced */

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
    static char *keywords[] = {"data", "start", "max_line_bytes", "stop_at_bad", "details", NULL};
    Py_buffer view;
    Py_ssize_t start, max_line, details;
    int stop_at_bad;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "y*nnpn", keywords, &view, &start, &max_line,
                                     &stop_at_bad, &details))
        return NULL;
    const char *problem = NULL;
    if (start < 0 || start > view.len) problem = "start outside the data";
    else if (max_line < 0 || details < 0) problem = "max_line_bytes and details must be >= 0";
    if (problem != NULL) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, problem);
        return NULL;
    }
    ck_options options = {(size_t)max_line, stop_at_bad, (size_t)details};
    int path = ck_path; /* read with the GIL held: a set_path meanwhile takes the next scan */
    ck_result result;
    Py_BEGIN_ALLOW_THREADS
    ck_scan((const uint8_t *)view.buf, (size_t)view.len, (size_t)start, &options, path, &result);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&view);
    return ck_result_to_python(&result);
}

static PyObject *ck_py_path(PyObject *self, PyObject *unused) {
    (void)self;
    (void)unused;
    return PyUnicode_FromString(ck_path_names[ck_path]);
}

static PyObject *ck_py_set_path(PyObject *self, PyObject *name) {
    (void)self;
    const char *wanted = PyUnicode_Check(name) ? PyUnicode_AsUTF8(name) : NULL;
    if (wanted == NULL) {
        PyErr_Clear();
        PyErr_SetString(PyExc_TypeError, "set_path() takes a path's name");
        return NULL;
    }
    for (int path = 0; path < CK_PATHS; path++) {
        if (strcmp(wanted, ck_path_names[path]) == 0 && ck_has_path(path)) {
            ck_path = path;
            Py_RETURN_NONE;
        }
    }
    PyErr_Format(PyExc_ValueError, "kernel path %R is not available on this CPU", name);
    return NULL;
}

/* Full chunks are read into pooled buffers, but a file's last read and a paced read still
 * allocate up to a few MB, in several threads. glibc hands blocks that large back to the kernel
 * when they are freed (mmap, trim), so each would fault its pages in again. Keeping them makes
 * the next such read reuse them. The reading and parsing threads share one arena, so they
 * share those blocks too. */
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
     "scan(data, start, max_line_bytes, stop_at_bad, details)\n"
     "Classify and sum the whole lines of data[start:] on the current path: (end, lines,\n"
     "records, bad_records, sum, stop, stop_newline, stop_reason, bad), bad as (line, offset,\n"
     "reason) tuples."},
    {"path", ck_py_path, METH_NOARGS,
     "path() -> str\nThe path scan() takes: 'scalar', 'avx2' or 'avx512'."},
    {"set_path", ck_py_set_path, METH_O,
     "set_path(name)\nMake scan() take the named path, one of PATHS (ValueError otherwise);\n"
     "for tests and benchmarks: the default, BEST, is the fastest this CPU has."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef ck_module = {
    PyModuleDef_HEAD_INIT, "_kernel", "The native parsing kernel (service/core/_kernel.c).", -1,
    ck_methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__kernel(void) {
    PyObject *module = PyModule_Create(&ck_module);
    if (module == NULL) return NULL;
    const char *names[CK_PATHS];
    Py_ssize_t count = 0;
    for (int path = 0; path < CK_PATHS; path++) {
        if (!ck_has_path(path)) continue;
        names[count++] = ck_path_names[path];
        ck_path = path; /* the last one this CPU has: the fastest */
    }
    PyObject *paths = PyTuple_New(count);
    for (Py_ssize_t i = 0; paths != NULL && i < count; i++) {
        PyObject *name = PyUnicode_FromString(names[i]);
        if (name == NULL) Py_CLEAR(paths);
        else PyTuple_SET_ITEM(paths, i, name);
    }
    int failed = paths == NULL || PyModule_AddObjectRef(module, "PATHS", paths) < 0;
    Py_XDECREF(paths);
    if (failed ||
        PyModule_AddStringConstant(module, "BEST", ck_path_names[ck_path]) < 0 ||
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
