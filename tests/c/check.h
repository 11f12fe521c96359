/* The C tests' one assertion: CHECK(cond, printf-format, ...) prints "ok"
 * or "FAIL" and the message, and counts; main() prints the totals and
 * exits non-zero on a failure. Flushed at once, so a child that crashes
 * or a test that hangs leaves every result so far on the log. */
#ifndef OSL_PG_TEST_CHECK_H
#define OSL_PG_TEST_CHECK_H

#include <stdio.h>

static int passed, failed;

#define CHECK(cond, ...)                                                      \
    do {                                                                      \
        if (cond) {                                                           \
            passed++;                                                         \
            printf("ok   ");                                                  \
        } else {                                                              \
            failed++;                                                         \
            printf("FAIL ");                                                  \
        }                                                                     \
        printf(__VA_ARGS__);                                                  \
        printf("\n");                                                         \
        fflush(stdout);                                                       \
    } while (0)

#endif
