"""Which process holds a lock: a pid and when it started, so a reused pid is told apart.

Locks (stage 3's ``<output>/.<run>.lock``, the image cache's ``building.lock``) name the host and
pid of their holder. A pid is reused once its process ends, so a lock also records the holder's
start time: a live process under that pid that started at another time is not the holder.
"""

from __future__ import annotations

from pathlib import Path


def process_start(pid: int) -> str | None:
    """When process ``pid`` started, as ``<boot id>:<clock ticks after boot>`` (Linux:
    ``/proc/<pid>/stat`` field 22); None without ``/proc`` or when there is no such process."""
    try:
        stat = Path(f"/proc/{int(pid)}/stat").read_text(encoding="utf-8", errors="replace")
        ticks = stat.rsplit(")", 1)[1].split()[19]  # after "pid (name)": field 3 is index 0
        boot = Path("/proc/sys/kernel/random/boot_id").read_text(encoding="utf-8").strip()
    except (OSError, IndexError, ValueError):
        return None
    return f"{boot}:{ticks}"


def reused(pid: int, recorded: str | None) -> bool:
    """True when a live ``pid`` is not the process that recorded ``recorded`` (its start)."""
    now = process_start(pid)
    return bool(now and recorded and now != recorded)
