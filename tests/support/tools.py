"""The servers the tests run for real, installed by `make test` into .tools/ (or found on
PATH), and free loopback ports for them."""

from __future__ import annotations

import shutil
import socket

from tests.support.models import MODEL_REPOSITORY

TOOLS = MODEL_REPOSITORY.parent / ".tools" / "bin"


def tool(name: str) -> str:
    installed = TOOLS / name
    if installed.exists():
        return str(installed)
    found = shutil.which(name)
    assert found, f"{name} is missing: 'make test' installs it into .tools/"
    return found


def free_port(kind: socket.SocketKind = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
