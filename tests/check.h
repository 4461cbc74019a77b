/* check.h: the few macros the C unit tests need. Each test program exits
 * non-zero when any check failed, which is what ctest looks at. */
#ifndef POSTERN_CHECK_H
#define POSTERN_CHECK_H

#include <stdio.h>
#include <string.h>

static int check_failures, check_count;

#define CHECK(cond)                                                                  \
    do {                                                                             \
        check_count++;                                                               \
        if (!(cond)) {                                                               \
            check_failures++;                                                        \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
        }                                                                            \
    } while (0)

#define CHECK_INT(a, b)                                                                         \
    do {                                                                                        \
        long long a_ = (long long)(a), b_ = (long long)(b);                                     \
        check_count++;                                                                          \
        if (a_ != b_) {                                                                         \
            check_failures++;                                                                   \
            fprintf(stderr, "%s:%d: %s is %lld, expected %lld\n", __FILE__, __LINE__, #a, a_, b_); \
        }                                                                                       \
    } while (0)

#define CHECK_DONE()                                                                  \
    do {                                                                              \
        printf("%d checks, %d failed\n", check_count, check_failures);               \
        return check_failures ? 1 : 0;                                                \
    } while (0)

#endif
