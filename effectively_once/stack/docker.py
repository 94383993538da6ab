"""The docker backend: Apache Kafka (KRaft, one node) and PostgreSQL through testcontainers.

A single-broker Apache Kafka needs the transaction state log's replication
factor and min ISR set to 1, or ``init_transactions`` never completes
(trap 5 of the lesson). The containers live as long as the process that
started them: testcontainers' reaper removes them when it exits.
"""

from __future__ import annotations

from typing import Any, Callable

from effectively_once.stack import Stack, StackError, docker_available

KAFKA_IMAGE = "confluentinc/cp-kafka:7.6.1"
POSTGRES_IMAGE = "postgres:16-alpine"

DOCKER_MISSING = (
    "Docker is not running ({why}): start Docker, or use the Docker-free backend "
    "with `EO_BACKEND=embedded` (or `--backend embedded`)."
)


def kafka_container() -> Any:
    """The Kafka container, configured for transactions on a single node."""
    try:
        from testcontainers.community.kafka import KafkaContainer
    except ImportError:  # testcontainers < 4.14 kept it at the top level
        from testcontainers.kafka import KafkaContainer

    return (
        KafkaContainer(KAFKA_IMAGE)
        .with_kraft()
        .with_env("KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR", "1")
        .with_env("KAFKA_TRANSACTION_STATE_LOG_MIN_ISR", "1")
        .with_env("KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS", "0")
        .with_env("KAFKA_AUTO_CREATE_TOPICS_ENABLE", "true")
    )


def postgres_container() -> Any:
    """The PostgreSQL container; ``driver=None`` gives a plain libpq URI for psycopg 3."""
    try:
        from testcontainers.community.postgres import PostgresContainer
    except ImportError:
        from testcontainers.postgres import PostgresContainer

    return PostgresContainer(POSTGRES_IMAGE, username="postgres", password="postgres", dbname="postgres",
                             driver=None)


def start_docker(progress: Callable[..., None] = print) -> Stack:
    """Start both containers and return a ``Stack`` that removes them on ``stop()``."""
    ok, why = docker_available()
    if not ok:
        raise StackError(DOCKER_MISSING.format(why=why))
    progress(f"pulling and starting {KAFKA_IMAGE} (KRaft) and {POSTGRES_IMAGE}; the first run downloads images...")
    kafka = kafka_container()
    postgres = postgres_container()
    try:
        kafka.start()
        postgres.start()
    except Exception as exc:
        for container in (postgres, kafka):
            try:
                container.stop()
            except Exception:
                pass
        raise StackError(f"Docker could not start the containers ({exc}); "
                         "check `docker ps`, or use `--backend embedded`.") from exc
    stack = Stack(
        backend="docker",
        kafka_bootstrap=kafka.get_bootstrap_server(),
        base_dsn=postgres.get_connection_url(driver=None),
    )
    stack._stoppers.append(kafka.stop)
    stack._stoppers.append(postgres.stop)
    progress("Apache Kafka and PostgreSQL containers are up.")
    return stack
