"""The one place that says which Apache Kafka the course runs and how it is configured.

Both backends run one node with these settings (``kafka_broker.KafkaNode``):
embedded in a JVM of its own, docker in a container that reads the same
``server.properties``. Change a setting here and both follow.
"""

from __future__ import annotations

KAFKA_VERSION = "4.4.0"
SCALA_VERSION = "2.13"

# About 512 MB of heap: the broker of one learner holds a few small topics.
HEAP_OPTS = "-Xms512m -Xmx512m"

BROKER_SETTINGS: dict[str, str] = {
    # One node: internal topics cannot ask for three replicas, or init_transactions
    # and the first consumer group wait forever for brokers that do not exist.
    "offsets.topic.replication.factor": "1",
    "transaction.state.log.replication.factor": "1",
    "transaction.state.log.min.isr": "1",
    "share.coordinator.state.topic.replication.factor": "1",
    "share.coordinator.state.topic.min.isr": "1",
    # Few partitions for internal topics: they are created on first use, and 50
    # of each would make the first group and the first transaction slow.
    "offsets.topic.num.partitions": "4",
    "transaction.state.log.num.partitions": "4",
    # New topics get 3 partitions, as the course's own topics do.
    "num.partitions": "3",
    "auto.create.topics.enable": "true",
    # A group's first rebalance starts at once instead of waiting 3 s for more members.
    "group.initial.rebalance.delay.ms": "0",
    # Short sessions, so a SIGKILLed consumer's partitions move in about 2 s:
    # classic protocol (the client asks for its session.timeout.ms, at least this)...
    "group.min.session.timeout.ms": "1000",
    # ...and the KIP-848 consumer protocol (the broker sets session and heartbeat).
    "group.consumer.min.session.timeout.ms": "1000",
    "group.consumer.session.timeout.ms": "2000",
    "group.consumer.min.heartbeat.interval.ms": "250",
    "group.consumer.heartbeat.interval.ms": "500",
    # Share groups (KIP-932) get their assignment on a heartbeat too: at the 5 s default
    # interval a new share consumer waits 5 s for its first record.
    "group.share.min.heartbeat.interval.ms": "250",
    "group.share.heartbeat.interval.ms": "500",
}

# The consumer session on the classic protocol: replaced about 2 s after a SIGKILL.
CLASSIC_SESSION_TIMEOUT_MS = 2000
CLASSIC_HEARTBEAT_INTERVAL_MS = 500


# Which group protocol the course's consumers speak on Apache Kafka: "classic"
# (JoinGroup/SyncGroup) or "consumer" (KIP-848, GA in Kafka 4.0).
# benchmarks/reassign.py measured both moving a SIGKILLed consumer's partitions in
# 1.9 s (the 2 s session is the whole wait), so classic stays: Tansu and external
# clusters speak it too, and a consumer then behaves the same on every backend.
GROUP_PROTOCOL = "classic"


def consumer_group_settings(protocol: str | None = None) -> dict[str, object]:
    """The consumer-side group settings for a course-started Apache Kafka.

    On the consumer protocol the broker owns session and heartbeat timing
    (``group.consumer.*`` above), and librdkafka refuses the classic knobs.
    """
    protocol = protocol or GROUP_PROTOCOL
    if protocol == "consumer":
        return {"group.protocol": "consumer"}
    return {"group.protocol": "classic", "session.timeout.ms": CLASSIC_SESSION_TIMEOUT_MS,
            "heartbeat.interval.ms": CLASSIC_HEARTBEAT_INTERVAL_MS}
