/* kafka_security.c — TLS and SASL to the brokers, from the SBX_KAFKA_*
 * variables, as librdkafka settings.
 *
 * One table of variables for every client sbx has (sbx-worker's consumer
 * and dead-letter producer, `sbx` and whatever links libsbx), so an
 * environment file that works for one works for all, and the checks and
 * their messages are the same everywhere. The variables are a small, named
 * front to librdkafka's own properties (security.protocol, sasl.*, ssl.*):
 * what a deployment needs to get right, checked before any connection is
 * tried, each problem one line naming the variable and the fix. Anything
 * rarer (OAUTHBEARER, GSSAPI, a key password, CRLs) stays reachable through
 * raw settings (SBX_KAFKA_CONF, `sbx -X`), which are applied after these.
 *
 * The password may come from a file (SBX_KAFKA_SASL_PASSWORD_FILE), so it
 * need not sit in an environment that /proc and `systemctl show` reveal.
 * It is read into the caller's buffer, never allocated, so the caller can
 * wipe the one copy sbx makes once librdkafka has taken its own.
 *
 * TLS verifies the broker's certificate and its host name (librdkafka's
 * ssl.endpoint.identification.algorithm=https, set here explicitly rather
 * than left to the library version's default).
 */
#include "sbx.h"
#include "libsbx.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

static int set(const char *s) { return s && *s; }

void sbx_kafka_security_from_env(sbx_kafka_security *s)
{
    s->protocol = getenv("SBX_KAFKA_SECURITY_PROTOCOL");
    s->sasl_mechanism = getenv("SBX_KAFKA_SASL_MECHANISM");
    s->sasl_username = getenv("SBX_KAFKA_SASL_USERNAME");
    s->sasl_password = getenv("SBX_KAFKA_SASL_PASSWORD");
    s->sasl_password_file = getenv("SBX_KAFKA_SASL_PASSWORD_FILE");
    s->ssl_ca = getenv("SBX_KAFKA_SSL_CA");
    s->ssl_cert = getenv("SBX_KAFKA_SSL_CERT");
    s->ssl_key = getenv("SBX_KAFKA_SSL_KEY");
}

/* Appends "key=value" to the settings; 0, or -1 when buf is full. */
static int add(char *buf, size_t *used, const char **kv, int *n, const char *key,
               const char *value)
{
    int w = snprintf(buf + *used, SBX_KAFKA_SECURITY_BUF - *used, "%s=%s", key, value);
    if (w < 0 || (size_t)w >= SBX_KAFKA_SECURITY_BUF - *used || *n >= SBX_KAFKA_SECURITY_MAX)
        return -1;
    kv[(*n)++] = buf + *used;
    kv[*n] = NULL;
    *used += (size_t)w + 1;
    return 0;
}

/* A file the client will read at connect time: readable now, or the line
 * that says which variable and why. */
static int readable(const char *var, const char *path, char *err, size_t errlen)
{
    if (access(path, R_OK) == 0)
        return 0;
    sbx__seterr(err, errlen, "%s=%s cannot be read (%s): give the path of a PEM file this user can "
           "read", var, path, strerror(errno));
    return -1;
}

/* The password: the first line of the file, without its line end, written
 * into out (outlen bytes with the NUL). */
static int read_password(const char *path, char *out, size_t outlen, char *err, size_t errlen)
{
    FILE *f = fopen(path, "re");
    size_t n;
    int rc = -1;

    if (!f) {
        sbx__seterr(err, errlen, "SBX_KAFKA_SASL_PASSWORD_FILE=%s cannot be read (%s): give the path "
               "of a file holding the password", path, strerror(errno));
        return -1;
    }
    n = fread(out, 1, outlen, f);
    if (ferror(f)) {
        sbx__seterr(err, errlen, "SBX_KAFKA_SASL_PASSWORD_FILE=%s cannot be read (%s)", path,
               strerror(errno));
        goto out;
    }
    for (size_t i = 0; i < n; i++)
        if (out[i] == '\n' || out[i] == '\r') {
            n = i;
            break;
        }
    if (n == outlen) {
        sbx__seterr(err, errlen, "SBX_KAFKA_SASL_PASSWORD_FILE=%s: the password is longer than %zu "
               "bytes", path, outlen - 1);
        goto out;
    }
    out[n] = '\0';
    if (n == 0 || memchr(out, '\0', n)) {
        sbx__seterr(err, errlen, "SBX_KAFKA_SASL_PASSWORD_FILE=%s: %s", path,
               n ? "the password holds a NUL byte" : "the file is empty: put the password on "
                                                     "its first line");
        goto out;
    }
    rc = 0;
out:
    fclose(f);
    if (rc)
        explicit_bzero(out, outlen);
    return rc;
}

/* librdkafka's spellings of what we accept; "" is plaintext. */
static const char *const PROTOCOLS[] = {"plaintext", "ssl", "sasl_plaintext", "sasl_ssl", NULL};
static const char *const MECHANISMS[] = {"PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", NULL};

static const char *known(const char *const *names, const char *s)
{
    for (int i = 0; names[i]; i++)
        if (strcasecmp(names[i], s) == 0)
            return names[i];
    return NULL;
}

sbx_err sbx_kafka_security_settings(const sbx_kafka_security *s, char *buf, const char **kv,
                                    char *err, size_t errlen)
{
    const char *proto = set(s->protocol) ? known(PROTOCOLS, s->protocol) : "plaintext";
    const char *mech = NULL;
    const char *sasl_vars[] = {s->sasl_mechanism, s->sasl_username, s->sasl_password,
                               s->sasl_password_file};
    const char *sasl_names[] = {"SBX_KAFKA_SASL_MECHANISM", "SBX_KAFKA_SASL_USERNAME",
                                "SBX_KAFKA_SASL_PASSWORD", "SBX_KAFKA_SASL_PASSWORD_FILE"};
    const char *tls_vars[] = {s->ssl_ca, s->ssl_cert, s->ssl_key};
    const char *tls_names[] = {"SBX_KAFKA_SSL_CA", "SBX_KAFKA_SSL_CERT", "SBX_KAFKA_SSL_KEY"};
    int sasl, tls, n = 0;
    size_t used = 0;
    /* The password read from its file, wiped before returning. */
    char pw[SBX_KAFKA_SECURITY_PASSWORD_MAX + 1];

    kv[0] = NULL;
    if (!proto) {
        sbx__seterr(err, errlen, "SBX_KAFKA_SECURITY_PROTOCOL=%s is not known: use plaintext, ssl, "
               "sasl_plaintext or sasl_ssl", s->protocol);
        return SBX_EINVAL;
    }
    sasl = strncmp(proto, "sasl_", 5) == 0;
    tls = strcmp(proto, "ssl") == 0 || strcmp(proto, "sasl_ssl") == 0;
    /* A setting the protocol would ignore is a mistake to say, not to drop. */
    for (int i = 0; i < 4 && !sasl; i++)
        if (set(sasl_vars[i])) {
            sbx__seterr(err, errlen, "%s is set but SBX_KAFKA_SECURITY_PROTOCOL=%s sends no SASL: "
                   "use sasl_ssl (or sasl_plaintext), or unset %s", sasl_names[i], proto,
                   sasl_names[i]);
            return SBX_EINVAL;
        }
    for (int i = 0; i < 3 && !tls; i++)
        if (set(tls_vars[i])) {
            sbx__seterr(err, errlen, "%s is set but SBX_KAFKA_SECURITY_PROTOCOL=%s does not use TLS: "
                   "use ssl or sasl_ssl, or unset %s", tls_names[i], proto, tls_names[i]);
            return SBX_EINVAL;
        }
    if (sasl) {
        if (!set(s->sasl_mechanism) || !(mech = known(MECHANISMS, s->sasl_mechanism))) {
            sbx__seterr(err, errlen, "SBX_KAFKA_SASL_MECHANISM=%s: use PLAIN, SCRAM-SHA-256 or "
                   "SCRAM-SHA-512 (others through SBX_KAFKA_CONF)",
                   set(s->sasl_mechanism) ? s->sasl_mechanism : "(unset)");
            return SBX_EINVAL;
        }
        if (!set(s->sasl_username)) {
            sbx__seterr(err, errlen, "SBX_KAFKA_SASL_USERNAME is not set: SASL (%s) needs the user "
                   "name", mech);
            return SBX_EINVAL;
        }
        if (set(s->sasl_password) == set(s->sasl_password_file)) {
            sbx__seterr(err, errlen, "SASL (%s) needs the password in exactly one of "
                   "SBX_KAFKA_SASL_PASSWORD_FILE (a file, preferred) or SBX_KAFKA_SASL_PASSWORD",
                   mech);
            return SBX_EINVAL;
        }
    }
    if (tls) {
        if (set(s->ssl_cert) != set(s->ssl_key)) {
            sbx__seterr(err, errlen, "%s is set without %s: a client certificate needs both",
                   set(s->ssl_cert) ? "SBX_KAFKA_SSL_CERT" : "SBX_KAFKA_SSL_KEY",
                   set(s->ssl_cert) ? "SBX_KAFKA_SSL_KEY" : "SBX_KAFKA_SSL_CERT");
            return SBX_EINVAL;
        }
        for (int i = 0; i < 3; i++)
            if (set(tls_vars[i]) && readable(tls_names[i], tls_vars[i], err, errlen))
                return SBX_EINVAL;
    }
    /* Last of the checks, so no refusal leaves the password in pw. */
    if (sasl && set(s->sasl_password_file) &&
        read_password(s->sasl_password_file, pw, sizeof(pw), err, errlen))
        return SBX_EINVAL;

    if (add(buf, &used, kv, &n, "security.protocol", proto))
        goto full;
    if (tls && (add(buf, &used, kv, &n, "ssl.endpoint.identification.algorithm", "https") ||
                (set(s->ssl_ca) && add(buf, &used, kv, &n, "ssl.ca.location", s->ssl_ca)) ||
                (set(s->ssl_cert) &&
                 add(buf, &used, kv, &n, "ssl.certificate.location", s->ssl_cert)) ||
                (set(s->ssl_key) && add(buf, &used, kv, &n, "ssl.key.location", s->ssl_key))))
        goto full;
    if (sasl && (add(buf, &used, kv, &n, "sasl.mechanisms", mech) ||
                 add(buf, &used, kv, &n, "sasl.username", s->sasl_username) ||
                 add(buf, &used, kv, &n, "sasl.password",
                     set(s->sasl_password_file) ? pw : s->sasl_password)))
        goto full;
    explicit_bzero(pw, sizeof(pw));
    return SBX_OK;
full:
    explicit_bzero(pw, sizeof(pw));
    explicit_bzero(buf, SBX_KAFKA_SECURITY_BUF);
    kv[0] = NULL;
    sbx__seterr(err, errlen, "the SBX_KAFKA_SSL_* paths and SASL user and password are longer than "
           "%d bytes together: use shorter paths", SBX_KAFKA_SECURITY_BUF);
    return SBX_EINVAL;
}
