"""How fast each group protocol hands a SIGKILLed consumer's partitions to the survivor, on Apache Kafka.

Two consumers share a 3-partition topic: a victim (a child process) and a
survivor (this process). Once both hold partitions, the victim gets SIGKILL,
and the clock runs until the survivor owns all 3 partitions. The classic
protocol (JoinGroup/SyncGroup, session.timeout.ms on the client) and the KIP-848
consumer protocol (session and heartbeat set by the broker) run side by side in
each round on one broker (each in its own group), so both see the same machine. The broker's settings are
the course's (effectively_once/stack/kafka_settings.py): both sessions are 2 s.
The measurement itself is ``effectively_once.guarantees.kafka4.measure_reassignment``,
which notebook 03 runs for fewer rounds.

    .venv/bin/python benchmarks/reassign.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import sys

from effectively_once import stack as stack_mod
from effectively_once.guarantees.kafka4 import measure_reassignment


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
        result = measure_reassignment(stack, rounds=args.rounds, progress=lambda line: print(line, flush=True))
        print(f"\nApache Kafka {stack.broker_version}, 2 s sessions. {result.as_text()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
