"""Visitors' private folders on a public server: one folder per owner (a signed-in Hugging Face user
or a browser session) for its uploads, run folders and trained adapters, listed for that owner
only, deleted ``ttl`` seconds after they were last written (a background sweeper).

    store = PrivateStore(root, ttl=86400).start_sweeper()
    store.trained_dir(owner)          # <root>/<owner>/trained: the owner's Train-tab runs
    store.sweep()                     # what is older than the TTL goes (also run every few minutes)

Owners are opaque folder-safe ids (``ui`` derives them; see ``owner_id``); no other owner's folder
is ever named to a visitor."""
from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import threading
import time
from pathlib import Path

log = logging.getLogger("medpeft.private")
TRAINED = "trained"


def owner_id(user: str | None = None, session: str | None = None) -> str:
    """A folder-safe owner id: ``hf-<user>`` for a signed-in Hugging Face user, else ``s-<digest>`` of
    the browser session (the raw session id is not written to disk), else ``anonymous``."""
    if user:
        return "hf-" + re.sub(r"[^A-Za-z0-9_.-]+", "-", user).strip("-.")[:96]
    if session:
        return "s-" + hashlib.sha256(session.encode()).hexdigest()[:24]
    return "anonymous"


def duration_text(seconds: float) -> str:
    """86400 -> ``24 hours``, 120 -> ``2 minutes``, 5 -> ``5 seconds`` (for "deleted ... after training")."""
    for unit, size in (("hour", 3600), ("minute", 60), ("second", 1)):
        if seconds >= size or unit == "second":
            n = round(seconds / size, 1)
            n = int(n) if n == int(n) else n
            return f"{n} {unit}{'' if n == 1 else 's'}"
    return f"{seconds:g} seconds"


def newest_mtime(path: Path) -> float:
    """The newest modification time of ``path`` and everything below it."""
    newest = path.lstat().st_mtime
    if path.is_dir() and not path.is_symlink():
        for dirpath, dirnames, filenames in os.walk(path):
            for name in dirnames + filenames:
                try:
                    newest = max(newest, os.lstat(os.path.join(dirpath, name)).st_mtime)
                except OSError:
                    pass
    return newest


class PrivateStore:
    def __init__(self, root: str | os.PathLike, ttl: float = 86400.0):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.ttl = float(ttl)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def owner_dir(self, owner: str) -> Path:
        if not owner or "/" in owner or owner in (".", ".."):
            raise ValueError(f"not an owner id: {owner!r}")
        return self.root / owner

    def trained_dir(self, owner: str) -> Path:
        return self.owner_dir(owner) / TRAINED

    def sweep(self, now: float | None = None) -> int:
        """Delete every entry of every owner's folders whose newest file is older than the TTL; an owner
        folder left empty goes too. Returns the number of entries deleted. Entries are the owner's run
        folders (``trained/<run>``) and any other top-level item."""
        now = time.time() if now is None else now
        deleted = 0
        for owner in list(self.root.iterdir()) if self.root.is_dir() else []:
            if not owner.is_dir():
                continue
            entries = []
            for item in owner.iterdir():
                entries += list(item.iterdir()) if item.is_dir() and item.name == TRAINED else [item]
            for entry in entries:
                try:
                    if now - newest_mtime(entry) < self.ttl:
                        continue
                    if entry.is_dir() and not entry.is_symlink():
                        shutil.rmtree(entry, ignore_errors=True)
                    else:
                        entry.unlink(missing_ok=True)
                    deleted += 1
                except FileNotFoundError:
                    continue
            for folder in (owner / TRAINED, owner):
                try:
                    folder.rmdir()  # only when empty
                except OSError:
                    pass
        return deleted

    def sweep_interval(self) -> float:
        return max(1.0, min(600.0, self.ttl / 4))

    def start_sweeper(self) -> "PrivateStore":
        """Sweep now and then every ``sweep_interval()`` seconds in a daemon thread."""
        if self._thread is not None:
            return self

        def loop():
            while True:
                try:
                    n = self.sweep()
                    if n:
                        log.info("deleted %d expired private item(s)", n)
                except Exception:  # never let the sweeper die
                    log.exception("private-data sweep failed")
                if self._stop.wait(self.sweep_interval()):
                    return

        self._thread = threading.Thread(target=loop, name="medpeft-private-sweeper", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
