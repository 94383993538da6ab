"""The docker lane (`make test-docker`): the course's checks on `EO_BACKEND=docker`.

    python tools/docker_lane.py [-- PYTEST_ARGS]    # the docker lane of tools/lanes.py, with what it needs

1. A Docker engine: the one ``DOCKER_HOST`` (or the default socket) names
   when it answers. Otherwise ``dockerd`` is started on a private socket and
   data root under ``$EO_DOCKER_DIR`` (default ``/tmp/eo-docker``), so that no
   one else on the machine sees it, and stopped by its pid at the end;
   Debian's ``docker.io`` is installed first (root, apt-get) when there is no
   ``dockerd``.
2. The images: the official ones when the engine has them or can pull them;
   otherwise ``tools/build_images.py`` builds local ones (a second build
   costs nothing), which the docker backend then picks.
3. ``tools/lanes.py docker``: the lane's tests, with ``EO_BACKEND=docker``.

It prints how long each step took.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from effectively_once.stack.engine import docker_available, docker_host, image_present, pull_image  # noqa: E402
from effectively_once.stack.images import ROLES, obtain_images, official_image  # noqa: E402
from effectively_once.stack.processes import pid_alive, stop_pid  # noqa: E402

DOCKER_DIR = Path(os.environ.get("EO_DOCKER_DIR", "/tmp/eo-docker"))
START_TIMEOUT = 90.0


def say(text: str) -> None:
    print(f"== docker lane: {text}", flush=True)


def install_docker() -> None:
    """Debian's docker.io, when this is a Debian-like machine and we are root; else one sentence and stop."""
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        raise SystemExit("docker lane: no Docker engine answers and there is no dockerd to start: install Docker "
                         "(Debian: `apt-get install docker.io`, as root) or set DOCKER_HOST to an engine.")
    say("installing Debian's docker.io (apt-get)...")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "docker.io"]):
        subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)


def start_dockerd() -> subprocess.Popen:
    """``dockerd`` on a private socket, data root and exec root under DOCKER_DIR; DOCKER_HOST points at it.

    ``--iptables=false``: published ports still reach the containers through
    Docker's userland proxy, and the machine's firewall rules stay as they are.
    """
    if shutil.which("dockerd") is None:
        install_docker()
    DOCKER_DIR.mkdir(parents=True, exist_ok=True)
    socket = DOCKER_DIR / "docker.sock"
    os.environ["DOCKER_HOST"] = f"unix://{socket}"
    log = open(DOCKER_DIR / "dockerd.log", "ab")
    daemon = subprocess.Popen(
        ["dockerd", "-H", f"unix://{socket}", "--data-root", str(DOCKER_DIR / "data"),
         "--exec-root", str(DOCKER_DIR / "exec"), "--pidfile", str(DOCKER_DIR / "docker.pid"),
         "--iptables=false", "--ip-masq=false"],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    log.close()
    deadline = time.monotonic() + START_TIMEOUT
    while not docker_available()[0]:
        if daemon.poll() is not None or time.monotonic() > deadline:
            tail = (DOCKER_DIR / "dockerd.log").read_text(errors="replace")[-1500:]
            stop_pid(daemon.pid, timeout=20)
            raise SystemExit(f"docker lane: dockerd did not answer on {socket}:\n{tail}")
        time.sleep(0.5)
    return daemon


def engine() -> int | None:
    """An engine that answers: the machine's (None), or the pid of a private dockerd this lane must stop.

    A private dockerd left by a lane that was killed (its starter's pid, in
    ``started-by``, is gone) is adopted and stopped at the end, so none outlives
    the lane that started it for long.
    """
    ok, why = docker_available()
    if ok:
        say(f"using the Docker engine at {docker_host() or 'the default socket'} ({why})")
        return None
    private = f"unix://{DOCKER_DIR / 'docker.sock'}"
    os.environ["DOCKER_HOST"] = private
    starter = DOCKER_DIR / "started-by"
    if docker_available()[0]:
        owner = int(starter.read_text()) if starter.exists() else 0
        if pid_alive(owner):  # another lane runs on it: use it, leave it to that lane
            say(f"using the private engine at {private}, started by the lane with pid {owner}")
            return None
        pid = int((DOCKER_DIR / "docker.pid").read_text())
        say(f"using the private engine at {private} (pid {pid}), left by a lane that was killed: "
            "it is stopped at the end")
        starter.write_text(str(os.getpid()))
        return pid
    say(f"no Docker engine answers ({why}); starting dockerd on {private}")
    started = time.monotonic()
    daemon = start_dockerd()
    starter.write_text(str(os.getpid()))
    say(f"dockerd (pid {daemon.pid}) answers after {time.monotonic() - started:.1f} s")
    return daemon.pid


def images() -> None:
    """The official images, pulled when missing; when they cannot be, the local build (free when cached)."""
    started = time.monotonic()
    missing = [official_image(role) for role in ROLES if not image_present(official_image(role))]
    unobtainable = [name for name in missing if pull_image(name, progress=say) is not None]
    if unobtainable:
        say(f"{' and '.join(unobtainable)} cannot be pulled: building the local images")
        subprocess.run([sys.executable, str(ROOT / "tools" / "build_images.py")], check=True)
    choices, why = obtain_images(pull=False, progress=say)
    if why is not None:
        raise SystemExit(f"docker lane: {why}")
    say(f"images: {', '.join(c.describe() for c in choices.values())} ({time.monotonic() - started:.1f} s)")


def main(argv: list[str]) -> int:
    extra = argv[argv.index("--") + 1:] if "--" in argv else argv
    lane_started = time.monotonic()
    daemon = engine()

    def stop_daemon() -> None:
        if daemon is not None and stop_pid(daemon, signal.SIGTERM, timeout=30):
            (DOCKER_DIR / "started-by").unlink(missing_ok=True)
            say(f"stopped the dockerd it started (pid {daemon})")

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        images()
        pytest_started = time.monotonic()
        env = {**os.environ, "EO_BACKEND": "docker"}
        # tools/lanes.py's docker lane: its tests, its stack, its JUnit XML under test-results/.
        command = [sys.executable, str(ROOT / "tools" / "lanes.py"), "docker", *(["--", *extra] if extra else [])]
        result = subprocess.run(command, cwd=ROOT, env=env)
        say(f"the tests exited {result.returncode} after {time.monotonic() - pytest_started:.0f} s; "
            f"the lane took {time.monotonic() - lane_started:.0f} s")
        return result.returncode
    finally:
        stop_daemon()


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
