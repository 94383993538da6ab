"""How fast each group protocol hands a SIGKILLed consumer's partitions to the survivor, on Apache Kafka.

Two consumers share a 3-partition topic: a victim (a child process) and a
survivor (this process). Once both hold partitions, the victim gets SIGKILL,
and the clock runs until the survivor owns all 3 partitions. The classic
protocol (JoinGroup/SyncGroup, session.timeout.ms on the client) and the KIP-848
consumer protocol (session and heartbeat set by the broker) alternate round by
round on one broker, so both see the same machine. The broker's settings are
the course's (effectively_once/stack/kafka_settings.py): both sessions are 2 s.

    .venv/bin/python benchmarks/reassign.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import select
import signal
import statistics
import subprocess
import sys
import time

from confluent_kafka import Consumer

from effectively_once import stack as stack_mod
from effectively_once.stack.kafka_settings import consumer_group_settings

VICTIM = """
import json, sys
from confluent_kafka import Consumer
config = json.loads(sys.argv[1])
consumer = Consumer(config)
consumer.subscribe([sys.argv[2]])
announced = False
while True:
    consumer.poll(0.1)
    if consumer.assignment() and not announced:
        print("assigned", flush=True)
        announced = True
"""


def one_round(stack: stack_mod.Stack, protocol: str, topic: str) -> float:
    group = stack.group(f"reassign.{protocol}.{stack_mod.new_run_id()}")
    config = {"bootstrap.servers": stack.kafka_bootstrap, "group.id": group, "auto.offset.reset": "earliest",
              "enable.auto.commit": False, "logger": stack_mod.quiet_logger(), **consumer_group_settings(protocol)}
    victim_config = {k: v for k, v in config.items() if k != "logger"}
    import json

    victim = subprocess.Popen([sys.executable, "-c", VICTIM, json.dumps(victim_config), topic],
                              stdout=subprocess.PIPE, text=True)
    survivor = None
    try:
        assert victim.stdout is not None
        ready, _, _ = select.select([victim.stdout], [], [], 60)
        if not ready or victim.stdout.readline().strip() != "assigned":
            raise RuntimeError(f"{protocol}: the victim got no partition within 60 s")
        # Only now the survivor: had it joined first, unpolled while we waited, it would hold every partition.
        survivor = Consumer(config)
        survivor.subscribe([topic])
        deadline = time.monotonic() + 60
        # Both must hold partitions (a stable split) before the kill.
        while time.monotonic() < deadline:
            survivor.poll(0.05)
            if 0 < len(survivor.assignment()) < 3:
                break
        else:
            raise RuntimeError(f"{protocol}: the group never split its partitions")
        time.sleep(1.0)  # let the split settle: heartbeats flowing on both sides
        survivor.poll(0.05)
        os.kill(victim.pid, signal.SIGKILL)
        killed = time.monotonic()
        while time.monotonic() < killed + 60:
            survivor.poll(0.02)
            if len(survivor.assignment()) == 3:
                return time.monotonic() - killed
        raise RuntimeError(f"{protocol}: the survivor did not get all partitions within 60 s")
    finally:
        if survivor is not None:
            survivor.close()
        if victim.poll() is None:
            victim.kill()
        victim.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--backend", default="embedded")
    args = parser.parse_args()
    with stack_mod.start(args.backend, progress=lambda *a: print(*a, file=sys.stderr)) as stack:
        if stack.broker_flavor != "apache-kafka":
            print(f"this measures Apache Kafka's group protocols; "
                  f"the {args.backend} backend runs {stack.broker_flavor}")
            return 2
        topic = stack.create_topic(f"reassign.{stack_mod.new_run_id()}", partitions=3)
        times: dict[str, list[float]] = {"classic": [], "consumer": []}
        for round_no in range(args.rounds):
            order = ["classic", "consumer"] if round_no % 2 == 0 else ["consumer", "classic"]
            for protocol in order:
                seconds = one_round(stack, protocol, topic)
                times[protocol].append(seconds)
                print(f"round {round_no + 1} {protocol:<8} {seconds:.2f} s", flush=True)
        classic, consumer = (statistics.median(times[p]) for p in ("classic", "consumer"))
        print(f"\nSIGKILL to all partitions reassigned, median of {args.rounds} rounds (Apache Kafka "
              f"{stack.broker_version}, 2 s sessions):")
        for label, protocol, median in (("classic protocol ", "classic", classic),
                                        ("consumer protocol", "consumer", consumer)):
            print(f"  {label}: {median:.2f} s  (range {min(times[protocol]):.2f}-{max(times[protocol]):.2f})")
        print(f"  ratio consumer/classic: {consumer / classic:.2f}x")
        stack.delete_topics(topic)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
