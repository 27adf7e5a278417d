#!/bin/sh
# sbx-kafka — the sbx-kafka image's entrypoint: one Kafka 3.9 node in KRaft
# mode (broker and controller in one process), configured from the
# environment, its data in /var/lib/kafka (a volume).
#
#   KAFKA_ADVERTISED   how clients in the stack reach it (PLAINTEXT://kafka:9092)
#   KAFKA_HOST_ADVERTISED  a second listener on :19092 for clients on the
#                      host, advertised as this (PLAINTEXT://127.0.0.1:19092);
#                      publish the port on 127.0.0.1 only
#   KAFKA_NUM_PARTITIONS   partitions of an auto-created topic (8)
#   KAFKA_HEAP         JVM heap (512m)
#
# The settings are those of the tests' broker (tests/services/sbxsvc.py),
# tuned for a small machine. Topics are created from a metadata request
# (auto.create.topics.enable): the compose stack's init service asks for
# sbx.jobs and sbx.jobs.dlq, so they exist, with KAFKA_NUM_PARTITIONS
# partitions, before any worker subscribes. The storage is formatted with a
# fresh cluster id on the first start only.
set -eu

data=/var/lib/kafka
conf=$data/server.properties
adv=${KAFKA_ADVERTISED:-PLAINTEXT://kafka:9092}
host_adv=${KAFKA_HOST_ADVERTISED:-HOST://127.0.0.1:19092}
mkdir -p "$data/logs" "$data/tmp"

cat >"$conf" <<CONF
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:9093
listeners=PLAINTEXT://:9092,HOST://:19092,CONTROLLER://127.0.0.1:9093
advertised.listeners=$adv,$host_adv
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,HOST:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs=$data/logs
num.partitions=${KAFKA_NUM_PARTITIONS:-8}
auto.create.topics.enable=true
default.replication.factor=1
min.insync.replicas=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=8
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
group.initial.rebalance.delay.ms=0
num.network.threads=2
num.io.threads=4
CONF
cat >"$data/log4j.properties" <<'CONF'
log4j.rootLogger=INFO, out
log4j.appender.out=org.apache.log4j.ConsoleAppender
log4j.appender.out.layout=org.apache.log4j.PatternLayout
log4j.appender.out.layout.ConversionPattern=[%d] %p %m (%c)%n
log4j.logger.kafka.request.logger=WARN
log4j.logger.state.change.logger=WARN
log4j.logger.org.apache.kafka.raft=WARN
log4j.logger.org.apache.kafka.controller=WARN
CONF

heap=${KAFKA_HEAP:-512m}
set -- "-Xmx$heap" "-Xms$heap" -XX:-UsePerfData -XX:+ExitOnOutOfMemoryError \
    -Djava.io.tmpdir="$data/tmp" -Djava.awt.headless=true \
    -Dlog4j.configuration="file:$data/log4j.properties" -cp '/opt/kafka/libs/*'

if [ ! -f "$data/logs/meta.properties" ]; then
    # Kafka's Uuid form: URL-safe base64 of 16 random bytes, no padding, no
    # leading '-' (it would read as an option).
    id=$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=' | sed 's/^-/A/')
    java "$@" kafka.tools.StorageTool format -t "$id" -c "$conf" >/dev/null
fi
# exec: the JVM is pid 1 and gets the stop signal (a controlled shutdown).
exec java "$@" kafka.Kafka "$conf"
