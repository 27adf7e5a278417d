/* validate.c — `sbx-validate FILE...`: prints one line per file, in order,
 * with libsbx's verdict on it as a job message: "ok" or
 * "reject <reason>: <detail>", or "error: <why>" when the file can't be read.
 *
 * It exists so tests/schema/check.mjs can hold the C validator against Ajv
 * on every vector, and so a producer can check a message without Kafka.
 * "-" reads standard input. Exit status: 0 all ok, 1 some rejected, 2 some
 * unreadable.
 */
#include "sbx.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Reading stops past this: anything over SBX_MSG_MAX_BYTES is refused as
 * too_large whatever its length, so a little more than that is enough. */
#define READ_MAX (SBX_MSG_MAX_BYTES + 1)

static int read_all(const char *path, char **out, size_t *outlen)
{
    FILE *f = strcmp(path, "-") == 0 ? stdin : fopen(path, "rb");
    char *buf = NULL;
    size_t len = 0;
    int rc = -1;

    if (!f)
        return -1;
    buf = malloc(READ_MAX + 1);
    if (!buf)
        goto out;
    len = fread(buf, 1, READ_MAX, f);
    if (ferror(f))
        goto out;
    *out = buf;
    *outlen = len;
    buf = NULL;
    rc = 0;
out:
    free(buf);
    if (f != stdin)
        fclose(f);
    return rc;
}

int main(int argc, char **argv)
{
    int status = 0;
    char err[512];

    if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
        fprintf(argc < 2 ? stderr : stdout,
                "usage: sbx-validate FILE...\n"
                "Prints \"ok\" or \"reject <reason>: <detail>\" for each file, checked as an\n"
                "sbx job message (schemas/job.v1.schema.json). \"-\" reads standard input.\n");
        return argc < 2 ? 2 : 0;
    }
    for (int i = 1; i < argc; i++) {
        char *buf = NULL;
        size_t len = 0;
        sbx_reject why;
        if (read_all(argv[i], &buf, &len) != 0) {
            printf("error: %s: %s\n", argv[i], strerror(errno));
            status = 2;
            continue;
        }
        sbx_err rc = sbx_job_parse(buf, len, NULL, &why, err, sizeof err);
        if (rc == SBX_OK)
            printf("ok\n");
        else if (why != SBX_REJECT_NONE) {
            printf("reject %s: %s\n", sbx_reject_name(why), err);
            if (status == 0)
                status = 1;
        } else {
            printf("error: %s: %s\n", argv[i], sbx_strerror(rc));
            status = 2;
        }
        free(buf);
    }
    return fflush(stdout) == 0 ? status : 2;
}
