/* libFuzzer target over the parsing kernel's C core (service/core/_kernel.c), run under
 * AddressSanitizer and UndefinedBehaviorSanitizer by `make fuzz` (and briefly by `make test`).
 *
 * The first 4 bytes of an input choose the options (line limit, stop at bad, details wanted,
 * where the scan starts); the rest is the buffer, copied to a heap block of exactly its size so
 * that a read one byte before or past it is caught. Every implementation this CPU has must give
 * the same result, and the result must hold what the caller relies on.
 */

#define CK_NO_PYTHON
#include "../../service/core/_kernel.c"

#include <stdio.h>
#include <stdlib.h>

#define CHECK(condition)                                                            \
    do {                                                                            \
        if (!(condition)) {                                                         \
            fprintf(stderr, "kernel_fuzz: %s failed (line %d)\n", #condition, __LINE__); \
            abort();                                                                \
        }                                                                           \
    } while (0)

static void check_result(const uint8_t *buf, size_t len, size_t start, const ck_options *o,
                         const ck_result *r) {
    CHECK(r->end >= start && r->end <= len);
    CHECK(r->end == start || buf[r->end - 1] == '\n');
    size_t newlines = 0;
    for (size_t i = start; i < r->end; i++) newlines += buf[i] == '\n';
    CHECK(r->lines == newlines);
    CHECK(r->records + r->bad_records <= r->lines);
    CHECK(r->details <= CK_DETAILS && r->details <= o->details && r->details <= r->bad_records);
    for (size_t i = 0; i < r->details; i++) {
        CHECK(r->bad[i].line >= 1 && r->bad[i].line <= r->lines);
        CHECK(r->bad[i].offset >= start && r->bad[i].offset < r->end);
        CHECK(r->bad[i].reason == CK_NOT_AN_INTEGER || r->bad[i].reason == CK_LINE_TOO_LONG);
    }
    if (r->stop == CK_STOP_END) {
        CHECK(memchr(buf + r->end, '\n', len - r->end) == NULL);
    } else {
        CHECK(r->stop_newline >= r->end && r->stop_newline < len);
        CHECK(buf[r->stop_newline] == '\n');
        CHECK(memchr(buf + r->end, '\n', r->stop_newline - r->end) == NULL);
        CHECK(r->stop != CK_STOP_BAD || o->stop_at_bad);
    }
}

static int same(const ck_result *a, const ck_result *b) {
    if (a->end != b->end || a->stop != b->stop || a->lines != b->lines ||
        a->records != b->records || a->bad_records != b->bad_records ||
        a->details != b->details || memcmp(a->positive, b->positive, sizeof a->positive) ||
        memcmp(a->negative, b->negative, sizeof a->negative))
        return 0;
    if (a->stop != CK_STOP_END &&
        (a->stop_newline != b->stop_newline || a->stop_reason != b->stop_reason))
        return 0;
    for (size_t i = 0; i < a->details; i++)
        if (a->bad[i].line != b->bad[i].line || a->bad[i].offset != b->bad[i].offset ||
            a->bad[i].reason != b->bad[i].reason)
            return 0;
    return 1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 4) return 0;
    size_t len = size - 4;
    ck_options o;
    o.max_line = data[0] & 0x80 ? 4096 : data[0];
    o.stop_at_bad = data[1] & 1;
    o.details = data[2] % (2 * CK_DETAILS + 2);
    size_t start = len ? data[3] % (len + 1) : 0;

    uint8_t *buf = malloc(len ? len : 1);
    CHECK(buf != NULL);
    memcpy(buf, data + 4, len);
    ck_result scalar, other;
    ck_scan(buf, len, start, &o, CK_SCALAR, &scalar);
    check_result(buf, len, start, &o, &scalar);
    if (ck_has_avx2()) {
        ck_scan(buf, len, start, &o, CK_AVX2, &other);
        CHECK(same(&scalar, &other));
    }
    free(buf);
    return 0;
}
