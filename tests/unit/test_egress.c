/* test_egress.c — common/egress.c: what an entry is, which addresses are
 * never reachable, the operator's lists, and the ruleset nft is given. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>
#include <cmocka.h>

#include "egress.h"

static int never(const char *a)
{
    unsigned char b[16];
    int fam = strchr(a, ':') ? AF_INET6 : AF_INET;
    assert_int_equal(inet_pton(fam, a, b), 1);
    return sbx_egress_never(fam, b);
}

static void t_entries(void **state)
{
    static const char *const cidrs[] = {"198.51.100.0/24", "203.0.113.7", "0.0.0.0/0",
                                        "2001:db8::/32", "::1"};
    static const char *const names[] = {"registry.npmjs.org", "a", "x-1.example", "1e100.net"};
    static const char *const bad[] = {"", "198.51.100.0/33", "198.51.100.0/08", "a..b", "-a.b",
                                      "a-.b", "example.123", "x_y.com", "example.com.",
                                      "h:1:2:3:4:5:6:7:8:9", "https://x.org"};
    sbx_cidr c;
    (void)state;
    for (size_t i = 0; i < sizeof(cidrs) / sizeof(*cidrs); i++)
        assert_int_equal(sbx_egress_entry_kind(cidrs[i]), SBX_EGRESS_CIDR);
    for (size_t i = 0; i < sizeof(names) / sizeof(*names); i++)
        assert_int_equal(sbx_egress_entry_kind(names[i]), SBX_EGRESS_NAME);
    for (size_t i = 0; i < sizeof(bad) / sizeof(*bad); i++)
        assert_int_equal(sbx_egress_entry_kind(bad[i]), SBX_EGRESS_BAD);
    /* Host bits are cleared: the set holds networks. */
    assert_int_equal(sbx_cidr_parse("198.51.100.77/24", &c), 0);
    assert_int_equal(c.bits, 24);
    assert_memory_equal(c.addr, "\xc6\x33\x64\x00", 4);
}

static void t_never(void **state)
{
    static const char *const no[] = {"127.0.0.1", "10.1.2.3", "172.16.0.1", "172.31.255.255",
                                     "192.168.1.1", "169.254.169.254", "100.64.0.1",
                                     "100.127.255.255", "0.0.0.0", "224.0.0.1",
                                     "255.255.255.255", "::1", "fe80::1", "fd00::1",
                                     "::ffff:127.0.0.1"};
    static const char *const yes[] = {"198.51.100.1", "8.8.8.8", "172.32.0.1", "100.128.0.1",
                                      "2001:db8::1"};
    (void)state;
    for (size_t i = 0; i < sizeof(no) / sizeof(*no); i++)
        assert_true(never(no[i]));
    for (size_t i = 0; i < sizeof(yes) / sizeof(*yes); i++)
        assert_false(never(yes[i]));
}

static void t_operator_lists(void **state)
{
    sbx_egress e;
    char err[256];
    (void)state;
    assert_int_equal(sbx_egress_init(&e, "198.51.100.0/24, localhost", "203.0.113.9", err,
                                     sizeof(err)), 0);
    assert_true(e.allow_set);
    assert_true(e.allow.n >= 2); /* the CIDR and localhost's address(es) */
    assert_int_equal(e.deny.n, 1);
    sbx_egress_free(&e);
    assert_int_equal(sbx_egress_init(&e, "", "not a name!", err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "SBX_EGRESS_DENY"));
    assert_int_equal(sbx_egress_check("SBX_EGRESS_ALLOW", "a.example,10.0.0.0/8", err,
                                      sizeof(err)), 0);
    assert_int_equal(sbx_egress_check("SBX_EGRESS_ALLOW", "a.example,,b", err, sizeof(err)),
                     -EINVAL);
}

/* Runs `unshare -n nft -c -f` on the text: real nft's verdict, in a network
 * namespace of its own so the host's rules are never touched. */
static int nft_accepts(const char *rules)
{
    char path[] = "/tmp/sbx-egress-XXXXXX";
    int fd = mkstemp(path), status = -1;
    pid_t pid;

    assert_true(fd >= 0);
    assert_int_equal(write(fd, rules, strlen(rules)), (ssize_t)strlen(rules));
    close(fd);
    pid = fork();
    if (pid == 0) {
        int null = open("/dev/null", O_WRONLY);
        dup2(null, 1);
        execlp("unshare", "unshare", "-n", "nft", "-c", "-f", path, (char *)NULL);
        _exit(127);
    }
    waitpid(pid, &status, 0);
    unlink(path);
    return WIFEXITED(status) && WEXITSTATUS(status) == 0;
}

static void t_ruleset(void **state)
{
    static const unsigned char dns[4] = {10, 0, 2, 3};
    sbx_egress e;
    sbx_cidrs host = {0}, job = {0};
    sbx_cidr c;
    sbx_buf b;
    char err[256];
    (void)state;

    assert_int_equal(sbx_egress_init(&e, NULL, "203.0.113.9,2001:db8::/32", err, sizeof(err)), 0);
    assert_int_equal(sbx_egress_host_addrs(&host), 0);
    assert_true(host.n >= 1); /* loopback at least */
    sbx_buf_init(&b, 1 << 20);
    assert_int_equal(sbx_egress_ruleset(&e, &host, NULL, dns, &b), 0);
    assert_non_null(strstr(b.p, "169.254.0.0/16"));
    assert_non_null(strstr(b.p, "203.0.113.9/32"));
    assert_non_null(strstr(b.p, "127.0.0.1/32"));        /* a host address */
    assert_null(strstr(b.p, "2001:db8"));                /* IPv6 is refused wholesale */
    assert_null(strstr(b.p, "allow4"));
    assert_null(strstr(b.p, "job4"));
    assert_non_null(strstr(b.p, "ip daddr 10.0.2.3 udp dport 53 accept"));
    if (geteuid() == 0)
        assert_true(nft_accepts(b.p));

    /* An empty job list: the set exists, empty, and refuses everything. */
    sbx_buf_reset(&b);
    assert_int_equal(sbx_egress_ruleset(&e, &host, &job, dns, &b), 0);
    assert_non_null(strstr(b.p, "set job4 {\n\t\ttype ipv4_addr; flags interval; auto-merge\n\t}"));
    assert_non_null(strstr(b.p, "ip daddr != @job4 goto refuse"));
    if (geteuid() == 0)
        assert_true(nft_accepts(b.p));

    sbx_cidr_parse("198.51.100.0/24", &c);
    assert_int_equal(sbx_cidrs_add(&job, &c), 0);
    sbx_buf_reset(&b);
    assert_int_equal(sbx_egress_ruleset(&e, &host, &job, dns, &b), 0);
    assert_non_null(strstr(b.p, "elements = { 198.51.100.0/24 }"));
    if (geteuid() == 0)
        assert_true(nft_accepts(b.p));

    sbx_buf_free(&b);
    sbx_cidrs_free(&host);
    sbx_cidrs_free(&job);
    sbx_egress_free(&e);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(t_entries),
        cmocka_unit_test(t_never),
        cmocka_unit_test(t_operator_lists),
        cmocka_unit_test(t_ruleset),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
