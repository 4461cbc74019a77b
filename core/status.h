/* status.h: the one return-code vocabulary of core/.
 *
 * A function that can fail returns an int: zero or more is success (0,
 * or a count such as bytes read or consumed), a negative value is one of
 * the PT_* codes below. A function that returns a pointer returns NULL on
 * failure and says why in an `err` buffer its caller passes. libuv's own
 * negative codes are converted where they are met (uv_err_name for the
 * log) and never travel further. */
#ifndef POSTERN_STATUS_H
#define POSTERN_STATUS_H

enum {
    PT_OK = 0,
    PT_ERROR = -1,    /* failed: the module's error text says why */
    PT_AGAIN = -2,    /* not yet: more input is needed, or a wait */
    PT_EOF = -3,      /* the peer ended cleanly */
    PT_INVALID = -4,  /* malformed input: answer with a protocol error */
    PT_TOO_BIG = -5,  /* over a limit */
    PT_DECLINED = -6, /* the peer declined or cancelled (SASL "*") */
};

#endif
