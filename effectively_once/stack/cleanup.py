"""Removing what runs left behind: ``python -m effectively_once clean [--dry-run]``.

Every run records what it creates (``effectively_once.runs``). A run whose
owner process is gone holds nothing any more, so whatever it still lists is
a leftover: a process still running, a topic (with its ``.dlq``), a consumer
group, a database, a temporary directory. ``clean`` lists them and removes
them; it never touches a run whose owner still runs. The same code serves
the run's own watchdog (at once, when the owner dies), ``reset NB`` (the runs
of one notebook) and ``down`` (stray processes).

Topics, groups and databases live on a stack: the one ``up`` started (reached
through ``$EO_HOME/stack.json``), a private one (gone with its directory),
or an external cluster (reached through ``EO_KAFKA_BOOTSTRAP`` and
``EO_POSTGRES_DSN``). What sits on a stack that is not running now stays
recorded, and the listing says so.
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from effectively_once.lifetime import SIGKILL, same_process, stop_pid
from effectively_once.protocol import plural
from effectively_once.runs import Resource, Run, RunLock, all_runs, read_run, rewrite
from effectively_once.settings import namespace

if TYPE_CHECKING:
    from effectively_once.stack.core import Stack

HELP = ("remove what runs of this namespace left behind once their owner is gone: processes, topics, "
        "consumer groups, databases, temporary directories")
STOP_GRACE_SECONDS = 5.0  # a leftover process gets its stop signal, then SIGKILL after this long
# A consumer killed a moment ago is still a member of its group until its session times out
# (2 to 6 s on the brokers the course starts; 45 s is Kafka's default elsewhere).
GROUP_PATIENCE_SECONDS = 15.0


@dataclass
class Cleaned:
    """What cleaning one run did: what it removed, and what waits (with why)."""

    run: Run
    removed: list[Resource] = field(default_factory=list)
    waiting: list[tuple[Resource, str]] = field(default_factory=list)
    busy: int | None = None       # the pid of another process cleaning this run at the same moment
    dry_run: bool = False

    def summary(self) -> str:
        """Lines for a listing: the run, then one line per leftover."""
        head = f"run of {self.run.owner.describe()}, owner gone"
        if self.busy:
            return f"{head}: being cleaned by pid {self.busy}"
        verb = "would remove" if self.dry_run else "removed"
        lines = [head + ("" if self.removed or self.waiting else ": nothing left")]
        lines += [f"  {verb} {r.describe()}" for r in self.removed]
        lines += [f"  left {r.describe()}: {why}" for r, why in self.waiting]
        return "\n".join(lines)


class Stacks:
    """The stacks a cleaner can reach, by ``Stack.ref``; each looked up once."""

    def __init__(self) -> None:
        self._found: dict[str, tuple[Stack | None, str]] = {}
        self._up: Stack | None | bool = False

    def _up_stack(self) -> Stack | None:
        if self._up is False:
            from effectively_once.lifetime import pid_alive
            from effectively_once.stack.state import attach, running_record

            self._up = None
            try:
                record = running_record()
                if record is not None and pid_alive(record.keeper):
                    self._up = attach(record)
            except Exception:  # a record that cannot be read (StaleRecord), or a stack that cannot be reached
                self._up = None
        return self._up if self._up is not False else None  # type: ignore[return-value]

    def reach(self, ref: str, leaving: Iterable[str] = ()) -> tuple[Stack | None, str]:
        """(the stack named ``ref``, "") if it runs; (None, "gone") if it is gone with its files; else (None, why)."""
        if ref in self._found:
            return self._found[ref]
        kind, _, where = ref.partition(":")
        found: tuple[Stack | None, str]
        up = self._up_stack()
        if up is not None and up.ref == ref:
            found = (up, "")
        elif kind == "files" and (not Path(where).exists() or any(_inside(where, d) for d in leaving)):
            found = (None, "gone")  # its servers kept everything in that directory
        elif kind == "docker":
            found = (None, "gone")  # containers go with whoever started them (their reaper)
        elif kind == "external" and os.environ.get("EO_KAFKA_BOOTSTRAP", "").strip() == where:
            from effectively_once.stack.external import connect_external

            found = (connect_external(), "")
        else:
            found = (None, f"its stack ({where}) is not running: `python -m effectively_once up`, then `clean`")
        self._found[ref] = found
        return found


def _inside(path: str, directory: str) -> bool:
    return path == directory or path.startswith(directory.rstrip(os.sep) + os.sep)


def _stop(resource: Resource) -> bool:
    """Stop a leftover process (the same process, never a reused pid); True when it is gone."""
    if not same_process(resource.pid, resource.started):
        return True
    stop_pid(resource.pid, resource.stop_signal or SIGKILL, timeout=STOP_GRACE_SECONDS)
    return not same_process(resource.pid, resource.started)


def _named_after(existing: Iterable[str], wanted: Iterable[str]) -> dict[str, list[str]]:
    """For each wanted name, the existing names that are it or are named after it (``<name>.…``)."""
    names = list(existing)
    return {w: [n for n in names if n == w or n.startswith(w + ".")] for w in wanted}


def _first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [repr(exc)])[0][:160]


def _topics(stack: Stack, wanted: list[str]) -> dict[str, list[str]]:
    return _named_after(stack.admin().list_topics(timeout=10).topics, wanted)


def _failures(futures: dict[str, Any], absent: str) -> dict[str, str]:
    """{name: why} for each admin request that failed, except for a thing that was gone already (``absent``)."""
    failed = {}
    for name, future in futures.items():
        try:
            future.result(timeout=20)
        except Exception as exc:
            if absent not in str(exc):
                failed[name] = _first_line(exc)
    return failed


def _delete_topics(stack: Stack, names: list[str]) -> dict[str, str]:
    admin = stack.admin()  # held until every future is answered: its handle serves them
    return _failures(admin.delete_topics(names, operation_timeout=15), "UNKNOWN_TOPIC")


def _groups(stack: Stack, wanted: list[str]) -> dict[str, list[str]]:
    admin = stack.admin()
    listing = admin.list_consumer_groups(request_timeout=10).result(timeout=15)
    if listing.errors:
        raise RuntimeError(_first_line(listing.errors[0]))
    return _named_after((g.group_id for g in listing.valid), wanted)


def _delete_groups(stack: Stack, names: list[str], patience: float = GROUP_PATIENCE_SECONDS) -> dict[str, str]:
    """Delete groups; one that still lists a member (a killed consumer whose session has not yet
    expired) is tried again until ``patience`` runs out."""
    deadline = time.monotonic() + patience
    pending: list[str] = list(names)
    failed: dict[str, str] = {}
    admin = stack.admin()
    while pending:
        failed = _failures(admin.delete_consumer_groups(pending, request_timeout=15), "GROUP_ID_NOT_FOUND")
        pending = [n for n, why in failed.items() if "NON_EMPTY" in why]
        if not pending or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    return failed


def _databases(stack: Stack, wanted: list[str]) -> dict[str, list[str]]:
    import psycopg

    with psycopg.connect(stack.postgres_dsn("postgres"), connect_timeout=5) as conn:
        existing = {row[0] for row in conn.execute("SELECT datname FROM pg_database WHERE datname = ANY(%s)",
                                                    (wanted,))}
    return {w: [w] if w in existing else [] for w in wanted}


def _drop_databases(stack: Stack, names: list[str]) -> dict[str, str]:
    failed = {}
    for name in names:
        try:
            stack.drop_databases(name)
        except Exception as exc:
            failed[name] = _first_line(exc)
    return failed


# kind -> (which of the wanted names exist, and what else is named after them; remove those)
ON_A_STACK = {"topic": (_topics, _delete_topics), "group": (_groups, _delete_groups),
              "database": (_databases, _drop_databases)}


def clean_run(run: Run, *, kept_too: bool = True, kinds: Iterable[str] | None = None, dry_run: bool = False,
              stacks: Stacks | None = None) -> Cleaned:
    """Remove what ``run`` (whose owner is gone) still holds; the run's file keeps only what had to wait.

    ``kept_too=False`` leaves what its creator marked to keep (the watchdog's
    choice); ``kinds`` limits it to some kinds (``down`` stops processes only);
    ``dry_run`` removes nothing and lists what it would remove. What no longer
    exists (a process that exited, a topic its run deleted as it died) is
    dropped from the record without being listed.
    """
    if run.owner.alive:
        raise ValueError(f"the run of {run.owner.describe()} is still going: only a run whose owner is gone is cleaned")
    stacks = stacks or Stacks()
    result = Cleaned(run, dry_run=dry_run)
    lock = RunLock(run)
    if not dry_run and not lock.acquire():
        result.busy = lock.holder
        return result
    try:
        if not dry_run:
            run = read_run(run.path) or run  # as it is now: another cleaner may have removed some of it
            result.run = run
        wanted = [r for r in run.resources if (kept_too or not r.keep) and (kinds is None or r.kind in kinds)]
        remaining = [r for r in run.resources if r not in wanted]
        leaving = [r.name for r in wanted if r.kind == "directory"]

        def wait(resource: Resource, why: str) -> None:
            result.waiting.append((resource, why))
            remaining.append(resource)

        # Processes first: a consumer left running would write to a topic as it is deleted.
        for resource in (r for r in wanted if r.kind == "process"):
            if not same_process(resource.pid, resource.started):
                continue
            if dry_run or _stop(resource):
                result.removed.append(resource)
            else:
                wait(resource, "it would not stop")
        by_stack: dict[str, list[Resource]] = {}
        for resource in (r for r in wanted if r.kind in ON_A_STACK):
            by_stack.setdefault(resource.stack or "", []).append(resource)
        for ref, held in by_stack.items():
            stack, why = stacks.reach(ref, leaving)
            if why == "gone":
                continue  # it went with its servers
            if stack is None:
                for resource in held:
                    wait(resource, why)
                continue
            for kind, (present, remove) in ON_A_STACK.items():
                chosen = [r for r in held if r.kind == kind]
                if not chosen:
                    continue
                try:
                    found = present(stack, [r.name for r in chosen])
                    doomed = sorted({n for names in found.values() for n in names})
                    failed = {} if dry_run or not doomed else remove(stack, doomed)
                except Exception as exc:  # the server did not answer: try again next time
                    for resource in chosen:
                        wait(resource, f"its server did not answer ({_first_line(exc)})")
                    continue
                for resource in chosen:
                    why_not = "; ".join(failed[n] for n in found[resource.name] if n in failed)
                    if why_not:
                        wait(resource, why_not)
                    elif found[resource.name]:
                        result.removed.append(resource)
        for resource in (r for r in wanted if r.kind == "directory"):
            if not Path(resource.name).exists():
                continue
            if not dry_run:
                shutil.rmtree(resource.name, ignore_errors=True)
                if Path(resource.name).exists():
                    wait(resource, "it could not be deleted")
                    continue
            result.removed.append(resource)
        if not dry_run:
            rewrite(run, remaining)
    finally:
        lock.release()
    return result


def runs_to_clean(notebook: str | None = None) -> tuple[list[Run], list[Run]]:
    """(runs of this namespace whose owner is gone, runs whose owner still runs), of one notebook if given."""
    mine = [run for run in all_runs() if run.owner.namespace == namespace()
            and (notebook is None or run.owner.notebook == notebook)]
    gone = [run for run in mine if not run.owner.alive]
    return gone, [run for run in mine if run not in gone]


def clean(notebook: str | None = None, *, dry_run: bool = False, kinds: Iterable[str] | None = None) -> list[Cleaned]:
    """Clean every run of this namespace whose owner is gone (of one notebook if given)."""
    gone, _ = runs_to_clean(notebook)
    stacks = Stacks()
    return [clean_run(run, dry_run=dry_run, kinds=kinds, stacks=stacks) for run in gone]


def stop_strays() -> list[Resource]:
    """Stop every process that a run of this namespace left running after its owner died (``down`` calls it)."""
    stopped: list[Resource] = []
    for cleaned in clean(kinds=("process",)):
        stopped.extend(cleaned.removed)
    return stopped


def report(results: list[Cleaned], alive: list[Run], dry_run: bool, whose: str = "this namespace") -> str:
    """What ``clean`` prints: each run it cleaned, then the runs it left alone."""
    touched = [c for c in results if c.removed or c.waiting or c.busy]
    lines = [c.summary() for c in touched]
    removed = sum(len(c.removed) for c in results)
    waiting = sum(len(c.waiting) for c in results)
    if not touched:
        lines.append(f"Nothing to clean: no run of {whose} left anything behind.")
    else:
        verb = "would remove" if dry_run else "removed"
        lines.append(f"{verb} {plural(removed, 'leftover')}" + (f"; {waiting} must wait (see above)" if waiting else "")
                     + (": run `python -m effectively_once clean` to remove them." if dry_run and removed else "."))
    holding = [run for run in alive if run.resources]
    if holding:
        lines.append("Left alone, their owner still runs: " + ", ".join(run.owner.describe() for run in holding))
    return "\n".join(line for line in lines if line)


# -- the command -----------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dry-run", action="store_true", help="list the leftovers and remove nothing")


def run(args: argparse.Namespace) -> int:
    results = clean(dry_run=args.dry_run)
    _, alive = runs_to_clean()
    print(report(results, alive, args.dry_run))
    return 0 if not any(c.waiting for c in results) else 1
