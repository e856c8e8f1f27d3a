"""Stage 3's run folder: who trains it, where a replacement trains, and whether it is finished.

* Lock: ``<output>/.<run>.lock`` names the host and pid (and SLURM job) training the run; a second
  command for the same run is refused. A lock whose process is gone (same host, or the same SLURM
  job requeued) is taken over with a note.
* ``--overwrite`` trains in ``<output>/.<run>.new/`` and swaps it in only when it has finished, so
  a kill never loses the finished run; re-running the same command resumes the replacement.
* Settings are compared by what defines the run: the folder paths (``--data``, ``--output``) are
  left out and the dataset is compared by its image list (``dataset_images``), so a moved work or
  data folder still holds the same run.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import time
from pathlib import Path

from ..cli import UserError
from ..outputs import MANIFEST, RUN_ONLY, changed_keys, recorded_settings
from ..processes import process_start, reused

PATH_KEYS = ("data", "output")
STAGE = "3-training"
DATASET_KEY = "dataset_images"


def staging_dir(run_dir: Path) -> Path:
    """Where ``--overwrite`` trains the replacement of ``run_dir``."""
    return run_dir.with_name(f".{run_dir.name}.new")


def is_rank_zero() -> bool:
    """False in the extra processes of a multi-GPU run (they never lock or move folders)."""
    return all(os.environ.get(k, "0") == "0" for k in ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID"))


def run_settings(s, images, *, batch_size_requested: int | None = None) -> dict:
    """The settings recorded with a run: its flags (``s``: the resolved
    :class:`~wingclr.train.settings.TrainSettings`), the batch size a grid point asked for when it
    was clamped to the data, and the digest of the image list it trains on."""
    listing = "\n".join(p.as_posix() for p in images.images).encode()
    asked = {} if batch_size_requested is None else {"batch_size_requested": batch_size_requested}
    return {**recorded_settings(s, STAGE), **asked, DATASET_KEY: hashlib.sha256(listing).hexdigest()}


# settings added later, with the value runs recorded before them trained with
LEGACY_DEFAULTS = {"forward": "separate", "interpolate": 1.0}


def changed_settings(stored: dict, wanted: dict) -> list[str]:
    """Names of the settings that differ between a run's record and this command.

    When both record the image list, folder paths are not compared (a moved folder is the same
    run). Records from before the image-list digest are compared with the paths.
    """
    stored = {**LEGACY_DEFAULTS, **stored}
    keys = (set(stored) | set(wanted)) - RUN_ONLY[STAGE]
    if DATASET_KEY in stored and DATASET_KEY in wanted:
        keys -= set(PATH_KEYS)
    else:
        keys.discard(DATASET_KEY)
    return changed_keys(stored, wanted, keys)


def finish_replacement(run_dir: Path) -> None:
    """Swap a finished ``--overwrite`` replacement into place (also after a kill mid-swap)."""
    new, old = staging_dir(run_dir), run_dir.with_name(f".{run_dir.name}.old")
    if (new / MANIFEST).is_file():
        if run_dir.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(run_dir, old)
        os.replace(new, run_dir)
    if old.exists():
        if run_dir.exists():
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(old, run_dir)


# the lock record's fields and their JSON types (host and pid are required; pid_start is absent
# in locks of earlier versions)
LOCK_TYPES = {"host": str, "pid": int, "slurm_job": (str, type(None)), "started": str,
              "pid_start": (str, type(None))}


def lock_shape(record) -> str:
    """What is wrong with a lock record's JSON shape ('' when it is one wingclr writes)."""
    if not isinstance(record, dict):
        return f"a JSON {type(record).__name__}, not an object"
    for key, kind in LOCK_TYPES.items():
        if key not in record and key in ("host", "pid"):
            return f"no {key!r}"
        if key in record and (not isinstance(record[key], kind) or isinstance(record[key], bool)):
            return f"its {key!r} is {record[key]!r}"
    if not 0 < record["pid"] < 2 ** 31:  # what a pid can be (os.kill overflows beyond)
        return f"its 'pid' is {record['pid']}"
    return ""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


class RunLock:
    """``<output>/.<run>.lock`` while this process trains the run (a context manager).

    The lock file lives beside the run folder, so the run folder itself is only made when
    training really starts, and a replacement can be swapped in while the lock is held.
    """

    def __init__(self, run_dir: Path):
        self.run_dir, self.path = run_dir, run_dir.with_name(f".{run_dir.name}.lock")
        self.held = False
        self._made_parent = False

    def _owner(self) -> dict:
        job = os.environ.get("SLURM_JOB_ID")
        return {"host": socket.gethostname(), "pid": os.getpid(), "slurm_job": job,
                "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "pid_start": process_start(os.getpid())}

    def _stale(self, holder: dict | str | None) -> str:
        """Why the lock's holder is gone ('' when it may still be training)."""
        me = self._owner()
        if holder is None:  # empty or garbled: a writer that died at once, or one writing now
            try:
                return "unreadable lock" if time.time() - self.path.stat().st_mtime > 60 else ""
            except FileNotFoundError:
                return "lock removed"
        if isinstance(holder, str):  # whole JSON of another shape: no writer of ours made it
            return f"malformed lock: {holder}"
        if holder.get("slurm_job") and holder["slurm_job"] == me["slurm_job"]:
            return f"SLURM job {me['slurm_job']} was requeued"
        if holder["host"] == me["host"]:
            pid = holder["pid"]
            if not _alive(pid):
                return f"pid {pid} on {me['host']} has ended"
            if reused(pid, holder.get("pid_start")):
                return (f"pid {pid} on {me['host']} is another process now (its process ended and "
                        "the pid was reused)")
        return ""

    def _read(self) -> dict | str | None:
        """The lock's record; None when empty or not JSON (maybe being written), or what is wrong
        with JSON of another shape (:func:`lock_shape`)."""
        try:
            record = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return lock_shape(record) or record

    def acquire(self) -> None:
        self._made_parent = not self.path.parent.exists()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for attempt in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
            except FileExistsError:
                holder = self._read()
                why = self._stale(holder) if attempt == 0 else ""
                if not why:
                    who = (f"pid {holder['pid']} on {holder['host']} since {holder.get('started')}"
                           if isinstance(holder, dict) else "another process")
                    raise UserError(f"{self.run_dir} is being trained by {who} (lock "
                                    f"{self.path}); wait for it to finish, or delete the lock "
                                    "file if that process is gone") from None
                print(f"note: taking over the lock {self.path} ({why})")
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(self._owner(), f)
            self.held = True
            return

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False
        if self._made_parent:  # a start that failed leaves no empty --output behind
            try:
                self.path.parent.rmdir()
            except OSError:
                pass

    def __enter__(self) -> "RunLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
