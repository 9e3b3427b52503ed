/* libFuzzer target over the parsing kernel's C core (service/core/_kernel.c), run under
 * AddressSanitizer and UndefinedBehaviorSanitizer by `make fuzz` (and briefly by `make test`).
 *
 * The first 5 bytes of an input choose the options (line limit, stop at bad, details wanted,
 * where the scan starts) and how many bytes of lines of numbers go in front of the rest: the
 * vector paths take lines in steps of 64 bytes past the first 128, so the lead moves the
 * fuzzed lines across every place of a step. Every path this CPU has runs on the same bytes
 * and must give the scalar path's result, which must hold what the caller relies on:
 *   - in a heap block of exactly the buffer's size, so a read one byte past it is caught;
 *   - at several offsets from a 64-byte boundary, so no path depends on alignment;
 *   - cut short at several points, so the last partial step and an unfinished last line are
 *     met at every place.
 * A path this CPU lacks is printed as unfuzzed when the fuzzer starts.
 */

#define CK_NO_PYTHON
#include "../../service/core/_kernel.c"

#include <stdio.h>
#include <stdlib.h>

#if defined(__has_feature)
#if __has_feature(address_sanitizer)
#include <sanitizer/asan_interface.h>
#endif
#endif
#ifndef ASAN_POISON_MEMORY_REGION
#define ASAN_POISON_MEMORY_REGION(address, size) ((void)(address), (void)(size))
#define ASAN_UNPOISON_MEMORY_REGION(address, size) ((void)(address), (void)(size))
#endif

#define CHECK(condition)                                                                  \
    do {                                                                                  \
        if (!(condition)) {                                                               \
            fprintf(stderr, "kernel_fuzz: %s failed (line %d)\n", #condition, __LINE__); \
            abort();                                                                      \
        }                                                                                 \
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

/* Every path this CPU has on buf[0..len) (an exact heap block) against the scalar path. */
static void compare_paths(const uint8_t *buf, size_t len, size_t start, const ck_options *o) {
    ck_result scalar, other;
    ck_scan(buf, len, start, o, CK_SCALAR, &scalar);
    check_result(buf, len, start, o, &scalar);
    for (int path = CK_SCALAR + 1; path < CK_PATHS; path++) {
        if (!ck_has_path(path)) continue;
        ck_scan(buf, len, start, o, path, &other);
        if (!same(&scalar, &other)) {
            fprintf(stderr, "kernel_fuzz: path %s differs from scalar (len %zu, start %zu)\n",
                    ck_path_names[path], len, start);
            abort();
        }
    }
}

/* The same bytes `offset` bytes past a 64-byte boundary, the bytes before them poisoned (the
 * whole 8-byte granules of them: what ASan can mark). */
static void compare_at_offset(const uint8_t *bytes, size_t len, size_t start,
                              const ck_options *o, size_t offset) {
    uint8_t *block = aligned_alloc(64, (offset + len + 63) / 64 * 64);
    CHECK(block != NULL);
    memcpy(block + offset, bytes, len);
    ASAN_POISON_MEMORY_REGION(block, offset);
    compare_paths(block + offset, len, start, o);
    ASAN_UNPOISON_MEMORY_REGION(block, offset);
    free(block);
}

static void compare_copy(const uint8_t *bytes, size_t len, size_t start, const ck_options *o) {
    uint8_t *buf = malloc(len ? len : 1);
    CHECK(buf != NULL);
    memcpy(buf, bytes, len);
    compare_paths(buf, len, start, o);
    free(buf);
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc;
    (void)argv;
    for (int path = 0; path < CK_PATHS; path++)
        fprintf(stderr, "kernel_fuzz: path %s: %s\n", ck_path_names[path],
                path == CK_SCALAR       ? "the reference"
                : ck_has_path(path)     ? "fuzzed against scalar"
                                        : "UNFUZZED, not on this CPU");
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static const char lead_lines[] = "12\n+3\r\n 4 \n-56\n7890\n";
    static uint8_t bytes[256 + 65536];
    if (size < 5 || size - 5 > 65536) return 0;
    ck_options o;
    o.max_line = data[0] & 0x80 ? 4096 : data[0];
    o.stop_at_bad = data[1] & 1;
    o.details = data[2] % (2 * CK_DETAILS + 2);
    size_t lead = data[4];
    for (size_t i = 0; i < lead; i++) bytes[i] = (uint8_t)lead_lines[i % (sizeof lead_lines - 1)];
    memcpy(bytes + lead, data + 5, size - 5);
    size_t len = lead + size - 5;
    size_t start = len ? data[3] % (len + 1) : 0;

    compare_copy(bytes, len, start, &o);
    static const size_t offsets[] = {1, 17, 63};
    for (size_t i = 0; i < sizeof offsets / sizeof offsets[0]; i++)
        compare_at_offset(bytes, len, start, &o, offsets[i]);
    size_t cuts[] = {len / 2, len > 1 ? len - 1 : 0, len > 70 ? len - 70 : 0};
    for (size_t i = 0; i < sizeof cuts / sizeof cuts[0]; i++)
        compare_copy(bytes, cuts[i], start < cuts[i] ? start : cuts[i], &o);
    return 0;
}
