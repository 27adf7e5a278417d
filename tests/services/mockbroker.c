/* mockbroker.c — `sbx-mockbroker`: librdkafka's built-in mock cluster as a
 * standalone broker for `make run` (the quick start) only.
 *
 * It lets a fresh machine see jobs flow without a JVM. It is not a Kafka
 * broker: the test suite always uses a real one (tests/services/sbxsvc.py).
 * Prints "BROKERS=host:port" on stdout once the topics exist, then serves
 * until SIGTERM/SIGINT.
 *
 *   sbx-mockbroker [TOPIC:PARTITIONS]...   (default sbx.jobs:8 sbx.jobs.dlq:1)
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>

static volatile sig_atomic_t stop;
static void on_signal(int sig) { (void)sig; stop = 1; }

int main(int argc, char **argv)
{
    const char *defaults[] = {"sbx.jobs:8", "sbx.jobs.dlq:1"};
    char err[256];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    rd_kafka_t *rk;
    rd_kafka_mock_cluster_t *mc;
    int rc = 1;

    /* The mock cluster lives inside a client handle; a producer is the
     * cheapest kind. Its logs stay quiet. */
    rd_kafka_conf_set(conf, "log_level", "3", err, sizeof(err));
    rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, sizeof(err));
    if (!rk) {
        fprintf(stderr, "sbx-mockbroker: %s\n", err);
        return 1;
    }
    mc = rd_kafka_mock_cluster_new(rk, 1);
    if (!mc) {
        fprintf(stderr, "sbx-mockbroker: cannot create the mock cluster\n");
        goto out;
    }
    for (int i = 0; i < (argc > 1 ? argc - 1 : 2); i++) {
        char name[256], *colon;
        int parts;
        snprintf(name, sizeof(name), "%s", argc > 1 ? argv[i + 1] : defaults[i]);
        colon = strrchr(name, ':');
        parts = colon ? atoi(colon + 1) : 1;
        if (colon)
            *colon = '\0';
        if (rd_kafka_mock_topic_create(mc, name, parts > 0 ? parts : 1, 1)) {
            fprintf(stderr, "sbx-mockbroker: cannot create topic %s\n", name);
            goto out;
        }
    }
    signal(SIGTERM, on_signal);
    signal(SIGINT, on_signal);
    printf("BROKERS=%s\n", rd_kafka_mock_cluster_bootstraps(mc));
    fflush(stdout);
    while (!stop)
        pause();
    rc = 0;
out:
    if (mc)
        rd_kafka_mock_cluster_destroy(mc);
    rd_kafka_destroy(rk);
    return rc;
}
