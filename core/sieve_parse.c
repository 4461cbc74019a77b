/* sieve_parse.c: ManageSieve command parsing (sieve_parse.h) on top of
 * IMAP's argument grammar (imap_parse.c). */
#include "sieve_parse.h"

#include "imap_parse.h"

#include <string.h>

int sieve_parse_command(const char *buf, size_t len, size_t max, cmd_t *cmd)
{
    return imap_parse_unnamed(buf, len, max, IMAP_ARGS_NOSYNC, cmd);
}

int sieve_arg_is_string(const cmd_arg_t *a)
{
    return a->type == CMD_ARG_LITERAL || a->type == CMD_ARG_QUOTED;
}

int sieve_parse_response(const char *buf, size_t len, cmd_t *cmd, char *out, size_t outlen, size_t *outn)
{
    memset(cmd, 0, sizeof *cmd);
    int rc = imap_parse_args(buf, len, 0, outlen, IMAP_ARGS_NOSYNC | IMAP_ARGS_FIRST, cmd);
    if (rc != PT_OK)
        return rc;
    if (cmd->nargs != 1 || !sieve_arg_is_string(&cmd->args[0])) {
        cmd->error = "Expected one string";
        return PT_INVALID;
    }
    long n = cmd_arg_copy(buf, &cmd->args[0], out, outlen);
    if (n < 0)
        return PT_TOO_BIG;
    *outn = (size_t)n;
    return PT_OK;
}
