"""A private ``redis-server`` on loopback for the shared-state tests (see shared/design/testing-peers.md).

``redis-server --port PORT --save '' --appendonly no``: nothing is written to
disk, so a restarted server starts empty (as after a crash without
persistence, the hardest case for relaybal's reconciliation).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from peers import PeerProcess, PeerRegistry, free_port, require_program


class RedisServer(PeerProcess):
    """``redis-server`` on 127.0.0.1; :meth:`start` again after :meth:`stop` reuses the port."""

    def __init__(self, directory: Path, *, name: str = "redis", registry: PeerRegistry | None = None) -> None:
        super().__init__(name, directory, registry)
        self.program = require_program("redis-server")
        self.port = free_port()

    @property
    def address(self) -> str:
        """The ``shared_state.redis`` value for this server."""
        return f"tcp:127.0.0.1:{self.port}"

    def start(self, timeout: float = 10.0) -> None:
        self._spawn(
            [
                self.program, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--dir", str(self.directory),
            ]
        )  # fmt: skip
        self.wait_for_port(self.port, timeout=timeout)

    def cli(self, *args: str) -> str:
        """Run one command with ``redis-cli`` (package redis-tools, a dependency of redis-server)."""
        done = subprocess.run(
            [require_program("redis-cli"), "-p", str(self.port), "--raw", *args],
            capture_output=True, text=True, timeout=10, check=True,
        )  # fmt: skip
        return done.stdout.rstrip("\n")
