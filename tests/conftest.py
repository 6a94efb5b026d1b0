"""Fixtures that start real peer programs (see ``tests/peers.py``) and stop them.

Every factory puts its process in the test's own :class:`~peers.PeerRegistry`;
the registry is stopped at teardown even when the test failed.  When a test
fails, the tail of each peer's log is added to the failure report and the
test's peer directory is kept (its path is in the report); otherwise the
directory is removed.  ``RELAYBAL_KEEP_PEER_DIRS=1`` keeps it always.

Peers get a directory from :func:`~peers.make_peer_dir` rather than pytest's
``tmp_path``: ``tmp_path`` lives under a mode-0700 directory that smtp-sink
(running as ``nobody``) and Postfix's daemons (running as ``postfix``) cannot
enter.
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from pathlib import Path

import pytest
from peers import (
    HAProxy,
    PeerRegistry,
    PrivatePostfix,
    RelaybalDaemon,
    SmtpSink,
    default_registry,
    make_peer_dir,
)

_REGISTRY_KEY = pytest.StashKey[PeerRegistry]()
_PEER_DIR_KEY = pytest.StashKey[Path]()
_FAILED_KEY = pytest.StashKey[bool]()

# Enough of a log to see why a peer misbehaved without drowning the report.
_LOG_TAIL_CHARS = 4000


def _tail(text: str) -> str:
    if len(text) <= _LOG_TAIL_CHARS:
        return text
    return "[…]" + text[-_LOG_TAIL_CHARS:]


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.failed:
        item.stash[_FAILED_KEY] = True
        registry = item.stash.get(_REGISTRY_KEY, None)
        if registry is not None and report.when in ("setup", "call"):
            for peer in registry.running():
                report.sections.append(
                    (f"peer {peer.name} (log {peer.log_path})", _tail(peer.log()))
                )
        peer_dir = item.stash.get(_PEER_DIR_KEY, None)
        if peer_dir is not None:
            report.sections.append(("peer directory (kept)", str(peer_dir)))
    return report


@pytest.fixture(scope="session", autouse=True)
def _kill_stray_peers() -> Iterator[None]:
    # Peers started without the fixtures join the default registry.
    yield
    default_registry.kill_all()


@pytest.fixture
def peer_registry(request: pytest.FixtureRequest) -> Iterator[PeerRegistry]:
    """The test's peer processes; all are stopped at teardown."""
    registry = PeerRegistry()
    request.node.stash[_REGISTRY_KEY] = registry
    yield registry
    registry.stop_all()


@pytest.fixture
def peer_dir(request: pytest.FixtureRequest) -> Iterator[Path]:
    """A fresh directory for the test's peers that unprivileged peers can enter."""
    label = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name)[:48]
    path = make_peer_dir(prefix=f"relaybal-{label}-")
    request.node.stash[_PEER_DIR_KEY] = path
    yield path
    failed = request.node.stash.get(_FAILED_KEY, False)
    if not failed and os.environ.get("RELAYBAL_KEEP_PEER_DIRS") != "1":
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def sink_factory(peer_dir: Path, peer_registry: PeerRegistry) -> Callable[..., SmtpSink]:
    """``make(*, dump=True, options=(), port=None) -> SmtpSink``, already listening."""
    numbers = itertools.count(1)

    def make(
        *, dump: bool = True, options: Sequence[str] = (), port: int | None = None
    ) -> SmtpSink:
        name = f"smtp-sink-{next(numbers)}"
        return SmtpSink(
            peer_dir / name,
            port=port,
            dump=dump,
            options=options,
            name=name,
            registry=peer_registry,
        )

    return make


@pytest.fixture
def postfix_factory(peer_dir: Path, peer_registry: PeerRegistry) -> Callable[..., PrivatePostfix]:
    """``make(settings=None, *, port=None, start=True) -> PrivatePostfix``.

    Skips (fails under ``RELAYBAL_REQUIRE_PEERS=1``) unless run as root.
    """
    numbers = itertools.count(1)

    def make(
        settings: Mapping[str, str] | None = None, *, port: int | None = None, start: bool = True
    ) -> PrivatePostfix:
        name = f"postfix-{next(numbers)}"
        postfix = PrivatePostfix(
            peer_dir / name, settings, port=port, name=name, registry=peer_registry
        )
        if start:
            postfix.start()
        return postfix

    return make


@pytest.fixture
def haproxy_factory(peer_dir: Path, peer_registry: PeerRegistry) -> Callable[..., HAProxy]:
    """``make(config, *, wait_ports=(), start=True) -> HAProxy``."""
    numbers = itertools.count(1)

    def make(config: str, *, wait_ports: Sequence[int] = (), start: bool = True) -> HAProxy:
        name = f"haproxy-{next(numbers)}"
        haproxy = HAProxy(peer_dir / name, config, name=name, registry=peer_registry)
        if start:
            haproxy.start(wait_ports)
        return haproxy

    return make


@pytest.fixture
def relaybal_factory(
    peer_dir: Path, peer_registry: PeerRegistry
) -> Callable[..., RelaybalDaemon]:
    """``make(config, *, wait_ports=(), start=True, extra_args=(), env=None) -> RelaybalDaemon``."""
    numbers = itertools.count(1)

    def make(
        config: str,
        *,
        wait_ports: Sequence[int] = (),
        start: bool = True,
        extra_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
    ) -> RelaybalDaemon:
        name = f"relaybal-{next(numbers)}"
        daemon = RelaybalDaemon(
            peer_dir / name,
            config,
            extra_args=extra_args,
            env=env,
            name=name,
            registry=peer_registry,
        )
        if start:
            daemon.start(wait_ports)
        return daemon

    return make
