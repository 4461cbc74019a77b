/* Unit tests of base64 and SASL PLAIN splitting. */
#include "check.h"
#include "sasl.h"

#include <stdlib.h>

int main(void)
{
    size_t n;
    char *d = sasl_b64_decode("AGFsaWNlAHNlY3JldA==", 20, &n);
    CHECK(d != NULL);
    CHECK_INT(n, 13);
    const char *z, *c, *p;
    CHECK_INT(sasl_plain_split(d, n, &z, &c, &p), 0);
    CHECK(strcmp(z, "") == 0);
    CHECK(strcmp(c, "alice") == 0);
    CHECK(strcmp(p, "secret") == 0);
    free(d);

    CHECK(sasl_b64_decode("not base64!", 11, &n) == NULL);
    d = sasl_b64_decode("=", 1, &n); /* empty initial response */
    CHECK(d && n == 0);
    free(d);

    CHECK_INT(sasl_plain_split("alice", 5, &z, &c, &p), -1);        /* no NUL */
    CHECK_INT(sasl_plain_split("\0\0pw", 4, &z, &c, &p), -1);        /* empty authcid */
    CHECK_INT(sasl_plain_split("a\0b\0c\0d", 7, &z, &c, &p), -1);    /* hidden extra field */
    CHECK_INT(sasl_plain_split("admin\0bob\0pw", 12, &z, &c, &p), 0);
    CHECK(strcmp(z, "admin") == 0 && strcmp(c, "bob") == 0);

    CHECK_INT(sasl_safe_credential("pass\r\nA1 DELETE", 16), 0);
    CHECK_INT(sasl_safe_credential("p\0w", 3), 0);
    CHECK_INT(sasl_safe_credential("p\xc3\xa4ss w", 7), 1);

    char *e = sasl_b64_encode("\0u\0p", 4);
    CHECK(strcmp(e, "AHUAcA==") == 0);
    free(e);
    CHECK_DONE();
}
