/* egress.h — where a networked build may connect: the policy and its
 * nftables form.
 *
 * Three layers, each only narrowing the one before:
 *  1. Never (built in): loopback, this host's own addresses, private,
 *     link-local, carrier-grade NAT, cloud metadata, multicast and reserved
 *     IPv4 ranges; all of IPv6 (the NAT offers no IPv6, so the private v6
 *     ranges fc00::/7, fe80::/10 and ::1 are never reachable either).
 *  2. The operator: SBX_EGRESS_DENY adds destinations to (1); SBX_EGRESS_ALLOW,
 *     when set, is the only destinations left. Entries are CIDRs or host
 *     names; names are resolved once, at start-up, by the host's resolver.
 *  3. The job: its "egress" list, when present, is the only destinations left
 *     (names resolved just before the build starts; see netns.c).
 * DNS to the NAT's resolver (which forwards to the host's) is always allowed:
 * names are how builds find hosts.
 *
 * An allowlist entry inside a "never" range stays closed: there is no way to
 * open a private address to builds (put an internal mirror behind a public
 * address or a proxy outside the sandbox host).
 *
 * Ownership: sbx_egress_init() fills what sbx_egress_free() releases; the
 * ruleset is rendered into the caller's sbx_buf.
 */
#ifndef SBX_EGRESS_H
#define SBX_EGRESS_H

#include <stddef.h>

#include "buf.h"

/* Addresses in one list after names are resolved: an operator list or a
 * job's is a handful of entries, and a name rarely has more than a few
 * dozen addresses; past this the list is refused, not cut. */
#define SBX_EGRESS_MAX 1024
/* Bytes of one entry as written: a DNS name is at most 253. */
#define SBX_EGRESS_ENTRY_MAX 253

typedef struct sbx_cidr {
    int family;              /* AF_INET or AF_INET6 */
    unsigned char addr[16];  /* network order; host bits cleared */
    int bits;
} sbx_cidr;

typedef struct sbx_cidrs {
    sbx_cidr *v;
    size_t n, cap;
} sbx_cidrs;

typedef struct sbx_egress {
    sbx_cidrs deny;          /* SBX_EGRESS_DENY, resolved */
    sbx_cidrs allow;         /* SBX_EGRESS_ALLOW, resolved; used when allow_set */
    int allow_set;
} sbx_egress;

/* What one entry is, by its spelling alone: an IPv4 or IPv6 address with an
 * optional /prefix, or a host name (letters, digits, '-' and '.', the last
 * label starting with a letter). */
typedef enum sbx_egress_kind {
    SBX_EGRESS_BAD, SBX_EGRESS_CIDR, SBX_EGRESS_NAME,
} sbx_egress_kind;
sbx_egress_kind sbx_egress_entry_kind(const char *s);

/* "198.51.100.0/24", "2001:db8::1" -> *out. Returns 0 or -EINVAL. */
int sbx_cidr_parse(const char *s, sbx_cidr *out);
/* Appends; -E2BIG past SBX_EGRESS_MAX, -ENOMEM. */
int sbx_cidrs_add(sbx_cidrs *l, const sbx_cidr *c);
void sbx_cidrs_free(sbx_cidrs *l);
/* Whether addr (family AF_INET/AF_INET6, network order) is inside l. */
int sbx_cidrs_has(const sbx_cidrs *l, int family, const void *addr);

/* Syntax only, for --check-config: every entry of the comma-separated list
 * is a CIDR or a host name. 0, or -EINVAL with one line in err. */
int sbx_egress_check(const char *setting, const char *list, char *err, size_t errlen);
/* Parses the operator's two comma-separated lists (NULL or "" for none),
 * resolving names with getaddrinfo (blocking: start-up only). Returns 0, or
 * -EINVAL with one line in err naming the setting and the entry. */
int sbx_egress_init(sbx_egress *e, const char *allow, const char *deny, char *err,
                    size_t errlen);
void sbx_egress_free(sbx_egress *e);

/* Appends every address configured on this host's interfaces (getifaddrs),
 * as /32 or /128. Cheap; called at each networked spawn, since addresses
 * change (DHCP, interfaces coming up). 0 or a negative errno. */
int sbx_egress_host_addrs(sbx_cidrs *out);
/* Whether the built-in "never" ranges hold addr. */
int sbx_egress_never(int family, const void *addr);

/* The nftables ruleset (`nft -f`) for the sandbox's own namespace: an output
 * hook that accepts loopback and DNS to dns4 (the NAT's resolver, network
 * order), rejects (1), host and e->deny, then anything outside e->allow (if
 * set) and job (if not NULL), and accepts the rest of IPv4. Every address is
 * printed from its binary form, so nothing a job wrote reaches nft as text.
 * Returns 0 or the sbx_buf error. */
int sbx_egress_ruleset(const sbx_egress *e, const sbx_cidrs *host, const sbx_cidrs *job,
                       const unsigned char dns4[4], sbx_buf *out);

#endif
