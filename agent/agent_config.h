/* agent_config.h — sbx-agent settings: environment variables, overridden by
 * flags, like the worker's (worker/config.h).
 *
 * Every setting has one environment name and one flag, except the service
 * key: it is read from SBX_AGENT_KEY only, because a flag would show it to
 * every user of the VM in /proc/<pid>/cmdline. Validation happens once at
 * start; each bad setting prints one line naming the variable (never the
 * key's value), and the agent exits 2.
 */
#ifndef SBX_AGENT_CONFIG_H
#define SBX_AGENT_CONFIG_H

#include <stdio.h>

/* The key goes into an HTTP header: 16 bytes is the least we accept as a
 * secret, 256 is far more than any generated key needs. */
#define SBX_AGENT_KEY_MIN 16
#define SBX_AGENT_KEY_MAX 256
/* Slots per VM: more would mean more concurrent builds than a VM has cores. */
#define SBX_AGENT_CAPACITY_MAX 64

typedef struct sbx_agent_config {
    char id[101];            /* also the slot prefix: "<id>" or "<id>#<i>" */
    char listen[128];        /* host:port as given */
    char listen_host[64];    /* parsed: numeric IPv4 or IPv6 */
    int listen_port;
    char url[256];           /* advertised base URL, no trailing '/' */
    char redis_url[512];
    char key[SBX_AGENT_KEY_MAX + 1];
    int capacity;
    char labels[512];
    int heartbeat_ms;
    int ttl_ms;
    int conn_max;            /* HTTP connections (server.h) */
    int pending_max;
    int pending_per_ip;
    int header_timeout_ms;
    int body_timeout_ms;
    char work_dir[512];
    int uid_base;
    int allow_network;
    char egress_allow[2048];  /* SBX_EGRESS_ALLOW: CIDRs and host names, comma-separated */
    char egress_deny[2048];   /* SBX_EGRESS_DENY */
    int shutdown_grace_ms;
    char bwrap[256];
    char log_level[16];
    char log_format[8];         /* SBX_LOG_FORMAT: text or json */
    /* Live previews of sessions (common/preview.h), served by the agent. */
    char preview_listen[64];    /* IPv4; default: the advertised URL's host, else 127.0.0.1 */
    char preview_ports[32];     /* "first-last" */
    int preview_port_min, preview_port_max;   /* parsed */
    char preview_public_host[256];            /* default: the advertised URL's host */
    char preview_secret[256];
    int warm;                   /* SBX_AGENT_WARM: session sandboxes kept made ahead */
} sbx_agent_config;

/* Fills cfg from the environment and argv. Returns 0, 1 after printing one
 * line per problem to err, or 2 when --help was asked (usage printed). */
int sbx_agent_config_load(sbx_agent_config *cfg, int argc, char **argv, FILE *err);
/* Prints the effective settings; the key is shown as "***". */
void sbx_agent_config_print(const sbx_agent_config *cfg, FILE *out);

#endif
