"""Build notebook 06 (four real incidents, replayed) and its exercise notebook.

    EO_HOME=... .venv/bin/python -m effectively_once up --backend embedded
    EO_HOME=... .venv/bin/python tools/build_06.py            # both, executed against that stack
    EO_HOME=... .venv/bin/python tools/build_06.py solutions  # only the ones whose path starts with this

Then run ``tools/make_labs.py`` to regenerate ``labs/``.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from build_notebooks import build_targets, check, code, ignore_output, md  # noqa: E402


def notebook_06():
    return [
        md("""
            # 06 · Four incidents, replayed

            **You will learn**
            - how four production failures happened (Stripe 2020, AWS SQS 2019, Stripe 2023, Slack 2022), by
              running each one on your stack: first as it went wrong, then with its fix;
            - where each fix lives: a retry that keeps its Idempotency-Key (and the lint rule that checks it), a
              visibility heartbeat or a dedup row, a redrive with a rate limit, a dedup table behind the broker;
            - why the lesson says correctness broke in the consumer or in an operational procedure rather than in
              the broker's guarantee, and the one incident where that needs a footnote.

            **Time:** about 35 minutes. Needs the broker and PostgreSQL: `make lab` starts them, or this notebook
            starts a private set. Running every cell takes about a minute and a half.
        """),
        code("""
            import difflib
            import inspect
            import os
            import subprocess
            import sys
            from pathlib import Path

            import matplotlib
            import matplotlib.pyplot as plt
            from IPython.display import display

            from effectively_once.incidents import slack_zombie, sqs_visibility, stripe2020, stripe2023
            from effectively_once.payments.lab import Table
            from effectively_once.stack import attach_or_start

            SEED = 7
            matplotlib.rcParams["figure.dpi"] = 80
        """),
        md("""
            Attach to your running stack, or start a private one (addresses and timings vary, so nbval does not
            compare this cell's output):
        """),
        ignore_output("""
            stack = attach_or_start()
            print(f"broker: {stack.broker_flavor} ({stack.backend} backend)")
        """),
        md("""
            ## 1. Stripe 2020: the retry that forgot its key

            During a Q4 traffic spike, an internal queue consumer at Stripe charged a small share of customers
            twice; the money was refunded within a day. The consumer did send an Idempotency-Key, on the first
            attempt. When an attempt failed and the consumer retried, the retry went through a different code
            path that built its request without the key. To the payment API a request without a key is a new
            charge.

            The replay uses the course's real consumer process (notebook 04) with its per-message step swapped
            through `--step`: the step is the usual `process_message` (dedup row, provider call, mark done), but
            its provider calls retry in one of two ways. Here is everything that differs between the two:
        """),
        code("""
            bug_source = inspect.getsource(stripe2020.charge_forgetting_the_key_on_retry).splitlines()
            fix_source = inspect.getsource(stripe2020.charge_keeping_the_key).splitlines()
            for line in difflib.unified_diff(bug_source, fix_source, "bug", "fix", lineterm="", n=0):
                if not line.startswith("@@"):
                    print(line)
        """),
        md("""
            The provider is told to fail *after* charging on a quarter of its requests (`fail_after_charge=0.25`,
            its dice seeded): the money moves, then the consumer gets a 500 and cannot know that. Stripe's rate
            was far lower; a high one shows the effect in forty messages. Both layers of the pipeline are on,
            the dedup table and the key, exactly as in production. First the buggy step:
        """),
        ignore_output("""
            bug = stripe2020.replay(stack, fixed=False, messages=40, seed=SEED)
            display(bug)
        """),
        md("""
            The provider's ledger for the three messages charged most often: the first row of each carries the
            key, every later row is a retry that came without one (the charge ids are random, so nbval does not
            compare this table).
        """),
        ignore_output("""
            display(bug.ledger_sample)
        """),
        code("""
            assert bug.duplicate_charges > 0, "with the key dropped on retry, some customers are charged twice"
            assert bug.extra_charges == bug.retries == bug.charges_without_key, \\
                "every retry moved money again, and each of those charges came without a key"
            assert bug.dedup_hits == 0, "the dedup table saw every message once: the duplicates happened inside one handling"
            assert bug.lost_charges == 0 and bug.charged_messages == bug.messages
        """),
        md("""
            Note the last line but one. The dedup table cannot help here: it guards against the *broker*
            delivering a message twice, and the broker delivered each message once. The second charge was made
            by the consumer's own retry loop, between the dedup INSERT and the UPDATE to 'done'. Only the key
            covers that window (trap 2 of notebook 04).

            Now the fixed step, against the same provider faults:
        """),
        ignore_output("""
            fix = stripe2020.replay(stack, fixed=True, messages=40, seed=SEED)
            display(fix)
        """),
        code("""
            assert fix.ok and fix.extra_charges == 0 and fix.charges_without_key == 0, fix.summary()
            assert fix.retries > 0, "the fixed step met failures too"
            assert fix.key_replays == fix.retries, "each retry was answered from the provider's key store, no money moved"
        """),
        md("""
            ### The post-mortem's lint rule

            Stripe's remedy was not only the fix: they hardened a linter rule that flags HTTP POST calls in
            consumer code that do not carry an Idempotency-Key header. The course's version reads the syntax
            tree (it follows aliases, sessions and clients, and headers built in a variable). Run on the file
            that holds both steps, it finds one POST, in the buggy retry path, and nothing in the fixed one:
        """),
        code("""
            findings = stripe2020.lint_steps()
            source_lines = Path(stripe2020.__file__).read_text().splitlines()
            for function, found in findings.items():
                print(f"{function}: {len(found)} finding(s)")
                for finding in found:
                    print("   ", source_lines[finding.line - 1].strip())
                    print("   ", finding.reason)
        """),
        code("""
            assert len(findings["charge_forgetting_the_key_on_retry"]) == 1, findings
            assert findings["charge_keeping_the_key"] == [] and findings["elsewhere"] == [], findings
        """),
        md("""
            In CI it runs as a command, `python -m effectively_once lint PATH...`, which prints `file:line: reason`
            and exits 1 when it finds something (the path in its output depends on where the course lives):
        """),
        ignore_output("""
            linted = subprocess.run([sys.executable, "-m", "effectively_once", "lint", os.path.relpath(stripe2020.__file__)],
                                    capture_output=True, text=True)
            print(linted.stdout, linted.stderr, f"exit status {linted.returncode}", sep="\\n")
        """),
        code("""
            assert linted.returncode == 1 and "charge twice" in linted.stdout
        """),
        md("""
            The rule has a blind spot it admits in its docstring: headers built by a helper function,
            `client.post(url, headers=idempotent_headers(msg))`. It cannot see into the helper, so it reports
            the POST as unverifiable even when the helper sets the key. Closing that gap is the second exercise.

            ## 2. AWS SQS 2019: a delete that did not stick

            An SQS consumer does not take a message; it borrows it. `ReceiveMessage` hides the message for the
            *visibility timeout*, and the consumer must `DeleteMessage` before that runs out, or the queue hands
            the message to another consumer. In 2019 a race in one region made a message come back although its
            delete had completed: a `ChangeMessageVisibility` in flight at the same moment wrote it back. The fix
            shipped in the next SDK release.

            The replay builds a small SQS on PostgreSQL (`SELECT ... FOR UPDATE SKIP LOCKED` over a `visible_at`
            column; each receive issues a new receipt handle, and a stale handle deletes nothing). Ten workers
            run a side effect per message. A tenth of the messages take longer than the 0.3 s visibility
            timeout, which is what the lesson's metric warns about: when `side_effect_duration_p99` exceeds the
            visibility timeout, you will see duplicates.
        """),
        ignore_output("""
            sqs_none = sqs_visibility.replay(stack, None, seed=SEED)
            display(sqs_none)
            sqs_none.plot()
            plt.show()
        """),
        code("""
            assert sqs_none.side_effect_duration_p99 > sqs_none.visibility_timeout
            assert sqs_none.duplicates > 0, "messages that outlast the timeout run again"
            assert sqs_none.stale_deletes > 0, "and their first worker's delete finds its handle stale"
            assert sqs_none.lost == []
        """),
        md("""
            On a time axis, one row per duplicated message: the second worker starts at the black tick, the
            moment the timeout ran out, while the first one is still working.
        """),
        ignore_output("""
            sqs_none.timeline()
            plt.show()
        """),
        md("""
            Two fixes, same messages, same durations. `extend_visibility` runs a heartbeat that calls
            `change_visibility` every third of the timeout while the side effect runs; `dedup` records the message
            id with `INSERT ... ON CONFLICT DO NOTHING` in the same transaction as the side effect, so a second
            delivery finds it done. (The dedup fix covers side effects stored in the same database; a call to
            another system needs an idempotency key, as in section 1.)
        """),
        ignore_output("""
            sqs_fixed = {fix_name: sqs_visibility.replay(stack, fix_name, seed=SEED)
                         for fix_name in ("extend_visibility", "dedup")}
            for result in sqs_fixed.values():
                display(result)
        """),
        code("""
            for name, result in sqs_fixed.items():
                assert result.duplicates == 0 and result.lost == [], (name, result.summary())
                assert result.side_effect_duration_p99 > result.visibility_timeout, "the slow messages were still slow"
            assert sqs_fixed["extend_visibility"].redeliveries == 0 and sqs_fixed["extend_visibility"].visibility_extensions > 0
            assert sqs_fixed["dedup"].absorbed_by_dedup == sqs_fixed["dedup"].redeliveries > 0, \\
                "with dedup the message still comes back; the second delivery finds it done"
        """),
        md("""
            The 2019 race itself is about *how* the visibility is changed. A heartbeat that reads the message
            and writes it back whole can land just after the delete and resurrect it. A single conditional
            `UPDATE ... WHERE receipt_handle = ...` finds no row once the delete has committed. The replay
            forces that interleaving once each way:
        """),
        ignore_output("""
            races = {atomic: sqs_visibility.replay_delete_race(stack, atomic=atomic) for atomic in (False, True)}
            for race in races.values():
                display(race)
        """),
        code("""
            assert races[False].delete_returned and races[False].reappeared and races[False].duplicates == 1
            assert races[True].delete_returned and not races[True].reappeared and races[True].duplicates == 0
        """),
        md("""
            ## 3. Stripe 2023: redrive-all

            During a downstream incident a hot dead-letter queue collected about a million messages. Once the
            incident was over, an operator redrove all of them at once. The source queue received the lot in one
            go, the consumer pool worked through it as fast as it could, and the payment API behind it started
            throttling: rate-limit errors, retries, more load, more throttling.

            The replay is scaled down to run in seconds; the shape is the same:

            | | the incident | the replay |
            |---|---|---|
            | messages in the DLQ | about 1,000,000 | 150 |
            | payment API limit | the account's rate limit | 50 charges/s, then `429` with `Retry-After: 1` |
            | consumer pool | many consumers | 3 consumer processes in per-poll dedup mode, faster than the limit |
            | other traffic | live payments on the same account | 8 checkout charges/s straight to the provider |

            The DLQ is filled directly, with the headers the consumer writes when the provider keeps failing;
            failing 150 charges first would only cost time. Then the same DLQ contents are redriven twice into
            the warm pool: all at once, then with a token bucket at 15 records/s
            (`python -m effectively_once redrive --dlq TOPIC --to TOPIC --rate 15` does the same from a shell).
            Progress and timings vary, so nbval does not compare them.
        """),
        ignore_output("""
            PROVIDER_LIMIT, REDRIVE_RATE, DLQ_MESSAGES = 50, 15, 150
            with stripe2023.FloodLab(stack, provider_limit=PROVIDER_LIMIT, progress=print) as flood_lab:
                flood = flood_lab.run(rate=None, messages=DLQ_MESSAGES, seed=SEED)
                paced = flood_lab.run(rate=REDRIVE_RATE, messages=DLQ_MESSAGES, seed=SEED + 1)
        """),
        ignore_output("""
            display(flood)
            display(paced)
        """),
        md("""
            Top row: when the records reached the source topic. Bottom row: what the provider's limiter counts,
            the charges it accepted in the trailing second (the consumers' and the live checkouts'), and a cross
            for each 429 it answered.
        """),
        ignore_output("""
            stripe2023.plot_side_by_side(flood, paced)
            plt.show()
        """),
        code("""
            assert flood.redrive.max_in_window(1.0) == DLQ_MESSAGES, "redrive-all sent everything within one second"
            assert flood.throttled > 0 and flood.retries > 0, "the pool outran the provider, which answered 429"
            assert paced.redrive.max_in_window(1.0) <= REDRIVE_RATE + 1, "the bucket allows rate + burst per second"
            assert paced.throttled == 0 and paced.retries == 0 and paced.live_throttled == 0, paced.summary()
            for run in (flood, paced):
                assert run.charged_messages == DLQ_MESSAGES and run.duplicate_charges == 0, run.summary()
        """),
        md("""
            Read the plots with care, because the small scale flatters the flood. Redrive-all finished *sooner*
            here: the pool charged in bursts up to the limit, was refused, slept the second that `Retry-After`
            asked for, and went again. Nothing was lost or charged twice, thanks to the dedup table and the key.
            What the flood cost is on the provider's side: for as long as it lasted, the limiter sat at its
            ceiling, and anyone else who called then was refused. A few of the live checkouts may have been
            among them in your run (it depends on timing). With a million messages the flood lasts hours, not
            seconds, and so does the refusal of live payments, while the consumers' retries add to the load.

            The paced redrive never touched the limit: it left the provider `50 - 15` charges per second for
            everyone else and drained in `messages / rate` seconds, a number you can compute before you start.
            Pick the rate under the limit with room to spare. The limit is shared: the live checkouts need their
            8 a second too. And records reach the consumers a little less evenly than they leave the bucket. One
            unevenness the redrive removes itself: its first record waits for the producer's connection, and
            the bucket's clock only runs once that record is out, so the paced records that would have queued
            during the connection do not leave together as one burst.
        """),
        ignore_output("""
            peak = max(paced.accepted_in_last_second()[1])
            print(f"paced redrive: at most {peak} charges accepted in any second, limit {PROVIDER_LIMIT}, "
                  f"rate {REDRIVE_RATE}/s plus {paced.live_rate:g}/s of checkouts")
        """),
        code("""
            assert max(paced.accepted_in_last_second()[1]) < PROVIDER_LIMIT
            assert paced.drain_seconds >= (DLQ_MESSAGES - 1) / REDRIVE_RATE, "pacing costs time, and you can predict how much"
        """),
        md("""
            ## 4. Slack 2022: the zombie producer

            A Kafka exactly-once stream job at Slack wrote duplicates for six minutes during a rolling restart of
            its brokers. Old producer instances that had stalled mid-transaction came back after their
            replacements had started with the same `transactional.id`, and finished their work. Apache Kafka is
            meant to fence such a *zombie*: the replacement's `init_transactions` bumps the epoch and aborts
            the old transaction. A transaction-coordinator bug let them through until the restart was over.

            The replay, on your broker: instance A begins a transaction, writes five charges and stalls; B starts
            with the same `transactional.id`, writes the same five (A never committed its input offsets) and
            commits; A wakes up and tries to commit. Two downstream consumers then read with `read_committed`:
            a naive one that applies every record it sees (before the fix), and one that goes through a dedup
            table keyed by `msg_id` (after).

            Notebook 03 probed whether your broker fences zombies. What happens here therefore depends on the
            broker, so nbval does not compare the next cell; the assertions after it hold on both.
        """),
        ignore_output("""
            zombie = slack_zombie.replay(stack, charges=5)
            display(zombie)
            if zombie.fenced:
                print(f"On this broker ({stack.broker_flavor}) the zombie was fenced: none of its records reached "
                      "a read_committed consumer, and even the naive ledger is right.")
            else:
                print(f"On this broker ({stack.broker_flavor}) the zombie was NOT fenced: its {zombie.zombie_records_delivered} "
                      f"records reached the consumers. The naive ledger charged {zombie.naive_double_charges} "
                      f"customers twice; the dedup table absorbed {zombie.duplicates_absorbed} duplicates.")
        """),
        code("""
            assert zombie.dedup_ledger_rows == zombie.charges == 5, "behind a dedup table, each charge counts once"
            assert zombie.duplicates_absorbed == zombie.delivered - zombie.charges
            assert zombie.naive_ledger_rows == zombie.delivered
            if stack.broker_flavor == "apache-kafka":
                assert zombie.fenced and zombie.naive_double_charges == 0, zombie.as_dict()
            elif stack.broker_flavor == "tansu":
                assert not zombie.fenced and zombie.naive_double_charges == zombie.charges, zombie.as_dict()
        """),
        md("""
            **On Apache Kafka** (the `embedded` and `docker` backends) the coordinator fences the zombie: its commit is refused,
            its records stay hidden from `read_committed`, and both ledgers hold five charges. That is Kafka
            working as designed, which is what Slack's brokers did *not* do during their restart.

            **On Tansu** (the `tansu` fallback) nothing fences the zombie, so this replay reproduces Slack's
            six minutes: its records reach the consumers, the naive ledger charges every customer twice, and the
            dedup table absorbs all five duplicates.

            ## 5. The pattern

            One table for the four replays you just ran, with the numbers from your run:
        """),
        ignore_output("""
            sqs_after = max(r.duplicates for r in sqs_fixed.values()) + races[True].duplicates
            pattern = Table("four incidents, before and after", ["incident", "where the invariant broke", "before",
                                                                  "after", "what fixed it"], [
                ("Stripe 2020", "consumer code: the retry path", f"{bug.extra_charges} extra charges",
                 f"{fix.extra_charges} extra charges", "the same key on every attempt; a lint rule in CI"),
                ("AWS SQS 2019", "consumer side: work outlasting the visibility timeout; a racy visibility change",
                 f"{sqs_none.duplicates + races[False].duplicates} duplicate side effects",
                 f"{sqs_after} duplicate side effects", "a heartbeat, a dedup row, a conditional UPDATE"),
                ("Stripe 2023", "operational procedure: redrive-all", f"{flood.throttled + flood.live_throttled} x 429",
                 f"{paced.throttled + paced.live_throttled} x 429", "a token bucket on the redrive"),
                ("Slack 2022", f"the broker's fencing (on this {stack.broker_flavor} broker: "
                               f"{'held' if zombie.fenced else 'absent'})",
                 f"{zombie.naive_double_charges} double charges (naive consumer)",
                 f"{zombie.dedup_ledger_rows - zombie.charges} double charges (dedup table)",
                 "a dedup table keyed by msg_id"),
            ])
            display(pattern)
        """),
        code("""
            after = [fix.extra_charges, sqs_after, paced.throttled + paced.live_throttled,
                     zombie.dedup_ledger_rows - zombie.charges]
            assert after == [0, 0, 0, 0], f"every fix held on this stack: {after}"
            assert bug.extra_charges > 0 and sqs_none.duplicates > 0 and flood.throttled > 0
        """),
        md("""
            In three of the four, the broker or queue kept every promise it makes, and the invariant broke in
            the consumer's code (a retry without its key), in the consumer's use of the queue (work longer than
            the visibility timeout, a visibility change that raced its own delete), or in an operational
            procedure (a redrive with no rate limit). That is the lesson's conclusion: broker guarantees are
            necessary, and correctness lives in consumer idempotency and operational discipline.

            The footnote is Slack. There the broker's own guarantee did fail: zombie fencing is the broker's job,
            and a coordinator bug broke it. Even so, the layer that could have saved them sat in the consumer: a
            dedup table keyed by message id, which you watched absorb every duplicate on a broker that does not
            fence at all. Design so that a broker guarantee failing costs you nothing, because one day one will.

            ## Summary

            - **Stripe 2020:** the dedup table guards against redelivery, not against your own retry loop; only
              an Idempotency-Key sent on every attempt covers that, and a lint rule keeps it there.
            - **AWS SQS 2019:** when `side_effect_duration_p99` exceeds the visibility timeout, duplicates follow;
              extend the visibility while working (with a conditional update) or make the side effect idempotent.
            - **Stripe 2023:** a redrive is a producer; give it a rate well under what the downstream accepts.
            - **Slack 2022:** fencing is the broker's promise; the consumer's dedup is what holds when it does not.

            **Next:** `07_review.ipynb` asks the lesson's questions. **Exercises:** `labs/06_incidents.ipynb`
            (solutions in `solutions/06_incidents.ipynb`): write the redrive's token bucket and use it live, then
            teach the lint rule to look inside a helper that builds the headers.
        """),
    ]


def solutions_06():
    return [
        md("""
            # Exercises for 06 · Four incidents

            Two exercises, one per post-mortem remedy. The first is the pacing behind a safe redrive, a token
            bucket, checked on a fake clock and then used for a real redrive. The second closes the lint rule's
            blind spot, headers built by a helper function. Write your code where a cell raises
            `NotImplementedError`, then run the check cell after it.

            **Time:** about 30 minutes.
        """),
        code("""
            import ast
            import random
            import time
            from pathlib import Path
            from unittest import mock

            from effectively_once.incidents import lint
            from effectively_once.incidents import redrive as redrive_module
            from effectively_once.payments.producer import charge_records, send_records
            from effectively_once.stack import attach_or_start, new_run_id

            SEED = 7
            SAMPLES = Path("..") / "tests" / "lint_samples"   # the lint rule's good and bad samples
        """),
        md("""
            ## Exercise 1: a token bucket for the redrive

            A token bucket holds at most `burst` tokens and gains `rate` tokens per second; it starts full.
            Sending a record costs one token; with no token left, the sender waits. Over any stretch of `t`
            seconds it therefore lets through at most `rate * t + burst` records, however the sends are timed.

            Complete `delay` and `try_acquire` below. Both read the time from `self.clock`, so a fake clock can
            drive the bucket without waiting. `delay` first brings the bucket up to date: add the tokens earned
            since `self.updated`, never beyond `burst`, and move `self.updated` to now. (Floating-point clocks
            leave crumbs such as 0.9999999999 tokens: count a shortfall under `1e-9` as none.) `acquire`, which
            the redrive calls, is given.
        """),
        code('''
            class Bucket:
                """``rate`` tokens per second, at most ``burst`` saved up; starts full."""

                def __init__(self, rate, burst=1.0, clock=time.monotonic):
                    self.rate, self.burst, self.clock = float(rate), float(burst), clock
                    self.tokens, self.updated = float(burst), clock()

                def delay(self, tokens=1.0):
                    """Seconds until ``tokens`` are available (0.0 if they are now)."""
                    ### BEGIN SOLUTION
                    # HINT: now = self.clock(); tokens earned = (now - self.updated) * self.rate; cap at self.burst
                    now = self.clock()
                    if now > self.updated:
                        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
                        self.updated = now
                    missing = tokens - self.tokens
                    return missing / self.rate if missing > 1e-9 else 0.0
                    ### END SOLUTION

                def try_acquire(self, tokens=1.0):
                    """Take ``tokens`` if they are available now and return True; else return False at once."""
                    ### BEGIN SOLUTION
                    # HINT: if self.delay(tokens) is 0, subtract the tokens (not below 0) and return True
                    if self.delay(tokens) > 0:
                        return False
                    self.tokens = max(0.0, self.tokens - tokens)
                    return True
                    ### END SOLUTION

                def acquire(self, tokens=1.0, sleep=time.sleep):
                    """Wait until ``tokens`` are available, take them, return the seconds waited."""
                    waited = 0.0
                    while not self.try_acquire(tokens):
                        wait = self.delay(tokens)
                        sleep(wait)
                        waited += wait
                    return waited
        '''),
        md("""
            The check drives your bucket with a clock that moves only when told to:
        """),
        code("""
            class FakeClock:
                def __init__(self):
                    self.now = 1000.0

                def __call__(self):
                    return self.now

                def sleep(self, seconds):
                    self.now += seconds
        """),
        check("""
            clock = FakeClock()
            bucket = Bucket(rate=10, burst=3, clock=clock)
            got = [bucket.try_acquire() for _ in range(4)]
            assert got == [True, True, True, False], f"a full bucket of 3 grants 3 sends at once, then none: got {got}"
            assert abs(bucket.delay() - 0.1) < 1e-9, f"at 10 tokens/s the next token is 0.1 s away, you said {bucket.delay()}"
            clock.sleep(0.05)
            assert not bucket.try_acquire(), "half a token is not a token"
            clock.sleep(0.05)
            assert bucket.try_acquire(), "after 0.1 s at 10/s one token has come in"

            idle = Bucket(rate=5, burst=2, clock=clock)
            clock.sleep(3600)
            saved = sum(idle.try_acquire() for _ in range(10))
            assert saved == 2, f"an idle bucket saves at most its burst (2), but it granted {saved} after an hour"

            steady = Bucket(rate=50, burst=5, clock=clock)
            start = clock()
            for _ in range(505):
                steady.acquire(sleep=clock.sleep)
            assert abs(clock() - start - 10.0) < 1e-6, \\
                f"505 sends at 50/s with a burst of 5 take 10 s of waiting, yours took {clock() - start:.3f} s"

            rng = random.Random(SEED)
            for trial in range(50):
                rate, burst = rng.uniform(1, 200), rng.randint(1, 10)
                bucket, begin, granted = Bucket(rate, burst, clock=clock), clock(), 0
                for _ in range(300):
                    clock.sleep(rng.uniform(0, 2 / rate))
                    granted += bucket.try_acquire()
                elapsed = clock() - begin
                assert granted <= rate * elapsed + burst + 1e-6, \\
                    f"rate {rate:.1f}, burst {burst}: {granted} sends in {elapsed:.2f} s is more than rate * t + burst"
                # Calls spaced a full token apart must all be granted: the bucket must not hold back either.
                patient = Bucket(rate, burst, clock=clock)
                patient.try_acquire(burst)
                for k in range(20):
                    clock.sleep(1 / rate)
                    assert patient.try_acquire(), \\
                        f"rate {rate:.1f}: a send 1/rate s after the last one was refused (call {k}); a token had come in"
            print("Exercise 1, fake clock: passed.")
        """),
        md("""
            Now a real redrive with your bucket. `redrive(...)` builds a `TokenBucket` when given a rate;
            `mock.patch.object` swaps your class in for the length of one call. Forty charges are parked in a
            dead-letter topic and redriven at 20 per second into a source topic (no consumer needed for this);
            the topics are deleted afterwards.
        """),
        code("""
            stack = attach_or_start(progress=lambda *_: None)
            run = new_run_id()
            source = stack.create_topic(f"nb06-exercise-{run}", partitions=1)
            dlq = stack.create_topic(f"nb06-exercise-{run}.dlq", partitions=1)
            send_records(stack, dlq, charge_records(40, seed=SEED, prefix=run))
            try:
                with mock.patch.object(redrive_module, "TokenBucket", Bucket):
                    paced = redrive_module.redrive(stack, dlq, source, rate=20, group=stack.group(f"nb06-exercise-{run}"))
            finally:
                stack.delete_topics(source, dlq)
        """),
        check("""
            assert paced.sent == 40, f"all 40 parked charges should have been redriven, {paced.sent} were"
            busiest = paced.max_in_window(1.0)
            assert busiest <= 21, f"at 20/s with a burst of 1, no second may see more than 21 sends; one saw {busiest}"
            assert paced.send_times[-1] >= 39 / 20 - 0.05, \\
                f"40 sends at 20/s take at least 1.95 s; yours took {paced.send_times[-1]:.2f} s"
            print(f"Exercise 1, live: {paced.sent} records redriven, at most {busiest} in any second.")
        """),
        md("""
            ## Exercise 2: look inside the helper

            The lint rule of section 1 reports this POST as unverifiable, although the key is there:

            ```python
            def idempotent_headers(msg):
                return {"Idempotency-Key": f"charge-{msg['msg_id']}", "traceparent": msg["traceparent"]}

            client.post(url, json=msg, headers=idempotent_headers(msg))
            ```

            Teach it to look inside. First `helper_sets_key(function)`: given the `ast.FunctionDef` of a helper,
            return True when it has at least one `return`, and **every** `return` gives a dict literal
            (`ast.Dict`) with an `Idempotency-Key` entry (compare the name case-insensitively). One path without
            the key is enough for a retry to go out without it.

            Then `lint_with_helpers(source, filename)`: run `lint.lint_source(source, filename)` and drop a finding
            when the POST on its line takes `headers=` from a call to a function **defined at the top level of
            the same source** for which `helper_sets_key` is True. Keep every other finding: a helper imported
            from elsewhere, or one that returns a variable, stays unverifiable.
        """),
        code('''
            def helper_sets_key(function):
                """True if every return of ``function`` is a dict literal with an Idempotency-Key (and there is one)."""
                ### BEGIN SOLUTION
                # HINT: collect the ast.Return nodes with ast.walk(function); check each value is an ast.Dict with the key
                returns = [node for node in ast.walk(function) if isinstance(node, ast.Return)]

                def has_key(value):
                    return isinstance(value, ast.Dict) and any(
                        isinstance(k, ast.Constant) and isinstance(k.value, str) and k.value.lower() == "idempotency-key"
                        for k in value.keys)

                return bool(returns) and all(has_key(r.value) for r in returns)
                ### END SOLUTION


            def lint_with_helpers(source, filename="<source>"):
                """``lint.lint_source`` without the findings whose headers come from a same-module helper that sets the key."""
                ### BEGIN SOLUTION
                # HINT: map top-level FunctionDef names to nodes; for each finding, find the ast.Call on its line with headers=name(...)
                tree = ast.parse(source, filename=filename)
                helpers = {node.name: node for node in tree.body if isinstance(node, ast.FunctionDef)}
                verified_lines = set()
                for node in ast.walk(tree):
                    if not isinstance(node, ast.Call):
                        continue
                    for keyword in node.keywords:
                        value = keyword.value
                        if (keyword.arg == "headers" and isinstance(value, ast.Call) and isinstance(value.func, ast.Name)
                                and value.func.id in helpers and helper_sets_key(helpers[value.func.id])):
                            verified_lines.add(node.lineno)
                return [f for f in lint.lint_source(source, filename) if f.line not in verified_lines]
                ### END SOLUTION
        '''),
        check("""
            HELPER = "import httpx\\n\\ndef headers_for(msg):\\n{body}\\n\\ndef send(client: httpx.Client, msg):\\n    client.post('u', json=msg, headers=headers_for(msg))\\n"
            cases = {
                "a helper that sets the key": (HELPER.format(body="    return {'Idempotency-Key': msg, 'traceparent': 't'}"), []),
                "the header name in lower case": (HELPER.format(body="    return {'idempotency-key': msg}"), []),
                "a helper without the key": (HELPER.format(body="    return {'traceparent': 't'}"), [7]),
                "one return path without the key": (HELPER.format(
                    body="    if msg:\\n        return {'Idempotency-Key': msg}\\n    return {}"), [9]),
                "a helper that returns a variable": (HELPER.format(
                    body="    h = {'Idempotency-Key': msg}\\n    return h"), [8]),
                "a helper with no return at all": (HELPER.format(body="    pass"), [7]),
            }
            cases["a helper imported from elsewhere"] = (
                "import requests\\nfrom shared import headers_for\\nrequests.post('u', headers=headers_for(1))\\n", [3])
            cases["a method, not a module function"] = (
                "import requests\\ndef headers_for(m):\\n    return {'Idempotency-Key': m}\\n"
                "class C:\\n    def headers_for(self, m):\\n        return {}\\n"
                "    def go(self, m):\\n        requests.post('u', headers=self.headers_for(m))\\n", [8])
            cases["no headers at all is still a finding"] = ("import requests\\nrequests.post('u', json={})\\n", [2])
            for name, (source, want) in cases.items():
                got = [f.line for f in lint_with_helpers(source, "sample.py")]
                assert got == want, f"{name}: expected findings on lines {want}, got {got}\\n{source}"

            assert helper_sets_key(ast.parse("def h(m):\\n    return {'Idempotency-Key': m}").body[0]) is True
            assert helper_sets_key(ast.parse("def h(m):\\n    return {'traceparent': m}").body[0]) is False

            for path in sorted((SAMPLES / "good").glob("*.py")):
                found = lint_with_helpers(path.read_text(), str(path))
                assert found == [], f"{path.name} is a good sample and must stay clean: {found}"
            for path in sorted((SAMPLES / "bad").glob("*.py")):
                lines = path.read_text().splitlines()
                marked = [i for i, line in enumerate(lines, 1) if line.rstrip().endswith("# flagged")]
                # The one marked line the extension may clear: the documented blind spot, whose helper sets the key.
                want = [i for i in marked if not (path.name == "unverifiable.py" and "idempotent_headers(" in lines[i - 1])]
                got = [f.line for f in lint_with_helpers(path.read_text(), str(path))]
                assert got == want, f"{path.name}: expected findings on lines {want}, got {got}"
            print(f"Exercise 2 passed: {len(cases)} cases and every lint sample.")
        """),
        md("""
            ## Summary

            You wrote the token bucket behind a safe redrive and ran a real one with it: over any second it let
            through at most `rate + burst` records, which is the property that keeps a redrive under the payment
            API's limit. Then you closed the lint rule's blind spot for helpers defined in the same module,
            without opening a hole: a helper with one path that forgets the key, or one the rule cannot read,
            still gets the POST reported.
        """),
    ]


TARGETS = {
    "notebooks/06_incidents.ipynb": notebook_06,
    "solutions/06_incidents.ipynb": solutions_06,
}


if __name__ == "__main__":
    sys.exit(build_targets(TARGETS, sys.argv[1:]))
