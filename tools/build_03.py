"""Build notebook 03 (what Kafka guarantees, probed live) and its exercise notebook.

    EO_HOME=... .venv/bin/python -m effectively_once up --backend embedded
    EO_HOME=... .venv/bin/python tools/build_03.py            # both, executed against that stack
    EO_HOME=... .venv/bin/python tools/build_03.py solutions  # only the ones whose path starts with this

Then run ``tools/make_labs.py`` to regenerate ``labs/``.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from build_notebooks import build_targets, check, code, ignore_output, md  # noqa: E402


def notebook_03():
    return [
        md("""
            # 03 · What Kafka guarantees, and where it stops

            **You will learn**
            - why a producer's retry stores a second copy, and how a producer id with sequence numbers lets the
              broker drop it: first in a seeded simulation, then on the wire of the broker you are running;
            - what transactions and `read_committed` promise, which of those promises *your* broker keeps
              (probed live), and what idempotence costs in throughput here;
            - why Kafka's exactly-once cannot reach PostgreSQL, shown by a Kafka transaction that commits while
              the database rolls back, and the reverse.

            **Time:** about 30 minutes. Needs the broker and PostgreSQL: `make lab` starts them, or this notebook
            starts a private set.
        """),
        code("""
            from IPython.display import HTML, display

            from effectively_once import guarantees
            from effectively_once.guarantees import (IDEMPOTENT_PRODUCER, KAFKA_COMMITS, POSTGRES_COMMITS,
                                                     READ_COMMITTED, STALE_GENERATION, ZOMBIE_FENCED)
            from effectively_once.measure import IDEMPOTENT, PLAIN, measure_idempotence_cost
            from effectively_once.stack import attach_or_start
            from effectively_once.theory import channel
            from effectively_once.widgets.message_loss import diagram_svg

            SEED = 3
            MESSAGE_LOSS, ACK_LOSS, RETRIES = 0.1, 0.2, 5
        """),
        md("""
            The live parts of this notebook run against your stack. The next cell attaches to the running one
            (or starts a private one); what it prints depends on your machine, so nbval does not compare it.
        """),
        ignore_output("""
            stack = attach_or_start()
            print(f"broker: {stack.broker_flavor} ({stack.backend} backend)")
        """),
        md("""
            ## 1. A retry is a second copy

            A producer sends a batch and waits for the broker's acknowledgement. If none comes, it cannot tell
            *the batch was lost* from *the batch was stored and the answer was lost*: it is the Two Generals'
            problem of notebook 01 on a single hop. So it sends again, and if it was the answer that got lost,
            the broker now holds the record twice.

            The simulation of notebook 02 isolates that leg. Every message below meets the same losses twice:
            once with a plain retrying producer, once with an idempotent one.
        """),
        code("""
            draws = channel.draw(10_000, MESSAGE_LOSS, ACK_LOSS, max_retries=RETRIES, seed=SEED)
            producers = {"plain": channel.AT_LEAST_ONCE.with_retries(RETRIES),
                         "idempotent": channel.IDEMPOTENT_PRODUCER.with_retries(RETRIES)}
            totals = {name: channel.simulate(draws, sem) for name, sem in producers.items()}
            copies = {name: channel.per_message(draws, sem)["copies"] for name, sem in producers.items()}

            print(f"{draws.n_messages} messages, message loss {MESSAGE_LOSS}, ack loss {ACK_LOSS}, seed {SEED}")
            print(f"{'producer':<11} {'sends':>6} {'copies stored':>14} {'messages stored 2+ times':>25} {'retries dropped':>16}")
            for name, t in totals.items():
                print(f"{name:<11} {t.network_sends:>6} {t.stored_copies:>14} {int((copies[name] > 1).sum()):>25} "
                      f"{t.broker_dropped:>16}")
        """),
        md("""
            Read the *sends* column first: it is the same for both. Idempotence does not stop the producer from
            retrying (it must retry, or lost batches would stay lost); it lets the broker recognise the retry.
        """),
        code("""
            plain, idem = totals["plain"], totals["idempotent"]
            assert plain.network_sends == idem.network_sends, "both producers retried exactly as often"
            assert (copies["plain"] > 1).sum() > 0, "without idempotence some retries stored a second copy"
            assert copies["idempotent"].max() == 1, "with idempotence every message is stored at most once"
            assert idem.broker_dropped == plain.stored_copies - idem.stored_copies, \\
                "every extra copy of the plain producer is a retry the idempotent broker dropped"
        """),
        md("""
            One message's life under both producers, as sequence diagrams. The first send is stored, its
            acknowledgement is lost, the producer times out and sends again. Without idempotence the retry is
            stored as a second copy (red) and the consumer charges twice; with it the broker drops the retry
            (purple) and acknowledges again.
        """),
        code("""
            s, r = draws.sends, draws.redeliveries
            clean_retry = (s[:, 0] == channel.STORED_ACK_LOST) & (s[:, 1] == channel.STORED_ACKED) & (r[:, :2] == 0).all(axis=1)
            example = int(clean_retry.argmax())
            for semantics in (channel.AT_LEAST_ONCE, channel.IDEMPOTENT_PRODUCER):
                events = channel.message_events(draws, semantics, example)
                display(HTML(diagram_svg(events, len(events), title=semantics.name)))
        """),
        code("""
            kinds = {sem.name: [e.kind for e in channel.message_events(draws, sem, example)]
                     for sem in (channel.AT_LEAST_ONCE, channel.IDEMPOTENT_PRODUCER)}
            assert kinds["at-least-once"].count("stored") == 2 and kinds["at-least-once"].count("process") == 2
            assert kinds["at-least-once + idempotent producer"].count("stored") == 1
            assert "dropped_duplicate" in kinds["at-least-once + idempotent producer"]
        """),
        md("""
            ## 2. How the broker recognises a retry

            With `enable.idempotence=true` the producer first asks the broker for a **producer id** and an
            **epoch** (the `InitProducerId` request). Every batch it then sends to a partition carries
            `(producer id, epoch, base sequence, record count)`; sequences count records per partition from 0.
            For each producer id and partition the broker remembers the next sequence it expects:

            | the batch's base sequence | the broker | the producer hears |
            |---|---|---|
            | equal to the next expected | appends it, advances the expected sequence | the new offset |
            | lower (already appended) | does **not** append it again | success, with the first copy's offset |
            | higher (a gap: an earlier batch is missing) | refuses it | `OUT_OF_ORDER_SEQUENCE_NUMBER` |
            | any, but from an older epoch | refuses it | the producer is fenced |

            The broker keeps the metadata of the last five batches per producer and partition, which is why an
            idempotent producer may have at most five requests in flight (`max.in.flight.requests.per.connection
            <= 5`) and needs `acks=all`: an acknowledgement must mean the record survives a leader change with
            its sequence. You will write this rule as a function in the lab.

            Now the real thing. librdkafka will not resend a batch on request, so the probe speaks the Kafka
            protocol itself: it takes a producer id, sends **one batch twice, byte for byte** (what a client does
            after a lost response), then does the same with a batch that carries no producer id. A
            `read_committed` consumer then counts the copies of each record.
        """),
        code("""
            idem_check = guarantees.check_idempotent_producer(stack)
            copies_of = lambda counts: sorted(set(counts.values()))
            print("records from an idempotent acks=all client, copies of each:", copies_of(idem_check.seen["client_records"]))
            print("one batch sent twice WITH a producer id and sequence 0:      ", copies_of(idem_check.seen["retried_batch"]))
            print("the same resend WITHOUT a producer id (control):             ",
                  copies_of(idem_check.seen["control_without_producer_id"]))
        """),
        code("""
            assert idem_check.holds, idem_check.evidence
            assert copies_of(idem_check.seen["retried_batch"]) == [1], "the resent batch was stored once"
            assert copies_of(idem_check.seen["control_without_producer_id"]) == [2], \\
                "the control proves the check can see a duplicate: without a producer id the resend is stored twice"
        """),
        md("""
            What the broker *answered* to the resend differs between brokers, and both are correct: Apache Kafka
            answers as if the first send had just succeeded (error 0, the first copy's offset); Tansu answers
            error 46, `DUPLICATE_SEQUENCE_NUMBER`, which clients also treat as "already stored". The answers on
            your broker:
        """),
        ignore_output("""
            (first, first_offset), (again, again_offset) = idem_check.seen["resend_answers"]
            print(f"first send: error {first}, offset {first_offset}; resend: error {again}, offset {again_offset}")
            print(idem_check.evidence)
        """),
        code("""
            assert idem_check.seen["resend_answers"][0][0] == 0, "the first send of the batch was accepted"
        """),
        md("""
            ## 3. What idempotence costs here

            The lesson quotes a cost of about 3% for the idempotent producer. The cost comes from the producer
            id handshake (once per producer), the sequence bookkeeping on both sides, and the cap of five
            requests in flight. The next cell measures it on *this* broker: the same seeded charge messages,
            sent with and without idempotence (`acks=all` in both, so the only difference is the sequence
            numbers), alternating modes round after round, and compares the median throughputs.

            A local broker on a small shared machine is noisy: single runs swing by more than the effect, so
            read the ratio of the medians, not any single run, and expect it to move from one execution to the
            next. nbval does not compare this output. For a longer measurement run
            `python -m effectively_once.measure --rounds 9` in a terminal.
        """),
        ignore_output("""
            cost = measure_idempotence_cost(stack, messages=10_000, rounds=5, seed=SEED)
            print(cost.as_text())
        """),
        md("""
            Speed is noise here; delivery is not. Every record of every run, in both modes, must have been
            acknowledged by the broker:
        """),
        code("""
            assert len(cost.of(IDEMPOTENT)) == len(cost.of(PLAIN)) == 5, "five runs in each mode"
            assert cost.all_acknowledged, [r for r in cost.runs if r.acknowledged != r.sent or r.errors]
        """),
        md("""
            ## 4. Transactions and `read_committed`

            Idempotence is per partition and per producer session. A **transaction** goes further: a producer
            with a `transactional.id` (which requires idempotence) writes to several partitions, and adds the
            consumer's offsets to the same transaction, so that *what it read* and *what it wrote* commit or
            abort together:

            ```python
            producer.init_transactions()            # fences any older producer with the same transactional.id
            producer.begin_transaction()
            producer.produce("out", value=result)   # records land in the log right away, marked as pending
            producer.send_offsets_to_transaction(consumer.position(partitions), consumer.consumer_group_metadata())
            producer.commit_transaction()           # or abort_transaction()
            ```

            Records of a transaction are written to the log immediately. At the end, the **transaction
            coordinator** writes a *commit* or *abort* marker into every partition the transaction touched.
            A consumer with `isolation.level=read_committed` reads only up to the first record of a transaction
            that is still open (the *last stable offset*) and skips the records of aborted transactions;
            `read_uncommitted` sees everything.

            Three more promises ride on the `transactional.id`:

            - **zombie fencing**: when a restarted producer calls `init_transactions` with the same id, the
              coordinator bumps the epoch, aborts the old instance's open transaction, and refuses anything the
              old instance (the zombie) sends afterwards;
            - **generation fencing** (KIP-447): the consumer-group metadata passed with the offsets lets the
              group coordinator refuse an offset commit from a member that lost its partitions in a rebalance;
            - together they make Kafka's *exactly-once* for a read-process-write loop that stays inside Kafka.
        """),
        md("""
            ## 5. Which of these promises does your broker keep?

            Promises are cheap; the probe checks each one live, in a few seconds, and records what a consumer
            (or the group coordinator) actually did. It runs twice, side by side: on your broker, and on a
            second broker of the other kind that the next cell starts privately for a few seconds and stops
            again. On Apache Kafka (the `embedded` and `docker` backends) the second one is Tansu, the light
            fallback; on Tansu it is an embedded Apache Kafka. The evidence in the table (offsets, member ids)
            changes from run to run, so nbval does not compare it; the assertions after it check the verdicts.
        """),
        ignore_output("""
            comparison = guarantees.compare_brokers(stack, progress=print)
            report = comparison[stack.broker_flavor]  # your broker's report, used for the rest of this notebook
            display(comparison)
        """),
        md("""
            **On Apache Kafka 4.4** all four hold: the aborted records stay hidden, the zombie's commit is
            refused with its records never shown, and the stale offset commit is rejected.

            **On Tansu** only the idempotent producer holds. The other three fail, and each failure has a
            concrete meaning for a consumer:

            - *read_committed shows aborted records*: a consumer acts on records whose producer took them back.
              When a transactional producer aborts and retries, the consumer sees the work **twice** (the
              aborted attempt and the committed retry), with the same message ids.
            - *the zombie is not fenced*: after a rolling restart the old instance's records are delivered next
              to its successor's. Both did the same work, so again the consumer sees **duplicates**: this is the
              Slack 2022 incident you will replay in notebook 06.
            - *a stale generation can commit offsets*: a consumer that lost its partitions in a rebalance can
              still move their committed offsets. Its commit covers records it did process, but it can move the
              offset back under the new owner, which then **redelivers** them.

            None of these breaks the course's end-to-end invariant (no charge lost, none charged twice), because
            the invariant does not rest on them. Every one of these failures turns into *the same message
            delivered again*, and the consumer already expects that from plain at-least-once delivery: it
            inserts the `msg_id` into its dedup table in PostgreSQL before acting, commits its Kafka offset only
            after the database says 'done', and calls the payment provider with an Idempotency-Key derived from
            the `msg_id`. Broker guarantees lower how often the dedup table is hit; they do not decide whether a
            card is charged twice. Notebook 04 checks that invariant on whichever broker you run.
        """),
        code("""
            verdicts = comparison.holds()
            if "apache-kafka" in verdicts:
                assert verdicts["apache-kafka"] == {IDEMPOTENT_PRODUCER: True, READ_COMMITTED: True,
                                                    ZOMBIE_FENCED: True, STALE_GENERATION: True}, verdicts
            if "tansu" in verdicts:
                assert verdicts["tansu"] == {IDEMPOTENT_PRODUCER: True, READ_COMMITTED: False, ZOMBIE_FENCED: False,
                                             STALE_GENERATION: False}, verdicts
            holds = report.holds()
            if stack.broker_flavor == "apache-kafka":
                expected = {IDEMPOTENT_PRODUCER: True, READ_COMMITTED: True, ZOMBIE_FENCED: True, STALE_GENERATION: True}
            elif stack.broker_flavor == "tansu":
                expected = {IDEMPOTENT_PRODUCER: True, READ_COMMITTED: False, ZOMBIE_FENCED: False, STALE_GENERATION: False}
            else:  # an external cluster of another kind: only the idempotent producer is required by the course
                expected = dict(holds, **{IDEMPOTENT_PRODUCER: True})
            assert holds == expected, f"on {stack.broker_flavor} the probe gave {holds}, expected {expected}"
        """),
        md("""
            The failures are not a verdict without evidence: each check carries the records a consumer saw. On
            Tansu, the aborted records sit right before the committed ones; on Apache Kafka, only the committed
            ones appear:
        """),
        ignore_output("""
            for flavor_report in comparison.reports:
                seen = flavor_report[READ_COMMITTED].seen
                print(f"-- a read_committed consumer on {flavor_report.broker_flavor}:")
                for value in seen["seen"]:
                    print("   aborted  " if value in seen["aborted"] else "   committed", value)
        """),
        code("""
            for flavor_report in comparison.reports:
                seen = flavor_report[READ_COMMITTED].seen
                leaked = [v for v in seen["seen"] if v in seen["aborted"]]
                assert (leaked == []) == flavor_report[READ_COMMITTED].holds, "the verdict follows from what the consumer saw"
                assert [v for v in seen["seen"] if v in seen["committed"]] == seen["committed"], \\
                    "on every broker the committed records all arrived, in order"
        """),
        md("""
            ## 6. Kafka's transaction ends at Kafka's edge

            The lesson's first question: *why can Kafka's exactly-once not extend to an external PostgreSQL?*
            Because the transaction coordinator's commit spans only what it can write markers into: Kafka
            partitions and the consumer-offsets topic. PostgreSQL is not a participant. Nothing prepares it,
            nothing tells it the outcome, and its own `COMMIT` is a separate decision that Kafka never sees.
            Two separate decisions can come out differently: a crash between them, or a failure in either one,
            leaves them disagreeing.

            The next cell runs both orders for real, with a transactional producer and a PostgreSQL connection
            side by side:

            - **Kafka commits, PostgreSQL rolls back**: the charge is published, then the database
              transaction fails before its `COMMIT` (as if the process died there);
            - **PostgreSQL commits, Kafka aborts**: the row is committed, then the Kafka transaction is aborted.
        """),
        ignore_output("""
            split = guarantees.kafka_txn_vs_postgres(stack)
            display(split)
        """),
        code("""
            for scenario in (KAFKA_COMMITS, POSTGRES_COMMITS):
                s = split[scenario]
                print(f"{scenario:<38} Kafka holds {len(s.kafka_holds)} charge(s), PostgreSQL holds "
                      f"{len(s.postgres_holds)}: {'agree' if s.agree else 'DISAGREE'}")
        """),
        code("""
            assert split[KAFKA_COMMITS].kafka_holds and not split[KAFKA_COMMITS].postgres_holds, \\
                "Kafka kept a charge that PostgreSQL rolled back"
            assert split[POSTGRES_COMMITS].postgres_holds and not split[POSTGRES_COMMITS].kafka_holds, \\
                "PostgreSQL kept a charge whose Kafka transaction was aborted"
            assert not any(s.agree for s in split.scenarios), "both orders end in disagreement"
        """),
        md("""
            No setting on the broker closes that gap; a distributed transaction (XA) would, at a price no one
            pays on a hot path. The course closes it the other way round: let Kafka deliver at least once, make
            the database write idempotent (the dedup table keyed by `msg_id`, in the *database's* transaction),
            and commit the Kafka offset only after the database commit. A crash between the two then means a
            redelivery that the dedup table absorbs, never a lost or doubled charge. The opposite direction,
            a database change that must reach Kafka, is the outbox pattern's job.

            ## Summary

            - A producer cannot tell a lost batch from a lost acknowledgement, so it retries; without a producer
              id the retry is a second copy. With one, the broker matches the sequence number and drops it. You saw
              both on the wire: the same resend stored once with a producer id, twice without.
            - Idempotence costs some throughput; on a small local broker the measured ratio is mostly noise
              around the true cost, while every record was acknowledged in both modes.
            - Transactions add atomic multi-partition writes with offsets, `read_committed`, zombie fencing and
              generation fencing. Apache Kafka keeps all of them; Tansu keeps only idempotence, and each of its
              three failures shows up to a consumer as a redelivery, which the consumer's dedup must absorb anyway.
            - Kafka's transaction cannot include PostgreSQL: you watched each commit while the other rolled back.

            **Next:** `04_kill_the_consumer.ipynb` kills the payment consumer at every step.
            **Exercises:** `labs/03_kafka_guarantees.ipynb` (solutions in `solutions/03_kafka_guarantees.ipynb`):
            write the broker's sequence check, then make a consumer correct on a broker whose `read_committed`
            leaks.
        """),
    ]


def solutions_03():
    return [
        md("""
            # Exercises for 03 · What Kafka guarantees

            Two exercises. The first is pure logic: the broker's rule for an idempotent producer's batches. The
            second is live: records a `read_committed` consumer receives on your broker, and the consumer-side
            step that makes the result right on any broker. Write your code where a cell raises
            `NotImplementedError`, then run the check cell after it.

            **Time:** about 25 minutes.
        """),
        code("""
            from collections import namedtuple

            from effectively_once.stack import attach_or_start
            from effectively_once.theory import channel

            SEED = 3
            Batch = namedtuple("Batch", "producer_id epoch partition base_sequence record_count")
            ACCEPT, DUPLICATE, OUT_OF_ORDER, FENCED = "accept", "duplicate", "out_of_order", "fenced"
        """),
        md("""
            ## Exercise 1: the broker's sequence check

            Write `verdicts(batches)`: the batches arrive at a broker in this order; return, for each, what the
            broker does with it. The broker keeps, for each `(producer_id, partition)`, the current epoch and the
            next sequence it expects. For a batch of that producer on that partition:

            - an **older epoch** than the current one: `FENCED` (a zombie);
            - a **newer epoch**, or the first batch ever seen: it must start at sequence 0 (`ACCEPT`, and it
              becomes the current epoch), else `OUT_OF_ORDER`;
            - the same epoch: base sequence equal to the next expected is `ACCEPT`; lower is `DUPLICATE` (already
              appended); higher is `OUT_OF_ORDER` (a batch in between is missing).

            Only an accepted batch changes the state: the next expected sequence becomes
            `base_sequence + record_count`.
        """),
        code('''
            def verdicts(batches):
                """What the broker does with each batch, in arrival order: ACCEPT, DUPLICATE, OUT_OF_ORDER or FENCED."""
                out = []
                ### BEGIN SOLUTION
                # HINT: keep a dict {(producer_id, partition): (epoch, next_sequence)} and compare each batch with its entry.
                state = {}
                for b in batches:
                    key = (b.producer_id, b.partition)
                    epoch, expected = state.get(key, (None, 0))
                    if epoch is not None and b.epoch < epoch:
                        out.append(FENCED)
                        continue
                    if epoch is None or b.epoch > epoch:
                        expected = 0
                    if b.base_sequence == expected:
                        state[key] = (b.epoch, expected + b.record_count)
                        out.append(ACCEPT)
                    elif b.base_sequence < expected:
                        out.append(DUPLICATE)
                    else:
                        out.append(OUT_OF_ORDER)
                ### END SOLUTION
                return out
        '''),
        check("""
            cases = {
                "two batches in order": ([Batch(7, 0, 0, 0, 3), Batch(7, 0, 0, 3, 2)], [ACCEPT, ACCEPT]),
                "a retried batch (its ack was lost)": ([Batch(7, 0, 0, 0, 3), Batch(7, 0, 0, 0, 3)], [ACCEPT, DUPLICATE]),
                "a gap, then the missing batch, then the one after it":
                    ([Batch(7, 0, 0, 0, 3), Batch(7, 0, 0, 5, 2), Batch(7, 0, 0, 3, 2), Batch(7, 0, 0, 5, 2)],
                     [ACCEPT, OUT_OF_ORDER, ACCEPT, ACCEPT]),
                "sequences count per partition": ([Batch(7, 0, 0, 0, 3), Batch(7, 0, 1, 0, 3)], [ACCEPT, ACCEPT]),
                "sequences count per producer": ([Batch(7, 0, 0, 0, 3), Batch(8, 0, 0, 0, 1)], [ACCEPT, ACCEPT]),
                "a first batch must start at 0": ([Batch(7, 0, 0, 4, 1)], [OUT_OF_ORDER]),
                "a new epoch restarts at 0 and fences the old one":
                    ([Batch(7, 0, 0, 0, 3), Batch(7, 1, 0, 0, 2), Batch(7, 0, 0, 3, 1), Batch(7, 1, 0, 2, 1)],
                     [ACCEPT, ACCEPT, FENCED, ACCEPT]),
                "a new epoch that does not start at 0": ([Batch(7, 0, 0, 0, 3), Batch(7, 1, 0, 3, 1)], [ACCEPT, OUT_OF_ORDER]),
                "a rejected batch changes nothing": ([Batch(7, 0, 0, 2, 1), Batch(7, 0, 0, 0, 2)], [OUT_OF_ORDER, ACCEPT]),
            }
            for name, (batches, want) in cases.items():
                got = verdicts(batches)
                assert got == want, f"{name}: for {batches} you returned {got}, the broker does {want}"

            # The simulated idempotent producer of notebook 03: one batch of one record per send that reached the broker.
            draws = channel.draw(2_000, 0.1, 0.2, max_retries=5, seed=SEED)
            arrived = channel.per_message(draws, channel.IDEMPOTENT_PRODUCER)["arrived"]
            assert arrived.min() >= 1, "every message reached the broker at least once at this seed"
            sends = [Batch(1, 0, 0, seq, 1) for seq, n in enumerate(arrived.tolist()) for _ in range(n)]
            got = verdicts(sends)
            expected = channel.simulate(draws, channel.IDEMPOTENT_PRODUCER)
            assert got.count(ACCEPT) == draws.n_messages and got.count(DUPLICATE) == expected.broker_dropped, (
                f"on the simulated sends you accepted {got.count(ACCEPT)} and flagged {got.count(DUPLICATE)} "
                f"duplicates; the broker stores {draws.n_messages} and drops {expected.broker_dropped}")
            print(f"Exercise 1 passed: {len(cases)} cases, and {expected.broker_dropped} simulated retries dropped.")
        """),
        md("""
            ## Exercise 2: correct on a broker whose `read_committed` leaks

            A transactional producer publishes three charges, flushes them to the broker, and aborts (think: it
            crashed before committing). Restarted, it publishes the **same** three charges again and commits. A
            `read_committed` consumer then reads the topic. On Apache Kafka it sees each charge once; on Tansu,
            whose `read_committed` check failed in notebook 03, it also sees the aborted attempt.

            The next two cells run that on your broker. They create a topic and a database, which the last cell
            of this notebook removes.
        """),
        code("""
            import json

            import psycopg
            from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

            from effectively_once.stack import new_run_id, quiet_logger

            stack = attach_or_start(progress=lambda *_: None)
            run = new_run_id()
            topic = stack.create_topic(f"nb03-exercise-{run}", partitions=1)
            db_name = f"nb03_exercise_{run}"
            dsn = stack.create_database(db_name)
            charges = [{"msg_id": f"msg-{i}", "amount": amount} for i, amount in enumerate((1200, 550, 9900))]

            producer = Producer(stack.producer_config(**{"transactional.id": stack.topic(f"nb03-exercise-{run}"),
                                                         "logger": quiet_logger()}))
            producer.init_transactions(10)
            for outcome in ("abort", "commit"):
                producer.begin_transaction()
                for charge in charges:
                    producer.produce(topic, key=charge["msg_id"].encode(), value=json.dumps(charge).encode(), partition=0)
                producer.flush(10)  # the records are on the broker before the transaction is decided
                if outcome == "abort":
                    producer.abort_transaction(10)
                else:
                    producer.produce(topic, key=b"end", value=b"{}", partition=0)  # marks the end of the log
                    producer.commit_transaction(10)
        """),
        md("""
            The consumer reads until the end marker committed after the charges: everything before it in the
            log has then been either delivered or hidden.
        """),
        code("""
            consumer = Consumer(stack.consumer_config(**{"group.id": stack.group(f"nb03-exercise-{run}"),
                                                         "isolation.level": "read_committed", "logger": quiet_logger()}))
            consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
            received = []
            while True:
                msg = consumer.poll(10)
                assert msg is not None, f"no record within 10 s; received so far: {received}"
                if msg.error():
                    continue
                if msg.key() == b"end":
                    break
                received.append(json.loads(msg.value()))
            consumer.close()
        """),
        ignore_output("""
            print(f"on {stack.broker_flavor}, the read_committed consumer received {len(received)} records:")
            for charge in received:
                print(" ", charge)
        """),
        code("""
            expected_copies = 2 if stack.broker_flavor == "tansu" else 1
            assert stack.broker_flavor not in ("tansu", "apache-kafka") or len(received) == expected_copies * len(charges), \\
                f"{stack.broker_flavor} delivered {len(received)} records"
        """),
        md("""
            Write `apply_charges(conn, records)`, the consumer's step: record each charge in the `charges` table
            **once per `msg_id`**, whatever the broker delivers, and return `(applied, skipped)`: how many
            records were new and how many were already there. Let PostgreSQL decide, in its own transaction:
            `INSERT ... ON CONFLICT (msg_id) DO NOTHING` inserts a row or nothing, and the cursor's `rowcount`
            says which. A set in memory would not do: it forgets everything when the consumer restarts, and the
            redelivery after a restart is exactly when the check matters.
        """),
        code("""
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute("CREATE TABLE charges (msg_id text PRIMARY KEY, amount integer NOT NULL)")
        """),
        code('''
            def apply_charges(conn, records):
                """Insert each record's charge once per msg_id; return (applied, skipped)."""
                applied = skipped = 0
                ### BEGIN SOLUTION
                # HINT: INSERT INTO charges (msg_id, amount) VALUES (%s, %s) ON CONFLICT (msg_id) DO NOTHING; rowcount is 1 or 0.
                with conn.transaction():
                    for record in records:
                        cursor = conn.execute(
                            "INSERT INTO charges (msg_id, amount) VALUES (%s, %s) ON CONFLICT (msg_id) DO NOTHING",
                            (record["msg_id"], record["amount"]))
                        if cursor.rowcount == 1:
                            applied += 1
                        else:
                            skipped += 1
                ### END SOLUTION
                return applied, skipped
        '''),
        check("""
            with psycopg.connect(dsn, autocommit=True) as conn:
                first = apply_charges(conn, received)
                again = apply_charges(conn, received)  # a restart before the offset commit: everything redelivered
                rows = conn.execute("SELECT msg_id, amount FROM charges ORDER BY msg_id").fetchall()
            want = sorted((c["msg_id"], c["amount"]) for c in charges)
            assert rows == want, f"the charges table should hold each charge once, {want}, but holds {rows}"
            assert first == (len(charges), len(received) - len(charges)), (
                f"on the first delivery {len(charges)} records are new and {len(received) - len(charges)} are "
                f"repeats, but apply_charges returned (applied, skipped) = {first}")
            assert again == (0, len(received)), \\
                f"on redelivery every record is already in the table: expected (0, {len(received)}), got {again}"
            print(f"Exercise 2 passed: {len(rows)} charges recorded once each, and a full redelivery changed nothing.")
        """),
        md("""
            The same function gives the right table on both brokers. On Tansu it absorbed the aborted attempt;
            on Apache Kafka it had nothing to absorb until the redelivery. That is the course's point about
            broker guarantees: useful, and not what correctness rests on.

            Clean up the topic and the database:
        """),
        code("""
            stack.delete_topics(topic)
            stack.drop_database(db_name)
        """),
        md("""
            ## Summary

            You wrote the broker's sequence check (accept the next sequence, drop what is already appended,
            refuse gaps and older epochs) and checked it against the simulated producer. Then you made a consumer
            record each charge once even though `read_committed` on Tansu let an aborted transaction through:
            the dedup lives in the database, keyed by `msg_id`, so it survives restarts and any broker.
        """),
    ]


TARGETS = {
    "notebooks/03_kafka_guarantees.ipynb": notebook_03,
    "solutions/03_kafka_guarantees.ipynb": solutions_03,
}


if __name__ == "__main__":
    sys.exit(build_targets(TARGETS, sys.argv[1:]))
