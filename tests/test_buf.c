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
