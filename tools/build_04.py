"""Build notebook 04 (kill the consumer mid-charge) and its exercise notebook.

    EO_HOME=... .venv/bin/python -m effectively_once up --backend embedded
    EO_HOME=... .venv/bin/python tools/build_04.py            # both, executed against that stack
    EO_HOME=... .venv/bin/python tools/build_04.py solutions  # only the ones whose path starts with this

Then run ``tools/make_labs.py`` to regenerate ``labs/``.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from build_notebooks import build_targets, check, code, ignore_output, md  # noqa: E402


def notebook_04():
    return [
        md("""
            # 04 · Kill the consumer

            **You will learn**
            - what a payment consumer leaves behind when it dies with SIGKILL between two of its steps: a
              'pending' row in the shop's database, money moved at the provider, an offset Kafka never got;
            - how the restarted consumer's redelivery meets the dedup table and the Idempotency-Key, and which of
              the two absorbs the duplicate at each crash point (all of them, against five sets of layers);
            - the three traps in the textbook recipe, each reproduced: the snippet that loses a charge, the dedup
              table that double-charges on its own, and the key that stops working after its TTL.

            **Time:** about 40 minutes. Needs the broker and PostgreSQL: `make lab` starts them, or this notebook
            starts a private set. Running every cell takes about a minute.
        """),
        code("""
            import inspect
            import re
            import signal

            from IPython.display import display

            from effectively_once.payments import steps
            from effectively_once.payments.lab import CRASH_POINTS, LAYER_SETS, PaymentLab
            from effectively_once.payments.matrix import (CHARGED_ONCE, CHARGED_TWICE, LOST, SideBySide, run_matrix,
                                                          view)
            from effectively_once.stack import attach_or_start
            from effectively_once.stack.processes import pid_alive

            SEED = 4       # which customers and amounts the charges have
            MESSAGES = 3   # charges in the walk-through: the crash hits the first, the others pass normally
        """),
        md("""
            Attach to your running stack, or start a private one (its addresses and timings vary, so nbval
            does not compare this cell's output):
        """),
        ignore_output("""
            stack = attach_or_start()
            print(f"broker: {stack.broker_flavor} ({stack.backend} backend)")
        """),
        md("""
            ## 1. One charge, four places to die

            The consumer is its own operating-system process (`python -m effectively_once.payments.consumer`).
            It polls a batch of charge messages, runs one function per message, `steps.process_message`, and
            commits the Kafka offsets only after the whole batch is handled. Stripped to its skeleton, the
            function reads:

            ```python
            crash_point("before_dedup_insert")
            INSERT INTO charges (msg_id, status) VALUES (msg_id, 'pending') ON CONFLICT DO NOTHING
            if no row was inserted:          # seen before
                if status == 'done': skip    # finished earlier: nothing to do
                # 'pending': an earlier attempt died mid-way; charge again with the same key
            crash_point("after_dedup_insert")
            POST /v1/charges  with  Idempotency-Key: charge-<msg_id>
            crash_point("after_provider_call")
            UPDATE charges SET status = 'done', charge_id = ...
            crash_point("after_status_update")
            ```

            Each statement runs in its own transaction, and the shop's database and the provider's are two
            different databases: nothing commits both at once. Started with `crash_at=...`, the consumer sends
            itself SIGKILL when it reaches that point: no `finally`, no cleanup, exactly like a kill by the kernel
            or a pulled plug. What survives each crash:

            | crash point | shop's `charges` row | money at the provider | Kafka offset |
            |---|---|---|---|
            | `before_dedup_insert` | none | not moved | not committed |
            | `after_dedup_insert` | 'pending' | not moved | not committed |
            | `after_provider_call` | 'pending' | **moved** | not committed |
            | `after_status_update` | 'done' | moved | not committed |

            The crash points in the table are the ones the real function marks, in its order:
        """),
        code("""
            marked = re.findall(r'crash_point\\("(\\w+)"\\)', inspect.getsource(steps.process_message))
            print(" -> ".join(marked))
        """),
        code("""
            assert marked == list(CRASH_POINTS), f"the step marks {marked}, the lab knows {CRASH_POINTS}"
        """),
        md("""
            ## 2. Kill it after the provider call

            The most instructive place to die is `after_provider_call`: the card has been charged, and nobody on
            the shop's side knows. A `PaymentLab` gives this run its own topic, consumer group, shop database and
            payment provider (a separate process with its own database). The topic has a single partition so
            that the consumer reads the three charges in the order they were produced, and the first one is the
            one it dies on.
        """),
        code("""
            lab = PaymentLab(stack, "both", run_id="nb04", partitions=1)
            lab.start_provider()
            ids = lab.produce(MESSAGES, seed=SEED)
            ids
        """),
        code("""
            assert ids == [f"msg-nb04-{i:05d}" for i in range(MESSAGES)], "msg_ids follow from the run id"
        """),
        md("""
            Start the consumer with both layers (dedup table and Idempotency-Key) and a crash point. The next cell
            shows the process while it runs; its pid differs on every run, so nbval ignores the cell.
        """),
        ignore_output("""
            consumer = lab.start_consumer(crash_at="after_provider_call")
            print(consumer, "| alive:", pid_alive(consumer.pid))
        """),
        md("""
            Wait for it. A process killed by a signal has no exit code of its own: Python reports the signal's
            number, negated, so SIGKILL (signal 9) shows as `-9`.
        """),
        code("""
            status = consumer.wait(timeout=30)
            print(f"exit status {status}: {signal.Signals(-status).name if status < 0 else 'a normal exit'}")
            print("its last words:", consumer.log_tail().splitlines()[-1])
            print("still alive:", pid_alive(consumer.pid))
        """),
        code("""
            assert status == -9 and consumer.killed_by_sigkill, f"expected SIGKILL, the consumer exited with {status}"
            assert consumer.crashed_at_point, "it killed itself at its crash point, not by accident"
            assert not pid_alive(consumer.pid), "the process is gone"
        """),
        md("""
            ## 3. What the crash left behind

            Three parties, three different stories. Look at the shop's dedup table, the provider's ledger (one row
            per time money moved) and the consumer group's position in the topic:
        """),
        code("""
            display(SideBySide(view(lab.shop_rows(), "msg_id", "status", "attempts"),
                               view(lab.ledger_rows(), "msg_id", "idempotency_key", "amount", "currency")))
            print(f"records the group has not committed past: {lab.lag()} of {MESSAGES}")
        """),
        md("""
            - The **provider** charged `msg-nb04-00000` and stored its answer under the key `charge-msg-nb04-00000`.
            - The **shop** has a 'pending' row for it: it knows it *started*, not whether the money moved.
            - **Kafka** has no committed offset for the group: all three records will be delivered again, including
              the one already charged.
        """),
        code("""
            assert view(lab.shop_rows(), "msg_id", "status").rows == [(ids[0], "pending")]
            assert view(lab.ledger_rows(), "msg_id", "idempotency_key").rows == [(ids[0], "charge-" + ids[0])]
            assert lab.lag() == MESSAGES, "nothing was committed, so everything comes back"
        """),
        md("""
            ## 4. Restart it and watch the redelivery

            A new consumer process joins the same group, starts from the last committed offset (none, so the
            beginning) and handles all three records. It exits once the topic has been quiet for a second.
        """),
        ignore_output("""
            restarted = lab.start_consumer()
            print(restarted)
        """),
        code("""
            print("exit status", restarted.wait(timeout=30))
            display(view(lab.event_rows(), "msg_id", "result", "dedup_hit"))
        """),
        md("""
            The first record is the redelivery. Its `INSERT` conflicted (`dedup_hit`), the row said 'pending', so
            the consumer called the provider again **with the same key**. The provider found the key, moved no
            money, and answered with the response it had stored, marked as a replay (`result = replayed`). The other
            two were new and were charged normally.
        """),
        code("""
            assert restarted.returncode == 0, restarted.log_tail()
            assert view(lab.event_rows(), "msg_id", "result", "dedup_hit").rows == [
                (ids[0], "replayed", True), (ids[1], "charged", False), (ids[2], "charged", False)]
        """),
        md("""
            Now the three stories agree: one ledger row per message, every dedup row 'done' (the first one on its
            second attempt), and the replayed answer carried the first charge's id into the shop's row.
        """),
        code("""
            display(SideBySide(view(lab.shop_rows(), "msg_id", "status", "attempts"),
                               view(lab.ledger_rows(), "msg_id", "idempotency_key", "amount", "currency")))
        """),
        code("""
            shop, ledger = lab.shop_rows().records(), lab.ledger_rows().records()
            assert [r["status"] for r in shop] == ["done"] * MESSAGES and [r["attempts"] for r in shop] == [2, 1, 1]
            assert [r["msg_id"] for r in ledger] == ids, "each message moved money exactly once"
            assert shop[0]["charge_id"] == ledger[0]["charge_id"], "the replay returned the first charge's id"
        """),
        md("""
            The lab's report counts what happened to the money against what was produced. `run_until_settled`
            first makes sure nothing is left to consume (it would restart consumers until the group's lag is
            zero; here none was needed).
        """),
        ignore_output("""
            restarts_needed = lab.run_until_settled(timeout=60)
            report = lab.report()
            report  # its plain-text form names the databases, which differ per run: nbval ignores this cell
        """),
        code("""
            assert restarts_needed == 0 and lab.lag() == 0
            assert report.ok and report.charges == MESSAGES, report
            assert (report.dedup_hits, report.key_replays) == (1, 1), "one dedup hit, answered by one key replay"
        """),
        md("""
            Stop the lab: it stops the provider by its pid and drops the topic and both databases. (A kernel that
            dies first leaves nothing either: the lab registered the same cleanup to run at exit.)
        """),
        code("""
            lab.stop()
            print("provider running:", lab.provider.running)
        """),
        md("""
            ## 5. Every crash point against every set of layers

            One crash point and one set of layers is one cell of a bigger table. `run_matrix` runs them all: for
            each cell, a fresh topic and group, one charge, a consumer that dies at the crash point, a restart,
            and the ledger counted. The columns switch layers off:

            - `both`: dedup table with the recovery rule, and the Idempotency-Key;
            - `dedup_only`: the dedup table, and provider calls without a key;
            - `idempotency_key_only`: the key, and no dedup table;
            - `none`: plain at-least-once;
            - `dedup_as_written`: the lesson's snippet to the letter ("if 0 rows inserted: already processed,
              skip"), with the key.

            Twenty scenarios, run four at a time against one provider and one shop database (each scenario's
            rows carry its own msg_ids, so nothing mixes). Which finishes first varies, so nbval ignores the
            progress lines.
        """),
        ignore_output("""
            matrix = run_matrix(stack, CRASH_POINTS, LAYER_SETS, seed=SEED, progress=print)
            print(f"{len(matrix.cells)} scenarios in {matrix.seconds:.0f} s")
        """),
        code("""
            matrix
        """),
        md("""
            Read it row by row:

            - **`before_dedup_insert`**: nothing had happened anywhere; the redelivery is simply the first attempt.
            - **`after_dedup_insert`**: a 'pending' row, no money moved. The recovery rule charges it, correctly.
              The snippet as written sees the row, calls it "already processed", and skips: the charge is **lost**.
            - **`after_provider_call`**: the money moved, the row still says 'pending'. Only the key stops the
              second charge: without it, the dedup table's recovery rule itself charges the card **twice**.
            - **`after_status_update`**: the row says 'done'; the dedup table skips it before any call, and the
              key would have replayed it too. Without either, a second charge.
        """),
        code("""
            expected = {(p, s): CHARGED_ONCE for p in CRASH_POINTS for s in LAYER_SETS}
            expected[("after_dedup_insert", "dedup_as_written")] = LOST
            expected[("after_provider_call", "dedup_only")] = CHARGED_TWICE
            expected[("after_provider_call", "none")] = CHARGED_TWICE
            expected[("after_status_update", "none")] = CHARGED_TWICE
            wrong = {key: got for key, got in matrix.outcomes().items() if got != expected[key]}
            assert not wrong, f"cells that differ from the expected matrix: {wrong}; {matrix.problems()}"
        """),
        md("""
            ## 6. The traps, one by one

            ### Trap 1: the snippet as written loses a charge

            The lesson's dedup rule reads "if 0 rows inserted: already processed, skip". But a row can exist
            without the work being done: the process may have died after the `INSERT` committed and before the
            charge. Here is the cell `after_dedup_insert` x `dedup_as_written`, next to the same crash with the
            recovery rule (`both`):
        """),
        code("""
            as_written = matrix.cell("after_dedup_insert", "dedup_as_written")
            recovered = matrix.cell("after_dedup_insert", "both")
            display(SideBySide(view(as_written.shop, title="as written: shop"),
                               view(as_written.ledger, title="as written: provider")))
            display(SideBySide(view(recovered.shop, title="recovery rule: shop"),
                               view(recovered.ledger, title="recovery rule: provider")))
        """),
        md("""
            As written, the row stays 'pending' forever and the provider never hears of the charge. The fix is one
            branch: on a conflict, read the status; 'done' means skip, 'pending' means call the provider again
            with the same key (safe, because the key makes the second call harmless if the first one did move
            money), then mark it 'done'.
        """),
        code("""
            assert as_written.outcome == LOST and as_written.report.lost_charges == 1
            assert [r["status"] for r in as_written.shop] == ["pending"] and len(as_written.ledger) == 0
            assert recovered.ok and [(r["status"], r["attempts"]) for r in recovered.shop] == [("done", 2)]
            assert len(recovered.ledger) == 1
        """),
        md("""
            ### Trap 2: the dedup table alone charges twice

            The recovery rule is right to call the provider again for a 'pending' row, because from the shop's
            side "died before the call" and "died after the call" look the same. Without a key, the provider
            cannot tell either: the cell `after_provider_call` x `dedup_only` has two ledger rows for one
            message, while with the key (`both`) the second call is a replay.
        """),
        code("""
            doubled = matrix.cell("after_provider_call", "dedup_only")
            keyed = matrix.cell("after_provider_call", "both")
            display(SideBySide(view(doubled.ledger, title="dedup only: provider"),
                               view(keyed.ledger, title="both layers: provider")))
            print("both layers, the redelivery:", keyed.how)
        """),
        code("""
            assert doubled.outcome == CHARGED_TWICE and len(doubled.ledger) == 2
            assert doubled.ledger.column("idempotency_key") == [None, None], "no key, so nothing to recognise"
            assert keyed.ok and keyed.results == ["replayed"] and len(keyed.ledger) == 1
        """),
        md("""
            The dedup table closes the window *after* 'done'; only the key closes the window *between* the
            provider call and 'done'. Neither layer is redundant.

            ### Trap 3: a key past its TTL lets a duplicate through

            A provider keeps a key only so long (Stripe: it may prune keys once they are 24 hours old). A
            redelivery that comes later, after a long outage or a redrive from the dead-letter topic a day
            after, finds no key. The next matrix ages every key past its TTL between the crash and the restart,
            as if a day had gone by.
        """),
        ignore_output("""
            late = run_matrix(stack, ["after_provider_call", "after_status_update"], ["both", "idempotency_key_only"],
                              seed=SEED, expire_keys=True, run_prefix="late")
            print(f"{len(late.cells)} scenarios in {late.seconds:.0f} s")
        """),
        code("""
            late
        """),
        md("""
            With the key gone, a crash `after_provider_call` charges twice even with both layers: the row says
            'pending', the recovery rule calls again, and the provider has forgotten the first call. After
            'done', the dedup table still holds: it keeps its rows as long as the shop keeps them, not 24 hours.
            The key alone has no such fallback.
        """),
        code("""
            assert late.cell("after_provider_call", "both").outcome == CHARGED_TWICE
            assert late.cell("after_provider_call", "idempotency_key_only").outcome == CHARGED_TWICE
            assert late.cell("after_status_update", "both").ok
            assert late.cell("after_status_update", "both").absorbed_by == "dedup"
            assert late.cell("after_status_update", "idempotency_key_only").outcome == CHARGED_TWICE
        """),
        md("""
            ### Both layers hold at every crash point

            Within the key's lifetime, the two layers together charged every message exactly once at every
            crash point. In the first matrix the key alone held too, because no redelivery came late; trap 3 is
            why the dedup table stays: a redelivery a day later meets a 'done' row and stops there. The dedup
            table is also the shop's own record of what it charged, which reconciliation needs.
        """),
        code("""
            holding = [s for s in LAYER_SETS if matrix.holds(s)]
            print("layer sets that charged once at every crash point:", holding)
        """),
        code("""
            assert matrix.holds("both"), matrix.problems()
            assert holding == ["both", "idempotency_key_only"]
            assert all(matrix.cell(p, "both").report.charges == 1 for p in CRASH_POINTS)
        """),
        md("""
            ## Summary

            - A SIGKILL between two steps leaves three parties with three stories: a 'pending' row in the shop,
              money moved (or not) at the provider, and no committed offset in Kafka, so the message comes back.
            - The redelivery meets the dedup table first: a 'done' row is skipped without calling anyone; a
              'pending' row is charged again with the same Idempotency-Key, which the provider replays if the
              first call got through.
            - The lesson's snippet skips 'pending' rows and loses a charge; the dedup table without a key charges
              twice after the provider call; the key stops working once the provider forgets it. With both layers,
              and within the key's lifetime, every crash point ends with each message charged exactly once.

            **Next:** `05_observability.ipynb` shows the same crashes on the numbers a production consumer exports:
            lag, dedup hit rate, dead-letter depth.
            **Exercises:** `labs/04_kill_the_consumer.ipynb` (solutions in `solutions/04_kill_the_consumer.ipynb`):
            write the consumer's step yourself and run it through the real crash matrix, then predict which layer
            absorbs each redelivery.
        """),
    ]


def solutions_04():
    return [
        md("""
            # Exercises for 04 · Kill the consumer

            Two exercises. In the first you write the consumer's per-message step; it is written to a module,
            plugged into the real consumer process with `--step`, and killed at every crash point. In the second
            you predict which layer absorbs each redelivery, and a live run checks the prediction. Write your
            code where a cell raises `NotImplementedError`, then run the check cell after it.

            **Time:** about 25 minutes. Needs the broker and PostgreSQL, like notebook 04.
        """),
        code("""
            from IPython.display import display

            from effectively_once.payments.lab import CRASH_POINTS
            from effectively_once.payments.matrix import ABSORBERS, DID_NOT_RUN, PluggedStep, run_matrix
            from effectively_once.payments.messages import idempotency_key_for
            from effectively_once.payments.steps import Outcome
            from effectively_once.stack import attach_or_start

            SEED = 4
        """),
        ignore_output("""
            stack = attach_or_start()
            print(f"broker: {stack.broker_flavor} ({stack.backend} backend)")
        """),
        md("""
            ## Exercise 1: the consumer's step

            Write `charge_once(ctx, msg)`, which the consumer calls once for every charge message it reads, with
            both layers always on. What it has:

            - `msg.msg_id` (plus `customer`, `amount`, `currency`);
            - `ctx.shop`: a psycopg connection to the shop database in autocommit mode (each `execute` is its own
              transaction). Its table: `charges (msg_id text PRIMARY KEY, status text -- 'pending' or 'done',
              charge_id text, attempts integer DEFAULT 1)`;
            - `ctx.provider.charge(msg, idempotency_key=...)`: moves the money, returns a result with `charge_id`
              and `replayed` (True when the provider answered from its key store);
            - `idempotency_key_for(msg.msg_id)`: the key for a message, the same on every delivery;
            - `ctx.crash_point(name)`: already in place; leave those lines where they are, the check kills the
              process there.

            The rules, in order:

            1. `INSERT` the row as 'pending', doing nothing on a conflict. If it was already there (`rowcount` 0),
               read its status: 'done' means the message was charged before, so return
               `Outcome("skipped", dedup_hit=True)`; 'pending' means an earlier attempt died mid-way, so carry on
               (add one to `attempts`, and set `dedup_hit = True`).
            2. Call the provider with the message's key.
            3. Mark the row 'done' with the charge's id.
        """),
        code('''
            def charge_once(ctx, msg):
                """Charge one message effectively once: dedup row, provider call with its key, mark 'done'."""
                ctx.crash_point("before_dedup_insert")
                dedup_hit = False
                ### BEGIN SOLUTION
                # HINT: INSERT INTO charges (msg_id, status) VALUES (%s, 'pending') ON CONFLICT (msg_id) DO NOTHING; rowcount 0 means seen before: read its status
                inserted = ctx.shop.execute(
                    "INSERT INTO charges (msg_id, status) VALUES (%s, 'pending') ON CONFLICT (msg_id) DO NOTHING",
                    (msg.msg_id,)).rowcount
                if inserted == 0:
                    dedup_hit = True
                    status = ctx.shop.execute("SELECT status FROM charges WHERE msg_id = %s", (msg.msg_id,)).fetchone()[0]
                    if status == "done":
                        return Outcome("skipped", dedup_hit=True)
                    ctx.shop.execute("UPDATE charges SET attempts = attempts + 1 WHERE msg_id = %s", (msg.msg_id,))
                ### END SOLUTION
                ctx.crash_point("after_dedup_insert")
                ### BEGIN SOLUTION
                # HINT: result = ctx.provider.charge(msg, idempotency_key=...) with the key idempotency_key_for(msg.msg_id)
                result = ctx.provider.charge(msg, idempotency_key=idempotency_key_for(msg.msg_id))
                ### END SOLUTION
                ctx.crash_point("after_provider_call")
                ### BEGIN SOLUTION
                # HINT: UPDATE charges SET status = 'done', charge_id = %s WHERE msg_id = %s
                ctx.shop.execute("UPDATE charges SET status = 'done', charge_id = %s WHERE msg_id = %s",
                                 (result.charge_id, msg.msg_id))
                ### END SOLUTION
                ctx.crash_point("after_status_update")
                return Outcome("replayed" if result.replayed else "charged", dedup_hit=dedup_hit,
                               charge_id=result.charge_id, retries=result.retries, side_effect_ms=result.duration_ms)
        '''),
        md("""
            The check writes your function to a module file, starts the real consumer process with
            `--step <module>:charge_once`, and kills it at each of the four crash points in turn (two charges per
            run, SIGKILL on the first, then a restart). It passes when every run charged each message exactly
            once, left every row 'done', and let the dedup table and the key each do their part.
        """),
        check("""
            HINTS = {
                "before_dedup_insert": "nothing had happened yet, so the restart is a first attempt: a plain INSERT, "
                                       "charge, UPDATE should pass here",
                "after_dedup_insert": "the crashed attempt left a 'pending' row and moved no money: on a conflict, "
                                      "read the row's status and charge unless it is 'done'",
                "after_provider_call": "the money moved but the row still says 'pending': the second call must carry "
                                       "the same Idempotency-Key, idempotency_key_for(msg.msg_id)",
                "after_status_update": "the row is 'done': return Outcome('skipped', dedup_hit=True) before calling "
                                       "the provider",
            }
            with PluggedStep(charge_once) as step:
                checked = run_matrix(stack, CRASH_POINTS, ["both"], messages=2, seed=SEED, step=step.spec,
                                     run_prefix="ex1_")
            display(checked)
            for point in CRASH_POINTS:
                cell = checked.cell(point, "both")
                assert cell.outcome != DID_NOT_RUN, (
                    f"With a crash at {point} the consumer could not run your step: {cell.how}. "
                    "Fix charge_once, run its cell again, then this one.")
                assert cell.ok, f"{cell.problem()}. Hint: {HINTS[point]}."
                statuses = [r["status"] for r in cell.shop]
                assert statuses == ["done", "done"], (
                    f"crash at {point}: every charged message should end with a 'done' row in charges, found "
                    f"{statuses or 'no rows'}. Insert the row first and mark it 'done' after the provider call.")
            late = checked.cell("after_status_update", "both")
            assert late.absorbed_by == "dedup", (
                f"crash at after_status_update: the redelivered message reached the provider ({late.how}). "
                f"Hint: {HINTS['after_status_update']}.")
            middle = checked.cell("after_provider_call", "both")
            assert middle.absorbed_by == "idempotency_key", (
                f"crash at after_provider_call: the provider did not replay the first charge ({middle.how}). "
                f"Hint: {HINTS['after_provider_call']}.")
            print("Exercise 1 passed: your step charged every message exactly once at all four crash points.")
        """),
        md("""
            ## Exercise 2: which layer absorbs the redelivery?

            Both layers are on. For each crash point, the restarted consumer gets the message again. Decide what
            stops it from being charged a second time:

            - `"dedup"`: the dedup table; the consumer skips the message and never calls the provider;
            - `"idempotency_key"`: the consumer does call the provider, which recognises the key and replays the
              first answer without moving money;
            - `"nothing needed"`: no money had moved before the crash, so charging now is the right thing and
              there is no duplicate to absorb (even if the dedup table is consulted on the way).

            Think it through with the table in section 1 of notebook 04 before you run the check: it runs the
            four crashes live with the course's own step and compares.
        """),
        code('''
            def which_layer_absorbs():
                """Crash point -> "dedup", "idempotency_key" or "nothing needed", with both layers on."""
                ### BEGIN SOLUTION
                # HINT: ask, for each point: had the money moved, and did the row already say 'done'?
                return {
                    "before_dedup_insert": "nothing needed",
                    "after_dedup_insert": "nothing needed",
                    "after_provider_call": "idempotency_key",
                    "after_status_update": "dedup",
                }
                ### END SOLUTION
        '''),
        check("""
            WHY = {
                "before_dedup_insert": "the process died before writing anything, so the redelivery is the first attempt",
                "after_dedup_insert": "the row was 'pending' and no money had moved: the dedup table is consulted, "
                                      "but the right thing is to charge, for the first time",
                "after_provider_call": "the money moved while the row still said 'pending', so the consumer calls "
                                       "again and only the provider's key store stops a second charge",
                "after_status_update": "the row says 'done', so the dedup table skips the message before any call",
            }
            answer = which_layer_absorbs()
            assert set(answer) == set(CRASH_POINTS), (
                f"give one answer for each crash point: {', '.join(CRASH_POINTS)} (you gave {sorted(answer)})")
            bad = {p: a for p, a in answer.items() if a not in ABSORBERS}
            assert not bad, f"each answer must be one of {ABSORBERS}, not {bad}"
            live = run_matrix(stack, CRASH_POINTS, ["both"], seed=SEED, run_prefix="ex2_")
            display(live)
            for point in CRASH_POINTS:
                cell = live.cell(point, "both")
                assert cell.ok, f"the live run itself went wrong: {cell.problem()}"
                assert answer[point] == cell.absorbed_by, (
                    f"at {point} you said {answer[point]!r}, the live run says {cell.absorbed_by!r} "
                    f"({cell.how}): {WHY[point]}.")
            print("Exercise 2 passed: your predictions match the live crashes at all four points.")
        """),
        md("""
            ## Summary

            You wrote the step the whole course rests on and watched it survive SIGKILL at every point: insert a
            'pending' row, skip a 'done' one, retry a 'pending' one with the same key, mark it 'done'. Then you
            placed each crash point: before any money moves nothing needs absorbing, between the provider call
            and 'done' only the key helps, and after 'done' the dedup table stops the message before any call.
        """),
    ]


TARGETS = {
    "notebooks/04_kill_the_consumer.ipynb": notebook_04,
    "solutions/04_kill_the_consumer.ipynb": solutions_04,
}


if __name__ == "__main__":
    sys.exit(build_targets(TARGETS, sys.argv[1:]))
