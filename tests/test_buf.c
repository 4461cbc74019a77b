/* Unit tests of the bounded buffer and line splitting. */
#include "buf.h"
#include "check.h"
#include "status.h"

int main(void)
{
    buf_t b;
    buf_init(&b, 8);
    CHECK_INT(buf_append(&b, "abcd", 4), 0);
    CHECK_INT(buf_append(&b, "efgh", 4), 0);
    CHECK_INT(buf_room(&b), 0);
    CHECK_INT(buf_append(&b, "i", 1), PT_TOO_BIG); /* the limit holds */
    buf_consume(&b, 3);
    CHECK_INT(b.len, 5);
    CHECK(memcmp(b.data, "defgh", 5) == 0);
    buf_free(&b);
    CHECK(b.data == NULL);

    /* the high-water mark: what buf_free wipes covers every byte ever
     * held, also when a reader wrote in place and len went down since */
    buf_init(&b, 1024);
    CHECK_INT(buf_reserve(&b, 512), 0);
    memcpy(b.data, "a LOGIN user secret\r\n", 22); /* as a read lands */
    b.len += 22;
    buf_consume(&b, 22);
    CHECK_INT(b.hw, 22);
    buf_append(&b, "b NOOP\r\n", 8);
    buf_clear(&b);
    CHECK_INT(b.hw, 22);
    CHECK_INT(b.len, 0);
    buf_free(&b);
    CHECK_INT(b.hw, 0);

    size_t ll, used;
    CHECK_INT(buf_find_line("abc", 3, &ll, &used), 0);
    CHECK_INT(buf_find_line("abc\r\nx", 6, &ll, &used), 1);
    CHECK_INT(ll, 3);
    CHECK_INT(used, 5);
    CHECK_INT(buf_find_line("ab\nx", 4, &ll, &used), 1); /* bare LF ends a line too */
    CHECK_INT(ll, 2);
    CHECK_INT(used, 3);
    CHECK_DONE();
}
