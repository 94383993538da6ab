"""The SQL schemas of the course's databases, one ``.sql`` file each, shipped as package data.

- ``provider.sql``: the payment provider's own database (``ledger``, ``payment_intents``, ``declined_charges``,
  ``events``, ``webhook_deliveries``, ``idempotency_keys``);
- ``shop.sql``: the shop's database the consumer writes (``charges``, ``consumer_events``, ``consumer_offsets``);
- ``stripe2023_answers.sql``: the provider's answers as the Stripe 2023 replay records them;
- ``outbox.sql``: the transactional outbox, the relay's marks and the warehouse's inbox (``orders``,
  ``outbox``, ``inbox``, ``shipments``);
- ``sqs_visibility.sql``: the SQS-like queue of the visibility-timeout replay.

Every statement is idempotent (``IF NOT EXISTS``), so a schema can be applied again.
"""

from __future__ import annotations

from importlib import resources


def names() -> list[str]:
    """The file names of every schema in this package, sorted."""
    return sorted(p.name for p in resources.files(__name__).iterdir() if p.name.endswith(".sql"))


def load(name: str) -> str:
    """The text of the schema file ``name`` (e.g. ``"provider.sql"``)."""
    path = resources.files(__name__).joinpath(name)
    if not path.is_file():
        raise FileNotFoundError(f"no schema {name!r} in effectively_once.schemas; the schemas are {names()}")
    return path.read_text(encoding="utf-8")
