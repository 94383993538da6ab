"""Build notebook 05 (observability of delivery semantics) and its exercise notebook.

    EO_HOME=... .venv/bin/python -m effectively_once up --backend embedded
    EO_HOME=... .venv/bin/python tools/build_05.py            # both, executed against that stack
    EO_HOME=... .venv/bin/python tools/build_05.py solutions  # only the ones whose path starts with this

Then run ``tools/make_labs.py`` to regenerate ``labs/``.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from build_notebooks import build_targets, check, code, ignore_output, md  # noqa: E402


def notebook_05():
    return [
        md("""
            # 05 · Watching delivery semantics: metrics, alerts, traces

            **You will learn**
            - which six numbers tell you, before a customer does, that messages are being redelivered, lost in a
              dead-letter queue or retried too often, and how a consumer serves them to Prometheus;
            - what a consumer crash looks like on those numbers: lag climbs, the dedup hit rate spikes, and the
              ledger still shows every payment once; then a dead-letter queue filling and its alert firing;
            - how one trace id per message, carried from the producer through the consumer to the provider,
              shows a duplicate as two consumer spans in one trace.

            **Time:** about 25 minutes (the live part runs for about a minute). Needs the broker and PostgreSQL:
            `make lab` starts them, or this notebook starts a private set.
        """),
        code("""
            import shutil
            import tempfile
            from pathlib import Path

            import matplotlib
            import matplotlib.pyplot as plt
            import psycopg

            from effectively_once.observe import alerts, metrics
            from effectively_once.observe.dashboard import plot_dashboard
            from effectively_once.observe.scrape import LAG_FROM_WATERMARKS, Recorder, high_watermarks, scrape
            from effectively_once.observe.spans import find_duplicate_traces, load_spans
            from effectively_once.observe.workload import kill_one, steady_load, wait_for_lag
            from effectively_once.payments.lab import PaymentLab, Table
            from effectively_once.payments.producer import charge_records, send_records
            from effectively_once.stack import attach_or_start, new_run_id

            SEED = 5
            RATE = 30                # charges per second, in every phase
            QUICK_MS, SLOW_MS = 10, 80  # the provider's added latency: normal, then during the incident
            matplotlib.rcParams["figure.dpi"] = 80
        """),
        ignore_output("""
            stack = attach_or_start()
            print(f"broker: {stack.broker_flavor} ({stack.backend} backend)")
        """),
        md("""
            ## 1. The six numbers

            The lesson names three metrics of the broker and three of each consumer:

            | metric | what it counts | healthy |
            |---|---|---|
            | `consumer_lag_messages` | records published that the group has not committed past, per partition | flat |
            | `dlq_depth` | records waiting in the dead-letter queue, by source queue | 0 |
            | `dlq_age_seconds_p99` | how long they have waited | under an hour |
            | `dedup_check_hit_rate` | dedup INSERTs blocked by the UNIQUE constraint, over all of them | near 0 |
            | `side_effect_duration_p99` | the provider call, retries included | below any timeout |
            | `retry_count_p99` | retries a provider call needed | low |

            Every consumer in this course can serve its own three, plus counters and histograms underneath
            them, on an HTTP `/metrics` endpoint in Prometheus' text format (`--metrics-port`). It also writes a
            span per message to a file (`--spans-file`), which section 5 reads.

            The next cell builds the pipeline of notebook 04 (its own topic, shop database and provider), starts
            two consumers in one group with both layers on, and sends a few charges through.
        """),
        ignore_output("""
            workdir = Path(tempfile.mkdtemp(prefix="eo-05-"))
            spans_file = workdir / "spans.jsonl"
            OBSERVED = dict(metrics_port=0, metrics_window=2.0, spans_file=spans_file)

            lab = PaymentLab(stack, run_id="nb05")
            lab.start_provider(latency_ms=QUICK_MS)
            for _ in range(2):
                lab.start_consumer(exit_when_idle=None, **OBSERVED)
            lab.produce(20, seed=SEED)
            wait_for_lag(lab, 0)
            pages = [scrape(c.wait_for_metrics()) for c in lab.consumers]
            print("scraped", [p.url for p in pages])
            print("the lesson's metrics a consumer serves:", sorted(n for n in pages[0].names() if n in metrics.METRIC_NAMES))
        """),
        md("""
            A consumer can only speak for itself. It serves the three per-consumer metrics and its own view of the
            lag; the DLQ's depth and age belong to the broker, and so does the lag that matters (when a consumer
            dies, its endpoint dies with it, right when lag grows). So the dashboard below reads those from the
            broker.
        """),
        code("""
            served = set(pages[0].names())
            for name in (metrics.DEDUP_CHECK_HIT_RATE, metrics.SIDE_EFFECT_DURATION_P99, metrics.RETRY_COUNT_P99,
                         "dedup_checks_total", "dedup_check_hits_total", "side_effect_duration_seconds_count"):
                assert name in served, f"{name} is missing from /metrics"
            assert sum(p.total("dedup_checks_total") for p in pages) == 20, "one dedup check per warm-up charge"
            print("served, among others: the lesson's three, dedup_checks_total, dedup_check_hits_total, "
                  "side_effect_duration_seconds (a histogram)")
        """),
        md("""
            ## 2. Steady state

            A `Recorder` now samples every live consumer's `/metrics` four times a second, and the broker too:
            the group's committed offsets and the dead-letter topic. The hit rate at each sample is the hits of the
            last two seconds over the checks of the same two seconds (PromQL would write
            `rate(dedup_check_hits_total[2s]) / rate(dedup_checks_total[2s])`).

            For six seconds the shop publishes charges at a steady rate and two consumers keep up.
        """),
        ignore_output("""
            recorder = Recorder.for_lab(lab).start()
            phases = []
            t = recorder.mark("steady")
            counts = steady_load(lab, 6, RATE, seed=SEED + 100, consumer_options=OBSERVED, recorder=recorder)
            phases.append(("steady", t, recorder.mark("steady ends")))
            print(counts)
        """),
        md("""
            ## 3. Consumer instability

            Now the provider slows down (80 ms a call, so batches take longer and lag builds), and the consumers
            have a bad time: one is killed with SIGKILL from outside (an out-of-memory kill), a third consumer that
            crashes right after one of its provider calls joins the group, and another is killed later. A
            supervisor restarts each dead consumer a second after it dies. Every kill loses the work a consumer
            did since its last offset commit, and every change of membership makes the group rebalance.
        """),
        ignore_output("""
            def crash_prone(lab):
                return lab.start_consumer(exit_when_idle=None, crash_at="after_provider_call", crash_on=15, **OBSERVED)

            lab.set_faults(latency_ms=SLOW_MS)
            t = recorder.mark("provider slows down")
            counts = steady_load(lab, 12, RATE, seed=SEED + 200, consumer_options=OBSERVED, recorder=recorder,
                                 actions=[(1.5, "SIGKILL from outside", kill_one),
                                          (3.5, "a crash-prone consumer joins", crash_prone),
                                          (7.0, "SIGKILL from outside", kill_one)])
            lab.set_faults(latency_ms=QUICK_MS)
            phases.append(("instability", t, recorder.mark("instability ends")))
            print(counts)
        """),
        md("""
            ## 4. Poison messages

            Last, a few records that no consumer can ever charge (not JSON, a negative amount, no `msg_id`) arrive
            among the good ones. The consumer sends each to the dead-letter topic with its reason and moves on.
            Then the shop stops publishing and the consumers drain what is left.
        """),
        ignore_output("""
            POISON = [b"not json at all",
                      b'{"msg_id": "m-neg", "customer": "cus_001", "amount": -500, "currency": "usd"}',
                      b'{"customer": "cus_002", "amount": 700, "currency": "usd"}']
            t = recorder.mark("poison arrives")
            counts = steady_load(lab, 5, RATE, seed=SEED + 300, consumer_options=OBSERVED, recorder=recorder,
                                 poison=lambda tick: [POISON[tick // 3]] if tick % 3 == 0 and tick // 3 < len(POISON) else [])
            phases.append(("poison", t, recorder.mark("poison ends")))
            wait_for_lag(lab, 0, timeout=60)
            recorder.mark("drained")
            recorder.stop()
            print(counts, f"{len(recorder.samples)} samples")
            lab.dlq_rows()
        """),
        md("""
            ## 5. The dashboard

            Four panels over the same minute. Shaded: the three phases. Red lines: a consumer died (killed from
            outside or crashed at its crash point); green dotted lines: the supervisor restarted one. The output of
            a plot changes with every run, so the numbers are checked in the cells after it.
        """),
        ignore_output("""
            fig = plot_dashboard(recorder, phases, title=f"payment pipeline on {stack.broker_flavor}")
            plt.show()
        """),
        md("""
            Read it from the top.

            - **Lag** is flat in the steady phase, climbs during the instability (consumers are dead, or waiting for
              the group to rebalance, or stuck behind a slow provider) and falls to zero once the survivors catch
              up.
            - **The hit rate** is exactly zero in the steady phase and spikes after each death: the records the dead
              consumer had processed but not committed are delivered again, to whichever consumer takes over its
              partitions, and the dedup INSERT finds their rows.
            - **`side_effect_duration_p99`** follows the provider's latency.
            - **The DLQ** goes from zero to one record per poison message and stays there; its age grows by one
              second per second, because nobody is draining it.

            The numbers behind the first two claims:
        """),
        code("""
            hit_rate = recorder.series(metrics.DEDUP_CHECK_HIT_RATE)
            lag = recorder.series(metrics.CONSUMER_LAG_MESSAGES)
            (_, s0, s1), (_, i0, i1), (_, p0, p1) = phases
            steady_lag = lag.between(s0, s1).values
            assert max(hit_rate.between(s0, s1).values) < 0.01, "steady state: the hit rate stays near zero"
            assert max(steady_lag) <= 3 * RATE, f"steady state: the lag stays small and flat, got up to {max(steady_lag)}"
            unstable = hit_rate.between(i0, p1)
            assert max(unstable.values) > 0.01, "after the crashes the hit rate spiked above 1 %"
            assert max(lag.between(i0, i1).values) > 2 * max(steady_lag), "the lag grew while consumers were unstable"
            assert lag.values[-1] == 0, "once drained, nothing is left behind"
            print("the hit rate spiked, the lag grew, and then the lag drained to zero")
        """),
        md("""
            And the one number that matters more than all of them: the money. The ledger of the provider has one
            charge per message, and the poison messages are in the DLQ rather than lost. Count them by where they
            came from (source partition and offset), not by DLQ records: writing to the DLQ is at-least-once too.
            A consumer killed after dead-lettering a record and before committing its offset dead-letters it
            again when the record is redelivered.
        """),
        code("""
            report = lab.report()
            assert report.duplicate_charges == 0, f"no charge moved twice, got {report.duplicated[:5]}"
            assert report.lost_charges == 0, f"no charge was lost, got {report.lost[:5]}"
            sources = {(r["headers"].get("dlq.source_partition"), r["headers"].get("dlq.source_offset"))
                       for r in lab.dlq_records()}
            assert len(sources) == len(POISON), "every poison message is in the dead-letter topic"
            assert report.dlq >= len(POISON), "a dead-letter write is at-least-once too, never fewer"
            assert report.dedup_hits > 0 and report.charges == report.messages - len(POISON)
            print("every good message charged exactly once; redelivered ones were absorbed by the dedup table")
        """),
        md("""
            ### The lesson's question

            *In steady state, a consumer's `dedup_check_hit_rate` suddenly spikes from 0.05 % to 8 % for ten minutes
            outside a deploy window. What is the most likely cause?*

            The plots answer it. The hit rate is not a measure of duplicate *charges* (the ledger has none); it
            measures *redeliveries*: how often the broker hands the consumer a record it has already handled. In
            steady state that almost never happens, so a jump means the broker is redelivering: consumers are
            leaving and rejoining the group (crashes, restarts, a poll loop that exceeds `max.poll.interval.ms`
            behind a slow dependency), each rebalance replaying everything not yet committed; or a bug acknowledges
            too early; or the broker itself misbehaves. Here every spike follows a change in the group (a red line,
            or a consumer joining) and the rebalance it caused. Sustained for
            ten minutes outside a deploy, it is consumer instability, and the dedup table is doing its job: look
            at rebalances and consumer health, not at the dedup code.
        """),
        code("""
            MEMBERSHIP = {"consumer died", "consumer restarted", "SIGKILL from outside", "a crash-prone consumer joins"}
            changes = [t for t, label in recorder.marks if label in MEMBERSHIP]
            spikes = [t for t, v in hit_rate if v > 0.01]
            assert changes and spikes
            assert all(any(0 <= t - c <= 10 for c in changes) for t in spikes), \\
                "every moment of high hit rate came within seconds after the group's membership changed"
            print("every moment of high hit rate followed a change in the group: a death, a join or a restart")
        """),
        md("""
            ### Lag, measured honestly

            `consumer_lag_messages` is defined as the end offset (the *high watermark*) minus the committed offset.
            The dashboard did not use the broker's end offsets, for a reason the dashed line shows: on Tansu, the
            high watermark stops at the first record of the last batch written, short of the end. The blue line
            counts instead the records the producer had acknowledged that the group has not committed past.

            One batch of 30 charges into a fresh topic, and nobody consuming, makes the difference plain:
        """),
        ignore_output("""
            topic = stack.create_topic(f"nb05.lag.{new_run_id()}", partitions=1)
            sent = send_records(stack, topic, charge_records(30, seed=SEED, prefix="lag"))
            ends = high_watermarks(stack.kafka_bootstrap, topic, [0])
            by_acks = sum(1 for s in sent)
            by_watermark = metrics.consumer_lag_messages(ends, {})[0]
            stack.delete_topics(topic)
            print(f"broker {stack.broker_flavor}: lag from acknowledged records {by_acks}, from the high watermark {by_watermark}")
        """),
        code("""
            assert by_acks == 30
            if stack.broker_flavor == "tansu":
                assert by_watermark < by_acks, "Tansu's high watermark falls short of the last record"
            else:
                assert by_watermark == by_acks, "Apache Kafka's high watermark is the next offset to be written"
            wm_lag = recorder.series(LAG_FROM_WATERMARKS)
            assert max(wm_lag.values) <= max(lag.values) + RATE, "both measures tell the same story, give or take"
            print("checked against what the producer knows it published")
        """),
        md("""
            On Apache Kafka both lines agree. On Tansu, a lag alert computed from end offsets would fire late and
            clear early. Whatever the broker, a lag exporter should be checked once against what the producers know
            they published.

            ## 6. Alerts as code

            The lesson's three rules, evaluated on the recorded series (`effectively_once.observe.alerts`):
            any non-zero `dlq_depth`; `dlq_age_seconds_p99` above one hour; `dedup_check_hit_rate` above 1 %
            sustained for five minutes outside a deploy window.
        """),
        ignore_output("""
            series = [recorder.series(metrics.DLQ_DEPTH), recorder.series(metrics.DLQ_AGE_SECONDS_P99), hit_rate]
            firings = alerts.evaluate(series)
            for firing in firings:
                print(firing.message)
        """),
        code("""
            fired = {f.rule for f in firings}
            assert fired == {"DlqNotEmpty"}, f"only the DLQ depth rule fires on this minute, got {fired}"
            dlq_firing = next(f for f in firings if f.rule == "DlqNotEmpty")
            assert dlq_firing.start >= p0, "it fired once the poison arrived, not before"
            print("fired: DlqNotEmpty; silent: DlqMessagesTooOld (the DLQ is seconds old), DedupHitRateHigh")
        """),
        md("""
            The hit-rate rule stayed silent because this whole recording is shorter than its five-minute window: a
            blip is not an incident. Squeeze the window to the notebook's time scale (one second here stands for
            the lesson's five minutes) and it fires during the instability. If those restarts had been a deploy,
            the same rule with the deploy window passed in stays silent: restarts during a deploy are expected to
            replay a few uncommitted records.
        """),
        ignore_output("""
            squeezed = alerts.dedup_hit_rate_alert(hit_rate, window_seconds=1.0)
            during_deploy = alerts.dedup_hit_rate_alert(hit_rate, [(i0, p1 + 10)], window_seconds=1.0)
            for firing in squeezed:
                print(firing.message)
        """),
        code("""
            assert squeezed, "with a one-second window the hit-rate rule fires on the instability"
            assert all(i0 <= f.start <= p1 + 10 for f in squeezed), "and only around the instability"
            assert during_deploy == [], "declared as a deploy, the same restarts raise no alert"
            print("the hit-rate rule fired outside a deploy window and stayed silent inside one")
        """),
        md("""
            ## 7. One message, two spans

            The producer gave each message a W3C `traceparent` header: a new trace per message. Each consumer
            started a span per message as a child of it, and the HTTP call to the provider carried that span as its
            parent, so the provider's ledger stores the same trace id. A normal OpenTelemetry exporter ships a span
            when it ends, which a SIGKILL prevents; the consumers here also wrote a record when each span
            started, so an attempt cut short by a kill shows up as an *unfinished* span.

            A message processed twice is a trace with two consumer spans. `find_duplicate_traces` finds them:
        """),
        ignore_output("""
            spans = load_spans(spans_file)
            duplicates = find_duplicate_traces(spans)
            with psycopg.connect(lab.provider_dsn) as conn:
                ledger = dict(conn.execute(
                    "SELECT msg_id, count(*) FROM ledger WHERE msg_id = ANY(%s) GROUP BY msg_id", (lab.msg_ids,)).fetchall())
                ledger_traces = dict(conn.execute(
                    "SELECT msg_id, trace_id FROM ledger WHERE msg_id = ANY(%s)", (lab.msg_ids,)).fetchall())
            rows = []
            for d in duplicates:
                msg_id = min(d.msg_ids)
                attempts = " then ".join(s.attributes.get("eo.result", "killed mid-way") for s in d.spans)
                rows.append((msg_id, len(d.spans), attempts, ledger.get(msg_id, 0)))
            crashed = [r for r in rows if r[2].startswith("killed mid-way")]
            Table("traces with more than one consumer span (first ones)",
                  ["msg_id", "consumer spans", "what each attempt did", "charges in the ledger"],
                  sorted(crashed)[:3] + sorted(r for r in rows if r not in crashed)[:3])
        """),
        md("""
            Two kinds of rows. *killed mid-way then replayed*: the crash-prone consumer died right after the
            provider charged; the next consumer found the dedup row still `pending`, called the provider again with
            the same Idempotency-Key and got the stored answer back. *charged then skipped*: a consumer finished the
            message but died before committing its offset; the redelivery hit a `done` row and was skipped. Either
            way: two spans, one charge.
        """),
        code("""
            assert duplicates, "the instability produced messages processed twice"
            assert all(len(d.msg_ids) == 1 for d in duplicates), "each duplicate trace is one message"
            assert all(ledger.get(next(iter(d.msg_ids))) == 1 for d in duplicates), "and it was charged once"
            assert any(not d.spans[0].finished and d.spans[-1].attributes.get("eo.result") == "replayed"
                       for d in duplicates), "the crash after the provider call shows as an unfinished span, then a key replay"
            finished = [s for s in spans if s.finished and s.msg_id in ledger_traces]
            assert all(ledger_traces[s.msg_id] == s.trace_id for s in finished), \\
                "the provider recorded each charge under the trace id the message carried"
            print("every message processed twice was charged once, under the trace id it carried")
        """),
        md("""
            Why a trace id rather than, say, the customer and the amount? Two genuine purchases can look identical.
            Among this run's charges some customers bought the same amount twice; each purchase is its own message
            with its own trace, so none is mistaken for a duplicate:
        """),
        code("""
            with psycopg.connect(lab.provider_dsn) as conn:
                lookalikes = conn.execute(
                    "SELECT customer, amount, count(*), count(DISTINCT trace_id) FROM ledger WHERE msg_id = ANY(%s)"
                    " GROUP BY customer, amount HAVING count(*) > 1", (lab.msg_ids,)).fetchall()
            assert lookalikes, "the seeded run has customers charged the same amount twice"
            assert all(n == traces for _, _, n, traces in lookalikes), "each look-alike charge has its own trace"
            print("look-alike purchases: as many traces as charges, none flagged as a duplicate")
        """),
        md("""
            Clean up: stop the consumers and the provider, drop the run's topics and databases, remove the span file.
        """),
        code("""
            lab.stop()
            plt.close("all")
            shutil.rmtree(workdir, ignore_errors=True)
        """),
        md("""
            ## Summary

            - Six numbers watch delivery semantics. A consumer serves its own (hit rate, side-effect p99, retry
              p99) on `/metrics`; lag and the DLQ are read from the broker, because a dead consumer reports
              nothing, and lag from end offsets is only as good as the broker's high watermark.
            - Consumer crashes show as growing lag and a dedup hit-rate spike; the ledger shows no double charge.
              A sustained spike outside a deploy window means the broker is redelivering: look at rebalances.
            - Alert rules are code and are tested on series: the DLQ rule fires on the first poison message; the
              hit-rate rule needs the spike to last, and ignores deploys.
            - A trace id per message makes a duplicate visible as two consumer spans in one trace, told apart from
              two look-alike purchases.

            **Exercises:** `labs/05_observability.ipynb` (solutions in `solutions/05_observability.ipynb`): compute
            the hit rate and the side-effect p99 from a consumer's own events, and write an alert rule for
            `retry_count_p99`.
        """),
    ]


def solutions_05():
    return [
        md("""
            # 05 · Exercises: metrics from events, and an alert rule

            **You will practise**
            - turning a consumer's raw events into the lesson's `dedup_check_hit_rate` and
              `side_effect_duration_p99`, and checking them against PostgreSQL's own arithmetic;
            - writing an alert rule as code for `retry_count_p99` and testing it on known series.

            **Time:** about 20 minutes. Write your code between the marked lines, then run the check cell after it.
        """),
        code("""
            import psycopg

            from effectively_once.observe import metrics
            from effectively_once.observe.alerts import AlertRule
            from effectively_once.observe.metrics import Series
            from effectively_once.payments.lab import PaymentLab
            from effectively_once.stack import attach_or_start

            SEED = 15
        """),
        ignore_output("""
            stack = attach_or_start()
            print(f"broker: {stack.broker_flavor} ({stack.backend} backend)")
        """),
        md("""
            ## A real run to measure

            Thirty charges; the first consumer crashes right after its tenth provider call, a second one finishes the
            job. Every message a consumer took to its end left one row in the shop's `consumer_events` table.
        """),
        ignore_output("""
            lab = PaymentLab(stack, run_id="ex05")
            lab.start_provider(latency_ms=5)
            lab.produce(30, seed=SEED)
            lab.start_consumer(crash_at="after_provider_call", crash_on=10).wait(60)
            lab.run_until_settled(60)
            with psycopg.connect(lab.shop_dsn) as conn:
                cursor = conn.execute("SELECT * FROM consumer_events WHERE topic = %s ORDER BY id", (lab.topic,))
                columns = [d.name for d in cursor.description]
                rows = [dict(zip(columns, row)) for row in cursor.fetchall()]
            print(f"{len(rows)} events; columns: {columns}")
            lab.event_rows(12)
        """),
        md("""
            The numbers you compute below change from run to run (timings, and where the crash falls in a poll
            batch), so the check compares them with the same quantities computed by PostgreSQL.
        """),
        md("""
            ## Exercise 1: the hit rate and the side-effect p99 from events

            Each row says how one message ended: `result` (`charged`, `replayed`, `skipped`, `dead_lettered`),
            `dedup_hit` (the dedup INSERT found an existing row), `side_effect_ms` (the provider call, or NULL when
            there was none).

            Write `event_metrics(rows)` returning `(dedup_check_hit_rate, side_effect_duration_p99)`:

            - the hit rate is the share of dedup checks that hit. Every row is a check, except a malformed record's
              (its `error` starts with `malformed`): it never reached the dedup INSERT;
            - the p99 is the nearest-rank 99th percentile of the provider calls' durations **in seconds**, over the
              rows that made one. `effectively_once.observe.metrics` has `dedup_check_hit_rate` (it takes outcome
              strings, `"inserted"`, `"done"` or `"pending"`) and `side_effect_duration_p99`.
        """),
        code('''
            def event_metrics(rows):
                """(dedup_check_hit_rate, side_effect_duration_p99 in seconds) of consumer_events rows."""
                ### BEGIN SOLUTION
                # HINT: map each row that is a check to "inserted" (no hit), "done" (a hit then skipped) or "pending" (a hit then charged)
                checks = [row for row in rows if not (row["error"] or "").startswith("malformed")]
                outcomes = ["inserted" if not row["dedup_hit"] else "done" if row["result"] == "skipped" else "pending"
                            for row in checks]
                durations = [row["side_effect_ms"] / 1000 for row in rows if row["side_effect_ms"] is not None]
                return metrics.dedup_check_hit_rate(outcomes), metrics.side_effect_duration_p99(durations)
                ### END SOLUTION
        '''),
        md("""
            The check asks PostgreSQL the same questions in SQL: a ratio of counts, and `percentile_disc(0.99)`,
            which is the nearest-rank percentile too.
        """),
        check("""
            with psycopg.connect(lab.shop_dsn) as conn:
                want_rate, want_p99_ms = conn.execute(
                    "SELECT avg(dedup_hit::int) FILTER (WHERE coalesce(error, '') NOT LIKE 'malformed%%'),"
                    "       percentile_disc(0.99) WITHIN GROUP (ORDER BY side_effect_ms)"
                    " FROM consumer_events WHERE topic = %s", (lab.topic,)).fetchone()
            got_rate, got_p99 = event_metrics(rows)
            assert abs(got_rate - float(want_rate)) < 1e-9, \\
                f"dedup_check_hit_rate should be {float(want_rate):.4f} (hits over checks), got {got_rate}"
            assert abs(got_p99 - want_p99_ms / 1000) < 1e-9, (
                f"side_effect_duration_p99 should be {want_p99_ms / 1000:.4f} s (nearest rank, in seconds), "
                f"got {got_p99}")
            assert got_rate > 0, "the crash made redeliveries, so some checks hit"
            print("Exercise 1 passed: your numbers match PostgreSQL's")
        """),
        md("""
            The hit rate is far above the 1 % the lesson tolerates: in a 30-message run, one crash replays a
            whole uncommitted batch. Over a day of traffic the same crash would be a blip.

            ## Exercise 2: an alert on retries

            The lesson says sustained high `retry_count_p99` means unhealthy consumers. Write `retry_alert()`
            returning an `AlertRule` that fires when `retry_count_p99` stays **above 2 retries for 60 seconds**
            (deploys do not matter here). Name it `RetryCountP99High`, and give it a `meaning` that tells the person
            on call what to look at.
        """),
        code('''
            def retry_alert():
                """The alert on sustained high retry_count_p99."""
                ### BEGIN SOLUTION
                # HINT: AlertRule(name, metric, threshold=..., for_seconds=..., meaning=...)
                return AlertRule("RetryCountP99High", metrics.RETRY_COUNT_P99, threshold=2, for_seconds=60,
                                 unit="count", meaning="Provider calls keep failing and being retried: check the "
                                                        "provider's health and rate limits before the DLQ fills")
                ### END SOLUTION
        '''),
        md("""
            The check runs your rule on four series sampled every 10 seconds: a healthy hour, a 30-second blip,
            three minutes at exactly 2 (not above), and three minutes at 4.
        """),
        check("""
            def series(values, start=0.0, step=10.0):
                return Series.from_points(metrics.RETRY_COUNT_P99, [(start + i * step, v) for i, v in enumerate(values)])

            rule = retry_alert()
            assert isinstance(rule, AlertRule), f"retry_alert() should return an AlertRule, got {type(rule).__name__}"
            assert rule.metric == metrics.RETRY_COUNT_P99, f"the rule should watch retry_count_p99, not {rule.metric}"
            assert rule.name == "RetryCountP99High", f"name the rule RetryCountP99High, not {rule.name}"
            healthy = series([0, 1, 0, 1, 1, 0] * 60)
            blip = series([0] * 10 + [4] * 4 + [0] * 10)
            at_threshold = series([2] * 19)
            sustained = series([1] * 6 + [4] * 19 + [1] * 6)
            assert rule.evaluate(healthy) == [], "a healthy hour must not page anyone"
            assert rule.evaluate(blip) == [], "a 30-second blip is shorter than the 60-second window: no alert"
            assert rule.evaluate(at_threshold) == [], "the rule fires strictly above 2 retries, not at 2"
            fired = rule.evaluate(sustained)
            assert len(fired) == 1, f"three minutes at 4 retries should fire once, fired {len(fired)} times"
            assert fired[0].start == 120.0, (
                f"it should fire 60 s after the retries went up (at t=60), that is at t=120; it fired at {fired[0].start}")
            assert rule.meaning, "say in `meaning` what the person on call should look at"
            print("Exercise 2 passed:", fired[0].message)
        """),
        md("""
            Clean up the run:
        """),
        code("""
            lab.stop()
        """),
        md("""
            ## Summary

            The lesson's metrics are small functions over events a consumer already records; what matters is
            counting the right things (a malformed record is not a dedup check) in the right units. An alert rule
            is code too: test it on series you know the answer for, including the blip it must ignore and the
            boundary it must not cross.
        """),
    ]


TARGETS = {
    "notebooks/05_observability.ipynb": notebook_05,
    "solutions/05_observability.ipynb": solutions_05,
}


if __name__ == "__main__":
    sys.exit(build_targets(TARGETS, sys.argv[1:]))
