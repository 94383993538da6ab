"""Build notebooks 01 (Two Generals) and 02 (message loss) and their exercise notebooks.

    .venv/bin/python tools/build_01_02.py            # all four, executed
    .venv/bin/python tools/build_01_02.py 02         # only the ones whose name starts with 02

Then run ``tools/make_labs.py`` to regenerate ``labs/``.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from build_notebooks import ROOT, build, check, code, ignore_output, md  # noqa: E402

FRAME = "images/02_message_loss_frame.png"


def notebook_01():
    return [
        md("""
            # 01 · The Two Generals: why exactly-once *delivery* is impossible

            **You will learn**
            - why no protocol over a channel that can lose messages gives two parties certainty that they agree;
            - how the classical proof works, by walking it run by run, and how a machine can check it for small protocols;
            - why one-sided certainty (a consumer's dedup log) is still possible, which is what *exactly-once processing* means.

            **Time:** about 25 minutes. No broker or database is needed for this notebook.
        """),
        code("""
            from IPython.display import HTML, display

            from effectively_once.theory import generals
            from effectively_once.theory.generals import ATTACK, RETREAT, Run
            from effectively_once.widgets.generals import GeneralsProofWidget, run_svg

            SEED = 0          # the only random thing here is the duplicate stream at the end
            N_MESSAGES = 4    # the protocol length used in the examples
        """),
        md("""
            ## The story, as a model

            General A has an order, *attack* or *retreat*, that only A knows. A and B take turns sending
            numbered messengers through enemy land: message 1 from A to B, message 2 back from B, and so on.
            Any messenger can be captured. Each message answers the previous one, so after a capture the
            conversation stops. A **run** is therefore the order plus how many messages got through.

            A general decides from what it has *seen*, its **view**. The cell below builds the run in which
            message 4 (B's last reply) is captured and prints what each general sees.
        """),
        code("""
            run = Run(ATTACK, delivered=3, n_messages=N_MESSAGES)
            print(run.describe())
            print("A sees (order, replies received):     ", run.view_a())
            print("B sees (order if known, messages in): ", run.view_b())
            display(HTML(run_svg(run)))
        """),
        md("""
            Look at B: it sent message 4 and never learns whether it arrived. Its view is the same as in the
            run where everything got through. That single fact drives the whole proof.
        """),
        code("""
            everything = Run(ATTACK, delivered=N_MESSAGES, n_messages=N_MESSAGES)
            assert run.view_b() == everything.view_b(), "B cannot tell a lost last message from a delivered one"
            assert run.view_a() != everything.view_a(), "A can: it is missing a reply"
        """),
        md("""
            ## What a correct protocol would have to do

            A deterministic protocol maps each view to *attack* or *retreat*. It must give:

            1. **agreement**: both generals decide the same, in every run;
            2. **attack when all goes well**: the order was attack and every message arrived;
            3. **retreat when told to**: the order was retreat.

            Before any proof, try the rules people usually reach for first. For each, the checker searches
            every run and reports the first one that breaks it.
        """),
        code("""
            violations = [generals.find_violation(rule, N_MESSAGES) for rule in generals.first_try_rules(N_MESSAGES)]
            for v in violations:
                print(v.explain())
        """),
        md("The runs that break them, drawn as sequence diagrams (decisions at the bottom):"),
        code("""
            display(HTML('<div style="display:flex;flex-wrap:wrap;gap:8px">' + "".join(
                run_svg(v.run, (v.decision_a, v.decision_b), title=v.rule, width=300) for v in violations) + "</div>"))
        """),
        md("""
            Every rule fails, and the interesting ones fail the same way: the general who sent the last
            message that got lost acts as if it had arrived. Waiting for "one more acknowledgement" only
            moves the problem to the next message.
        """),
        code("""
            assert all(v is not None for v in violations), "every first-try rule has a breaking run"
            handshake = violations[-1]
            assert handshake.run.lost == N_MESSAGES and handshake.requirement == "agreement", \\
                "the full handshake breaks exactly when its last message is lost"
        """),
        md("""
            ## The proof, run by run

            Suppose some protocol met all three requirements. Start from the run where everything arrives:
            both attack. Now lose the last message. Its sender sees exactly what it saw before, so it still
            attacks; by agreement, so does the other general. Lose the message before that, and repeat.
            After as many steps as there are messages we reach the run where *nothing* arrives, and both must
            still attack. But B's view there is identical to the run where the order was *retreat*, in which
            B must retreat. No rule can do both. The table lists every step.
        """),
        code("""
            steps = generals.proof_steps(N_MESSAGES)
            for i, step in enumerate(steps):
                print(f"{i}. {step.run.describe():<48} both {step.forced:<7} | {step.unaware or '-'} cannot tell")
        """),
        code("""
            for before, after in zip(steps[:-2], steps[1:-1]):
                view = Run.view_a if after.unaware == "A" else Run.view_b
                assert view(before.run) == view(after.run), f"{after.unaware} must see no difference at {after.run}"
            assert steps[-1].run.view_b() == steps[-2].run.view_b() and steps[-1].forced != steps[-2].forced, \\
                "the last two runs look the same to B yet force opposite decisions: the contradiction"
        """),
        md("""
            Step through the same argument with diagrams. Use *next run* to lose one more message each time.
            (In a live kernel the widget is interactive; on GitHub you see the table above.)
        """),
        ignore_output("""
            GeneralsProofWidget(N_MESSAGES)
        """),
        md("""
            ## A bounded, exhaustive check

            The proof covers any number of messages. A computer cannot check *every* protocol, but for short
            ones it can try **every** deterministic decision rule: each rule is a choice of attack or retreat
            for every view of A and every view of B, so there are 2^(views of A + views of B) of them.
            The next cell checks all of them, for protocols of 1 to 8 messages, against all runs.
        """),
        code("""
            results = [generals.exhaustive_check(n) for n in range(1, 9)]
            print(f"{'messages':>8} {'rules checked':>14} {'always agree':>13} {'valid':>6} {'correct':>8}")
            for r in results:
                print(f"{r.n_messages:>8} {r.rules_checked:>14,} {r.meeting_agreement:>13} "
                      f"{r.meeting_validity:>6} {r.meeting_all:>8}")
            print(f"total rules checked: {sum(r.rules_checked for r in results):,}")
        """),
        code("""
            assert all(r.meeting_all == 0 for r in results), "no rule meets all three requirements"
            assert all(r.rules_checked == 2 ** (r.views_a + r.views_b) for r in results), "every rule was tried"
            assert all(r.meeting_agreement == 2 for r in results), "only 'always attack' and 'never attack' always agree"
            assert all(r.meeting_validity > 0 for r in results), "validity alone is easy: the requirements are not vacuous"
        """),
        md("""
            Read the columns together. Agreement alone is easy (ignore the messages: always attack, or never).
            Validity alone is easy (follow the messages). Both at once: zero, at every length.

            **What this check is, and what it is not.** It illustrates the proof; it does not replace it. It
            covers deterministic rules for alternating conversations of at most 8 messages in which a capture
            ends the conversation (which is all the enemy needs: capturing more can only hide more). It does
            not cover protocols of unbounded length (only the induction above does), and it says nothing about
            randomised protocols, which can make disagreement unlikely but never impossible.
        """),
        md("""
            ## From generals to queues

            Exactly-once *delivery* would need the producer and the broker (or the broker and the consumer) to
            both be certain that a message was delivered once: two-sided certainty over a lossy network, which
            is the problem we just proved impossible.

            Exactly-once *processing* needs much less. The consumer keeps a dedup log of message ids it has
            processed and decides alone, from its own log, whether to run the side effect. No one has to agree
            with it. The cell below feeds a stream with duplicates (what at-least-once delivery produces)
            through such a log.
        """),
        code("""
            demo = generals.one_sided_demo(n_messages=20, duplicate_rate=0.4, seed=SEED)
            demo
        """),
        code("""
            assert demo["deliveries"] > demo["distinct_ids"], "the stream did contain duplicates"
            assert demo["effects"] == demo["distinct_ids"] and demo["max_effects_per_id"] == 1, \\
                "the dedup log ran each side effect exactly once"
        """),
        md("""
            This asymmetry is the whole strategy of the rest of the course: let the broker deliver *at least*
            once, and make the consumer's processing idempotent. The producer still never knows for sure; it
            does not need to.

            ## Summary

            - A run is fixed by the order and where the conversation was cut; a general sees only its view.
            - The sender of the last message can never tell whether it arrived, so, step by step, a "correct"
              protocol would have to attack with no message delivered: a contradiction.
            - The exhaustive check tried every deterministic rule for protocols of up to 8 messages and found
              none correct; the proof covers the rest.
            - One-sided certainty is possible: a dedup log gives exactly-once *processing*.

            **Next:** `02_message_loss.ipynb` puts a lossy network between a producer, a broker and a consumer.
            **Exercises:** `labs/01_two_generals.ipynb` (solutions in `solutions/01_two_generals.ipynb`).
        """),
    ]


def notebook_02():
    return [
        md(f"""
            # 02 · Message loss: at-most-once, at-least-once, effectively-once

            **You will learn**
            - how lost messages and lost acknowledgements turn into losses or duplicates, depending on the semantic;
            - what an idempotent producer removes, and what it leaves for the consumer to handle;
            - why a consumer-side dedup log is what makes processing effectively-once.

            **Time:** about 25 minutes. No broker or database is needed: this is a seeded simulation.

            ![One frame of the animation]({FRAME})
        """),
        code("""
            import time

            import matplotlib.pyplot as plt

            from effectively_once.theory import channel
            from effectively_once.widgets.message_loss import MessageLossWidget, plot_summary

            SEED = 7
            MESSAGE_LOSS, ACK_LOSS, RETRIES = 0.2, 0.2, 8
            FRAME_STEP = 40   # the step drawn in the static frame
        """),
        md("""
            ## The model

            A producer sends each message to a broker over a network that loses a message with probability
            `MESSAGE_LOSS` and an acknowledgement with probability `ACK_LOSS`. Without an acknowledgement the
            producer times out and sends again, up to `RETRIES` more times. The consumer then reads each stored
            copy, runs its side effect (think: charge a card) and commits its offset; if the commit is lost the
            broker hands the copy out again. All the randomness is drawn once, from the seed, so every semantic
            below faces exactly the same losses.
        """),
        code("""
            draws = channel.draw(10_000, MESSAGE_LOSS, ACK_LOSS, max_retries=RETRIES, seed=SEED)
            print(f"{draws.n_messages} messages, message loss {MESSAGE_LOSS}, ack loss {ACK_LOSS}, seed {SEED}")
        """),
        md("""
            Here is the life of a single message under plain at-least-once, one event per line. Look for the
            lost acknowledgement: the broker already has the message, the producer does not know it, and its
            retry stores a second copy.
        """),
        code("""
            unlucky = int((draws.sends[:, 0] == channel.STORED_ACK_LOST).argmax())
            for e in channel.message_events(draws, channel.AT_LEAST_ONCE, unlucky):
                flags = " ".join(f for f, on in (("retry", e.retry), ("DUPLICATE", e.duplicate)) if on)
                print(f"m{e.message:<5} {e.kind:<18} {e.src:>8} -> {e.dst:<8} {flags}")
        """),
        code("""
            life = channel.message_events(draws, channel.AT_LEAST_ONCE, unlucky)
            assert [e.kind for e in life[:3]] == ["send", "stored", "ack_lost"], "the broker stored it, the ack was lost"
            assert sum(e.kind == "stored" for e in life) >= 2, "the retry stored a second copy"
        """),
        md("""
            ## Four semantics, the same losses

            - **at-most-once**: send once, commit before processing. Nothing is ever repeated.
            - **at-least-once**: retry until acknowledged; redeliver until committed.
            - **+ idempotent producer**: the broker recognises a retry by its producer id and sequence number
              and drops it (Kafka's `enable.idempotence=true`).
            - **effectively-once**: all of that, plus a dedup log in the consumer.
        """),
        code("""
            totals = channel.compare(draws, retries=RETRIES)
            print(f"{'semantic':<38} {'sends':>6} {'stored':>6} {'lost':>5} {'dup':>5} {'exactly once':>12}")
            for name, t in totals.items():
                print(f"{name:<38} {t.network_sends:>6} {t.stored_copies:>6} {t.lost:>5} {t.duplicated:>5} {t.exactly_once:>12}")
        """),
        md("Each semantic keeps its own promise, and only one keeps both. The asserts check it at this seed:"),
        code("""
            amo, alo = totals["at-most-once"], totals["at-least-once"]
            idem, eo = totals["at-least-once + idempotent producer"], totals["effectively-once"]
            assert amo.duplicated == 0 and amo.lost > 0, "at-most-once never duplicates, but it loses"
            assert alo.lost == 0 and alo.duplicated > 0, "at-least-once never lost a message here, but it duplicates"
            assert eo.lost == 0 and eo.duplicated == 0 and eo.exactly_once == draws.n_messages, \\
                "effectively-once neither lost nor duplicated a message"
        """),
        md("""
            ## What the idempotent producer does, and does not, fix

            The idempotent producer removes the duplicates the *producer's* retries create: the broker stores
            each message once. It cannot see the consumer. When a consumer's commit is lost (a crash, a
            rebalance) the same record is processed again, and only the consumer can stop that.
        """),
        code("""
            print("copies stored, plain vs idempotent:   ", alo.stored_copies, idem.stored_copies)
            print("retries the broker dropped:           ", idem.broker_dropped)
            print("duplicated side effects, idempotent:  ", idem.duplicated)
            print("dedup hits in the consumer (eff.-once):", eo.dedup_hits)
        """),
        code("""
            assert idem.stored_copies == draws.n_messages - idem.lost, "the broker kept one copy per message"
            assert idem.duplicated > 0, "redeliveries still run the side effect twice without consumer dedup"
            assert eo.dedup_hits == eo.deliveries - draws.n_messages, "the dedup log absorbed every extra delivery"
        """),
        md("""
            ## "Never loses" has a condition

            At-least-once loses a message only when *every* send of it is lost, so with a budget of `r`
            retries the chance per message is `MESSAGE_LOSS ** (r + 1)`. With the 8 retries used above it is
            0.2 ** 9, about one message in two million; with one retry it is one in twenty-five. Real producers have the same limit (`delivery.timeout.ms` in Kafka): when
            it runs out, the send fails and the application must handle it.
        """),
        code("""
            for r in (0, 1, 2, RETRIES):
                lost = channel.simulate(draws, channel.AT_LEAST_ONCE.with_retries(r)).lost
                print(f"retries={r}: lost {lost:>5} of {draws.n_messages}  (expected {channel.loss_bound(MESSAGE_LOSS, r) * draws.n_messages:.3g})")
        """),
        code("""
            one_retry = channel.simulate(draws, channel.AT_LEAST_ONCE.with_retries(1))
            every_send_lost = int((draws.sends[:, :2] == channel.SEND_LOST).all(axis=1).sum())
            assert one_retry.lost == every_send_lost > 0, "with one retry, the messages lost are exactly those whose two sends were both lost"
        """),
        md(f"""
            ## Watch it

            The widget animates the first ten messages, one event per step: sends and copies in blue, retries
            and redeliveries in orange, duplicated side effects in red, losses as a grey arrow ending in a
            cross, dedup skips in purple. Press ▶ to play, change the loss rates, tick *idempotent producer*
            and *consumer dedup*, and watch the counters. At the last step it compares all four semantics on
            1,000 messages. Readers without a kernel see this frame instead:

            ![A frame of the message-loss animation]({FRAME})
        """),
        ignore_output("""
            widget = MessageLossWidget(message_loss=MESSAGE_LOSS, ack_loss=ACK_LOSS, retries=3, seed=SEED)
            widget
        """),
        md("""
            The widget is deterministic: setting its step from Python gives the same state every time, so the
            counters below are the same in every run (the static frame above is this very step).
        """),
        code("""
            widget.step = FRAME_STEP
            widget.counters
        """),
        code("""
            widget.run_to_end()
            final = widget.counters
            expected = channel.simulate(widget.draws, widget.semantics)
            assert (final["messages lost"], final["messages duplicated"]) == (expected.lost, expected.duplicated), \\
                "the widget's counters agree with the simulation"
            final
        """),
        md("The summary the widget shows at its last step, as a plot over all 10,000 messages:"),
        code("""
            ax = plot_summary(totals)
            ax.set_title(f"lost and duplicated messages, same losses for all (seed {SEED})")
            plt.show()
        """),
        md("""
            ## How fast is the simulation?

            The totals are computed with numpy over all messages at once, so a million messages take a
            fraction of a second (`benchmarks/channel.py` compares it with a plain per-message loop). The
            timing varies from machine to machine, so nbval does not compare this cell's output.
        """),
        ignore_output("""
            big = channel.draw(1_000_000, MESSAGE_LOSS, ACK_LOSS, max_retries=RETRIES, seed=SEED)
            start = time.perf_counter()
            big_totals = channel.simulate(big, channel.EFFECTIVELY_ONCE.with_retries(RETRIES))
            print(f"1,000,000 messages in {time.perf_counter() - start:.3f} s: "
                  f"{big_totals.lost} lost, {big_totals.duplicated} duplicated")
        """),
        code("""
            assert big_totals.duplicated == 0 and big_totals.exactly_once + big_totals.lost == 1_000_000
        """),
        md("""
            ## Summary

            - A lost message loses data unless the producer retries; a lost acknowledgement makes the retry a
              duplicate.
            - At-most-once never duplicates but loses; at-least-once never loses (while it keeps retrying) but
              duplicates.
            - The idempotent producer removes the broker-side copies; the consumer's redeliveries remain.
            - Only the consumer's dedup log makes the *processing* happen exactly once: effectively-once.

            **Next:** the real pipeline, on a real broker and a real PostgreSQL.
            **Exercises:** `labs/02_message_loss.ipynb` (solutions in `solutions/02_message_loss.ipynb`).
        """),
    ]


def solutions_01():
    return [
        md("""
            # Exercises for 01 · The Two Generals

            Two exercises on the model of notebook 01. Write your code where a cell raises
            `NotImplementedError`, then run the check cell after it: it tells you what is wrong, if anything.

            **Time:** about 20 minutes.
        """),
        code("""
            from effectively_once.theory import generals
            from effectively_once.theory.generals import ATTACK, RETREAT, Run

            N_MESSAGES = 4
        """),
        md("""
            ## Exercise 1: find the run that breaks a rule

            Write `breaking_run(rule, n)`: return a run of an `n`-message protocol in which `rule` breaks at
            least one requirement, or `None` if there is none. Use `generals.all_runs(n)`,
            `rule.decisions(run)` (A's and B's decisions) and `generals.broken_requirements(run, a, b)`.
            Do not call `generals.find_violation`: that is the answer.
        """),
        code('''
            def breaking_run(rule, n):
                """A run in which `rule` breaks a requirement, or None."""
                ### BEGIN SOLUTION
                # HINT: loop over generals.all_runs(n); a run breaks the rule when broken_requirements(...) is not empty.
                for run in generals.all_runs(n):
                    a, b = rule.decisions(run)
                    if generals.broken_requirements(run, a, b):
                        return run
                return None
                ### END SOLUTION
        '''),
        check("""
            for rule in generals.first_try_rules(N_MESSAGES):
                run = breaking_run(rule, N_MESSAGES)
                assert run is not None, f"{rule.name!r} does break a requirement somewhere: look at every run"
                a, b = rule.decisions(run)
                assert generals.broken_requirements(run, a, b), \\
                    f"{rule.name!r} meets every requirement in {run.describe()}: that run does not break it"
            never = generals.DecisionRule("never attack", lambda va: RETREAT, lambda vb: RETREAT)
            assert breaking_run(never, 0) is not None, \
                "with zero messages, 'never attack' still breaks 'attack when all goes well'"
            print("Exercise 1 passed: every rule people try first has a breaking run.")
        """),
        md("""
            ## Exercise 2: who cannot tell the difference?

            In each step of the proof one more message is lost, and its sender cannot tell the new run from
            the previous one. Write `unaware_general(n, delivered)`: in the run where the order is attack and
            `delivered` of `n` messages arrived (so message `delivered + 1` was captured), return `"A"` or `"B"`,
            the general whose view is the same as in the run with one more message delivered.
            Compare `Run(...).view_a()` and `Run(...).view_b()` rather than using a formula.
        """),
        code('''
            def unaware_general(n, delivered):
                """The general who cannot tell run (attack, delivered) from run (attack, delivered + 1)."""
                ### BEGIN SOLUTION
                # HINT: build Run(ATTACK, delivered, n) and Run(ATTACK, delivered + 1, n) and compare view_a(), then view_b().
                now, before = Run(ATTACK, delivered, n), Run(ATTACK, delivered + 1, n)
                if now.view_a() == before.view_a():
                    return "A"
                if now.view_b() == before.view_b():
                    return "B"
                raise AssertionError("both generals see a difference: this cannot happen in this model")
                ### END SOLUTION
        '''),
        check("""
            for n in (3, 4, 5):
                for step in generals.proof_steps(n)[1:-1]:
                    got = unaware_general(n, step.run.delivered)
                    assert got == step.unaware, (
                        f"with {n} messages and message {step.run.delivered + 1} captured, {step.unaware} sent it "
                        f"and cannot tell the difference, but unaware_general returned {got!r}")
            print("Exercise 2 passed: the sender of the lost message is always the one who cannot tell.")
        """),
        md("""
            ## Summary

            You searched the runs of a protocol for the one that defeats it, and you found the general who
            is left in the dark at each step of the proof: always the sender of the captured message.
        """),
    ]


def solutions_02():
    return [
        md("""
            # Exercises for 02 · Message loss

            Two exercises on the simulated channel of notebook 02. Write your code where a cell raises
            `NotImplementedError`, then run the check cell after it.

            **Time:** about 20 minutes.
        """),
        code("""
            from effectively_once.theory import channel

            SEED = 3
            draws = channel.draw(2_000, message_loss=0.2, ack_loss=0.3, max_retries=5, seed=SEED)
            # What an at-least-once consumer receives, in order: one message id per delivery.
            delivered_ids = [f"msg-{e.message}" for e in channel.iter_events(draws, channel.IDEMPOTENT_PRODUCER)
                             if e.kind == "deliver"]
            print(len(delivered_ids), "deliveries of", len(set(delivered_ids)), "distinct messages")
        """),
        md("""
            ## Exercise 1: add dedup to a consumer

            `charge_all(delivered_ids)` below is an at-least-once consumer: it charges once per delivery, so
            redeliveries charge twice. Give it a dedup log: charge each message id at most once, in the order
            the ids first arrive, and return the list of ids charged and the number of deliveries skipped.
        """),
        code('''
            def charge_all(delivered_ids):
                """Charge every delivered message once; return (ids charged, in order; deliveries skipped)."""
                charged = []
                skipped = 0
                ### BEGIN SOLUTION
                # HINT: keep a set of ids already charged; skip (and count) a delivery whose id is in it.
                seen = set()
                for msg_id in delivered_ids:
                    if msg_id in seen:
                        skipped += 1
                        continue
                    seen.add(msg_id)
                    charged.append(msg_id)
                ### END SOLUTION
                return charged, skipped
        '''),
        check("""
            charged, skipped = charge_all(delivered_ids)
            assert len(charged) == len(set(charged)), "some message was charged twice: check the id before charging"
            assert set(charged) == set(delivered_ids), "some delivered message was never charged: dedup must not drop new ids"
            assert charged == list(dict.fromkeys(delivered_ids)), "charge in the order the ids first arrive"
            assert skipped == len(delivered_ids) - len(charged), "count every skipped delivery"
            assert skipped == channel.simulate(draws, channel.EFFECTIVELY_ONCE).dedup_hits, \\
                "your consumer should skip exactly as many deliveries as the simulation's dedup log"
            print(f"Exercise 1 passed: {len(charged)} charges, {skipped} duplicate deliveries skipped.")
        """),
        md("""
            ## Exercise 2: size the retry budget

            At-least-once loses a message only when every one of its `retries + 1` sends is lost. Write
            `retries_needed(message_loss, n_messages)`: the smallest number of retries for which the
            *expected* number of lost messages, `n_messages * message_loss ** (retries + 1)`, is below one.
        """),
        code('''
            def retries_needed(message_loss, n_messages):
                """Smallest retry budget whose expected losses over n_messages are below one."""
                ### BEGIN SOLUTION
                # HINT: start at 0 and count up while n_messages * message_loss ** (retries + 1) >= 1.
                retries = 0
                while n_messages * message_loss ** (retries + 1) >= 1:
                    retries += 1
                return retries
                ### END SOLUTION
        '''),
        check("""
            cases = {(0.2, 1_000): 4, (0.2, 1_000_000): 8, (0.5, 10): 3, (0.01, 50): 0}
            for (p, n), want in cases.items():
                got = retries_needed(p, n)
                assert got == want, f"retries_needed({p}, {n}) returned {got}, expected {want}: " \\
                                    f"with {got} retries the expected loss is {n * p ** (got + 1):.3g}"
            budget = retries_needed(0.2, 2_000)
            lost = channel.simulate(channel.draw(2_000, 0.2, 0.3, max_retries=budget, seed=SEED),
                                    channel.AT_LEAST_ONCE.with_retries(budget)).lost
            print(f"Exercise 2 passed: {budget} retries; the simulation lost {lost} of 2000 at seed {SEED}.")
        """),
        md("""
            ## Summary

            A dedup log turned an at-least-once consumer into one that charges each message once, and you
            sized a retry budget from the loss rate. Neither needed the producer and the consumer to agree.
        """),
    ]


TARGETS = {
    "notebooks/01_two_generals.ipynb": notebook_01,
    "notebooks/02_message_loss.ipynb": notebook_02,
    "solutions/01_two_generals.ipynb": solutions_01,
    "solutions/02_message_loss.ipynb": solutions_02,
}


def save_frame() -> Path:
    """The static frame of notebook 02's animation, at the step the notebook shows."""
    from effectively_once.widgets.message_loss import MessageLossWidget

    widget = MessageLossWidget(message_loss=0.2, ack_loss=0.2, retries=3, seed=7)
    widget.step = 40
    return widget.save_frame(ROOT / "notebooks" / FRAME)


def main(argv: list[str]) -> int:
    """Build the notebooks whose file name starts with one of ``argv`` (all when empty)."""
    for target, cells in TARGETS.items():
        if not argv or any(Path(target).name.startswith(a) for a in argv):
            if target == "notebooks/02_message_loss.ipynb":
                print(f"wrote {save_frame().relative_to(ROOT)}")
            build(cells(), target)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
