"""Who holds a TCP port: for the one line that says a port is taken and by what (Linux's
/proc; elsewhere, or without permission to look, nothing is named)."""

from __future__ import annotations

import os
from pathlib import Path

_LISTEN = "0A"


def holder(port: int) -> str | None:
    """``pid N (command)`` of a process listening on ``port``, if one can be seen."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if (
                len(fields) > 9
                and fields[3] == _LISTEN
                and int(fields[1].rsplit(":", 1)[1], 16) == port
            ):
                inodes.add(fields[9])
    if not inodes:
        return None
    wanted = {f"socket:[{inode}]" for inode in inodes}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            descriptors = os.listdir(f"/proc/{pid}/fd")
            if any(os.readlink(f"/proc/{pid}/fd/{fd}") in wanted for fd in descriptors):
                command = Path(f"/proc/{pid}/comm").read_text().strip()
                return f"pid {pid} ({command})"
        except OSError:
            continue  # gone, or not ours to look at
    return None


def taken(what: str, host: str, port: int, error: OSError, setting: str) -> str:
    """One line: the port cannot be served, what holds it, the setting to change."""
    who = holder(port)
    by = f" by {who}" if who else ""
    reason = error.strerror or str(error)
    return f"cannot serve {what} on {host}:{port}: {reason}{by}; stop it or set {setting}"
