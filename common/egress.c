/* egress.c — the egress policy of networked builds and its nftables form
 * (egress.h says what the layers mean).
 *
 * Why nftables in the sandbox's own network namespace: every packet a build
 * sends leaves through that namespace's output hook, with its real
 * destination still in the header (the NAT rewrites only what it sends on
 * the host side), so one chain there sees all of it; the rules are installed
 * by the worker before the command runs, and the build cannot change them (it
 * has no CAP_NET_ADMIN over the namespace: see netns.c). Rejecting rather
 * than dropping makes a refused connect fail at once instead of after a
 * build tool's long timeout.
 *
 * Only IPv4 is offered (the NAT runs without IPv6), so the sets are IPv4 and
 * IPv6 is rejected wholesale; IPv6 entries of the operator's lists are
 * accepted and kept, and mean nothing until IPv6 egress exists.
 */
#include "egress.h"

#include <arpa/inet.h>
#include <errno.h>
#include <ifaddrs.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

/* The built-in "never" ranges: RFC 6890's special-purpose blocks a build has
 * no business reaching, minus the documentation ranges (harmless, and the
 * tests' stand-in for the internet). */
static const char *const never4[] = {
    "0.0.0.0/8",       /* "this network": 0.0.0.0 is the host itself */
    "10.0.0.0/8",      /* private */
    "100.64.0.0/10",   /* carrier-grade NAT */
    "127.0.0.0/8",     /* loopback */
    "169.254.0.0/16",  /* link-local, cloud metadata (169.254.169.254) */
    "172.16.0.0/12",   /* private */
    "192.0.0.0/24",    /* IETF protocol assignments */
    "192.168.0.0/16",  /* private */
    "198.18.0.0/15",   /* benchmarking, often internal */
    "224.0.0.0/4",     /* multicast */
    "240.0.0.0/4",     /* reserved, broadcast */
};
static const char *const never6[] = {
    "::/127",          /* unspecified and loopback */
    "::ffff:0:0/96",   /* IPv4-mapped */
    "fc00::/7",        /* unique local */
    "fe80::/10",       /* link-local */
    "ff00::/8",        /* multicast */
};

/* ---- entries ---- */

static int is_digit(char c) { return c >= '0' && c <= '9'; }
static int is_alpha(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); }

/* "/n" with 0 <= n <= max, no leading zero; s points after the '/'. */
static int parse_bits(const char *s, int max)
{
    int n = 0;
    if (!is_digit(s[0]) || (s[0] == '0' && s[1]))
        return -1;
    for (; *s; s++) {
        if (!is_digit(*s))
            return -1;
        n = n * 10 + (*s - '0');
        if (n > max)
            return -1;
    }
    return n;
}

int sbx_cidr_parse(const char *s, sbx_cidr *out)
{
    char a[INET6_ADDRSTRLEN + 1];
    const char *slash = strchr(s, '/');
    size_t n = slash ? (size_t)(slash - s) : strlen(s);
    int v6 = memchr(s, ':', n) != NULL, bytes, bits;

    if (n == 0 || n >= sizeof(a))
        return -EINVAL;
    memcpy(a, s, n);
    a[n] = '\0';
    memset(out, 0, sizeof(*out));
    out->family = v6 ? AF_INET6 : AF_INET;
    if (inet_pton(out->family, a, out->addr) != 1)
        return -EINVAL;
    bytes = v6 ? 16 : 4;
    bits = slash ? parse_bits(slash + 1, bytes * 8) : bytes * 8;
    if (bits < 0)
        return -EINVAL;
    out->bits = bits;
    for (int i = 0; i < bytes; i++) {
        int keep = bits - i * 8;
        if (keep <= 0)
            out->addr[i] = 0;
        else if (keep < 8)
            out->addr[i] &= (unsigned char)(0xff << (8 - keep));
    }
    return 0;
}

/* RFC 1123 labels of 1..63 letters, digits and inner '-', dot-separated,
 * the last one starting with a letter (so no address reads as a name). */
static int name_ok(const char *s)
{
    size_t len = strlen(s), label = 0;
    char first = 0, prev = 0;

    if (len == 0 || len > SBX_EGRESS_ENTRY_MAX)
        return 0;
    for (const char *c = s;; c++) {
        if (*c == '.' || *c == '\0') {
            if (label == 0 || label > 63 || prev == '-')
                return 0;
            if (*c == '\0')
                return is_alpha(first);
            label = 0;
            continue;
        }
        if (!is_alpha(*c) && !is_digit(*c) && *c != '-')
            return 0;
        if (label == 0) {
            if (*c == '-')
                return 0;
            first = *c;
        }
        prev = *c;
        label++;
    }
}

sbx_egress_kind sbx_egress_entry_kind(const char *s)
{
    sbx_cidr c;
    if (!s || !*s)
        return SBX_EGRESS_BAD;
    if (sbx_cidr_parse(s, &c) == 0)
        return SBX_EGRESS_CIDR;
    return name_ok(s) ? SBX_EGRESS_NAME : SBX_EGRESS_BAD;
}

/* ---- lists ---- */

int sbx_cidrs_add(sbx_cidrs *l, const sbx_cidr *c)
{
    if (l->n == l->cap) {
        size_t cap = l->cap ? 2 * l->cap : 16;
        sbx_cidr *v;
        if (l->n >= SBX_EGRESS_MAX)
            return -E2BIG;
        if (cap > SBX_EGRESS_MAX)
            cap = SBX_EGRESS_MAX;
        v = realloc(l->v, cap * sizeof(*v));
        if (!v)
            return -ENOMEM;
        l->v = v;
        l->cap = cap;
    }
    l->v[l->n++] = *c;
    return 0;
}

void sbx_cidrs_free(sbx_cidrs *l)
{
    free(l->v);
    memset(l, 0, sizeof(*l));
}

static int cidr_has(const sbx_cidr *c, int family, const unsigned char *a)
{
    int full = c->bits / 8, rest = c->bits % 8;
    if (c->family != family)
        return 0;
    if (memcmp(c->addr, a, (size_t)full) != 0)
        return 0;
    return rest == 0 || ((c->addr[full] ^ a[full]) & (0xff << (8 - rest))) == 0;
}

int sbx_cidrs_has(const sbx_cidrs *l, int family, const void *addr)
{
    for (size_t i = 0; i < l->n; i++)
        if (cidr_has(&l->v[i], family, addr))
            return 1;
    return 0;
}

int sbx_egress_never(int family, const void *addr)
{
    const char *const *r = family == AF_INET6 ? never6 : never4;
    size_t n = family == AF_INET6 ? sizeof(never6) / sizeof(*never6)
                                  : sizeof(never4) / sizeof(*never4);
    for (size_t i = 0; i < n; i++) {
        sbx_cidr c;
        if (sbx_cidr_parse(r[i], &c) == 0 && cidr_has(&c, family, addr))
            return 1;
    }
    return 0;
}

static int add_sockaddr(sbx_cidrs *l, const struct sockaddr *sa)
{
    sbx_cidr c;
    memset(&c, 0, sizeof(c));
    if (sa->sa_family == AF_INET) {
        c.family = AF_INET;
        c.bits = 32;
        memcpy(c.addr, &((const struct sockaddr_in *)sa)->sin_addr, 4);
    } else if (sa->sa_family == AF_INET6) {
        c.family = AF_INET6;
        c.bits = 128;
        memcpy(c.addr, &((const struct sockaddr_in6 *)sa)->sin6_addr, 16);
    } else {
        return 0;
    }
    return sbx_cidrs_add(l, &c);
}

/* One comma-separated setting into l, names resolved now; l NULL: only
 * check the spelling. */
static int parse_list(const char *setting, const char *list, sbx_cidrs *l, char *err,
                      size_t errlen)
{
    const char *c = list;

    while (c && *c) {
        char entry[SBX_EGRESS_ENTRY_MAX + 1];
        const char *e = strchr(c, ',');
        size_t n = e ? (size_t)(e - c) : strlen(c);
        sbx_cidr cidr;
        int rc = 0;

        while (n > 0 && (*c == ' ' || *c == '\t')) {
            c++;
            n--;
        }
        while (n > 0 && (c[n - 1] == ' ' || c[n - 1] == '\t'))
            n--;
        if (n == 0 || n > SBX_EGRESS_ENTRY_MAX) {
            snprintf(err, errlen, "%s: entry \"%.*s\" is not a CIDR or host name", setting,
                     (int)(n > 64 ? 64 : n), c);
            return -EINVAL;
        }
        memcpy(entry, c, n);
        entry[n] = '\0';
        if (!l && sbx_egress_entry_kind(entry) != SBX_EGRESS_BAD) {
            c = e ? e + 1 : NULL;
            continue;
        }
        switch (sbx_egress_entry_kind(entry)) {
        case SBX_EGRESS_CIDR:
            sbx_cidr_parse(entry, &cidr);
            rc = sbx_cidrs_add(l, &cidr);
            break;
        case SBX_EGRESS_NAME: {
            struct addrinfo hints, *res = NULL;
            int g;
            memset(&hints, 0, sizeof(hints));
            hints.ai_family = AF_UNSPEC;
            hints.ai_socktype = SOCK_STREAM;
            g = getaddrinfo(entry, NULL, &hints, &res);
            if (g != 0) {
                snprintf(err, errlen, "%s: host name %s does not resolve: %s", setting, entry,
                         gai_strerror(g));
                return -EINVAL;
            }
            for (struct addrinfo *ai = res; ai && !rc; ai = ai->ai_next)
                rc = add_sockaddr(l, ai->ai_addr);
            freeaddrinfo(res);
            break;
        }
        default:
            snprintf(err, errlen, "%s: entry \"%s\" is not a CIDR or host name", setting, entry);
            return -EINVAL;
        }
        if (rc) {
            snprintf(err, errlen, "%s: more than %d addresses", setting, SBX_EGRESS_MAX);
            return rc;
        }
        c = e ? e + 1 : NULL;
    }
    return 0;
}

int sbx_egress_check(const char *setting, const char *list, char *err, size_t errlen)
{
    return parse_list(setting, list, NULL, err, errlen);
}

int sbx_egress_init(sbx_egress *e, const char *allow, const char *deny, char *err,
                    size_t errlen)
{
    int rc;

    memset(e, 0, sizeof(*e));
    rc = parse_list("SBX_EGRESS_DENY", deny, &e->deny, err, errlen);
    if (!rc)
        rc = parse_list("SBX_EGRESS_ALLOW", allow, &e->allow, err, errlen);
    e->allow_set = allow && *allow;
    if (rc)
        sbx_egress_free(e);
    return rc;
}

void sbx_egress_free(sbx_egress *e)
{
    sbx_cidrs_free(&e->deny);
    sbx_cidrs_free(&e->allow);
    e->allow_set = 0;
}

int sbx_egress_host_addrs(sbx_cidrs *out)
{
    struct ifaddrs *ifa = NULL;
    int rc = 0;

    if (getifaddrs(&ifa) < 0)
        return -errno;
    for (struct ifaddrs *i = ifa; i && !rc; i = i->ifa_next)
        if (i->ifa_addr)
            rc = add_sockaddr(out, i->ifa_addr);
    freeifaddrs(ifa);
    return rc;
}

/* ---- the ruleset ---- */

__attribute__((format(printf, 3, 4)))
static void put(int *rc, sbx_buf *b, const char *fmt, ...)
{
    char line[256]; /* the longest line below is a fixed rule, well under */
    va_list ap;
    int n;

    if (*rc)
        return;
    va_start(ap, fmt);
    n = vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    *rc = n < 0 || (size_t)n >= sizeof(line) ? -EINVAL : sbx_buf_add(b, line, (size_t)n);
}

/* A set of the IPv4 entries of up to three lists. */
static void put_set(int *rc, sbx_buf *b, const char *name, const sbx_cidrs *const *lists,
                    size_t nlists, int with_never)
{
    int first = 1;

    put(rc, b, "\tset %s {\n\t\ttype ipv4_addr; flags interval; auto-merge\n", name);
    for (size_t k = 0; with_never && k < sizeof(never4) / sizeof(*never4); k++) {
        put(rc, b, "%s%s", first ? "\t\telements = { " : ", ", never4[k]);
        first = 0;
    }
    for (size_t k = 0; k < nlists; k++) {
        for (size_t i = 0; lists[k] && i < lists[k]->n; i++) {
            const sbx_cidr *c = &lists[k]->v[i];
            char a[INET_ADDRSTRLEN];
            if (c->family != AF_INET || !inet_ntop(AF_INET, c->addr, a, sizeof(a)))
                continue;
            put(rc, b, "%s%s/%d", first ? "\t\telements = { " : ", ", a, c->bits);
            first = 0;
        }
    }
    if (!first)
        put(rc, b, " }\n");
    put(rc, b, "\t}\n");
}

int sbx_egress_ruleset(const sbx_egress *e, const sbx_cidrs *host, const sbx_cidrs *job,
                       const unsigned char dns4[4], sbx_buf *out)
{
    const sbx_cidrs *deny[] = {host, &e->deny};
    const sbx_cidrs *allow[] = {&e->allow};
    const sbx_cidrs *jobl[] = {job};
    char dns[INET_ADDRSTRLEN];
    int rc = 0;

    if (!inet_ntop(AF_INET, dns4, dns, sizeof(dns)))
        return -EINVAL;
    put(&rc, out, "table inet sbx {\n");
    put_set(&rc, out, "deny4", deny, 2, 1);
    if (e->allow_set)
        put_set(&rc, out, "allow4", allow, 1, 0);
    if (job)
        put_set(&rc, out, "job4", jobl, 1, 0);
    /* A refused TCP connect gets a reset (fails at once); anything else an
     * ICMP "administratively prohibited". */
    put(&rc, out, "\tchain refuse {\n\t\tmeta l4proto tcp reject with tcp reset\n");
    put(&rc, out, "\t\treject with icmpx type admin-prohibited\n\t}\n");
    put(&rc, out, "\tchain output {\n\t\ttype filter hook output priority filter; policy drop;\n");
    put(&rc, out, "\t\toif \"lo\" accept\n");
    put(&rc, out, "\t\tip daddr %s udp dport 53 accept\n", dns);
    put(&rc, out, "\t\tip daddr %s tcp dport 53 accept\n", dns);
    put(&rc, out, "\t\tmeta nfproto != ipv4 goto refuse\n");
    put(&rc, out, "\t\tip daddr @deny4 goto refuse\n");
    if (e->allow_set)
        put(&rc, out, "\t\tip daddr != @allow4 goto refuse\n");
    if (job)
        put(&rc, out, "\t\tip daddr != @job4 goto refuse\n");
    put(&rc, out, "\t\taccept\n\t}\n}\n");
    return rc;
}
