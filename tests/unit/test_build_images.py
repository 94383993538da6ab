"""tools/build_images.py builds the two images side by side: what they share must not race."""

from __future__ import annotations

import threading
import time

from tools import build_images


def test_two_builds_at_once_install_debootstrap_once(monkeypatch):
    """A fresh machine has no debootstrap: both builds need it, and a second apt-get would find dpkg locked."""
    installed: list[bool] = []
    apt_runs: list[list[str]] = []

    def which(name: str) -> str | None:
        return {"apt-get": "/usr/bin/apt-get", "debootstrap": "/usr/sbin/debootstrap" if installed else None}.get(name)

    def run(cmd: list[str], **_kwargs: object) -> None:
        apt_runs.append(cmd)
        time.sleep(0.3)  # apt-get takes its time; the other build asks meanwhile
        installed.append(True)

    monkeypatch.setattr(build_images.shutil, "which", which)
    monkeypatch.setattr(build_images, "run", run)
    found: list[str] = []
    threads = [threading.Thread(target=lambda: found.append(build_images.need_debootstrap(lambda _line: None)))
               for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert apt_runs == [["apt-get", "install", "-y", "-qq", "debootstrap"]], apt_runs
    assert found == ["/usr/sbin/debootstrap"] * 2
