"""Messages per second of the channel simulation: numpy totals vs a plain per-message loop.

Both read the same draws (same seed, same losses) and must give identical
totals; the script checks that, then prints both rates and their ratio.

Then notebook 02's claim that a million messages take a fraction of a second:
a million, effectively-once, against a goal of 0.9 s, printed as the ratio of
the time taken to the goal. Exit 1 if the two versions disagree
or the goal is missed.

    .venv/bin/python benchmarks/channel.py [--messages 200000] [--seed 0]
"""

from __future__ import annotations

import argparse
import sys
import time
from functools import partial

from effectively_once.theory import channel


def best_of(repeats: int, fn):
    """The fastest of ``repeats`` timed calls, and the last result."""
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the ratio; exit 1 if the two versions disagree."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)

    draws = channel.draw(args.messages, 0.2, 0.2, max_retries=5, seed=args.seed)
    print(f"{args.messages:,} messages, message loss 0.2, ack loss 0.2, 5 retries, seed {args.seed}")
    print(f"{'semantic':<38} {'numpy msg/s':>14} {'loop msg/s':>12} {'ratio':>7}")
    ratios = []
    for semantics in channel.SEMANTICS:
        fast_s, fast = best_of(args.repeats, partial(channel.simulate, draws, semantics))
        loop_s, loop = best_of(1, partial(channel.simulate_loop, draws, semantics))
        if fast != loop:
            print(f"MISMATCH for {semantics.name}:\n  numpy {fast}\n  loop  {loop}", file=sys.stderr)
            return 1
        ratio = loop_s / fast_s
        ratios.append(ratio)
        print(f"{semantics.name:<38} {args.messages / fast_s:>14,.0f} {args.messages / loop_s:>12,.0f} "
              f"{ratio:>6.1f}x")
    print(f"totals identical for all four semantics; numpy is {min(ratios):.1f}x to {max(ratios):.1f}x faster")
    return million_messages(args.seed, args.repeats)


MILLION_GOAL_SECONDS = 0.9


def million_messages(seed: int, repeats: int) -> int:
    """A million messages effectively-once against the 0.9 s goal; 1 if the goal is missed."""
    draws = channel.draw(1_000_000, 0.2, 0.2, seed=seed)
    seconds, totals = best_of(repeats, partial(channel.simulate, draws, channel.EFFECTIVELY_ONCE))
    if totals.sent != 1_000_000:
        print(f"a million messages in, {totals.sent} sent", file=sys.stderr)
        return 1
    print(f"a million messages, effectively-once: {seconds:.3f} s, {seconds / MILLION_GOAL_SECONDS:.2f} of the "
          f"{MILLION_GOAL_SECONDS} s goal")
    if seconds >= MILLION_GOAL_SECONDS:
        print(f"simulating a million messages took {seconds:.2f} s: over the {MILLION_GOAL_SECONDS} s goal",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
