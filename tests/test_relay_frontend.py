"""Building relay frontends: TLS and users files, the daemon's wiring, the memory sink, queue IDs."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.ssl import CertificateOptions
from twisted.internet.testing import MemoryReactorClock

from relaybal.balance.backend import Backend
from relaybal.config import TLSServerConfig, parse_config
from relaybal.relay.frontend import RelayFrontend, RelaySetupError, build_relay_frontend, load_tls
from relaybal.relay.interfaces import Envelope, SessionState, SinkError
from relaybal.relay.memory import MemoryMessageSink
from relaybal.relay.policy import LoopbackRelayPolicy, is_local_client
from relaybal.relay.queueid import QueueIdGenerator
from relaybal.relay.testing import relay_config_dict, write_self_signed
from relaybal.service import RelaybalService
from relaybal.smtp import auth
from relaybal.smtp.wire import Mailbox, Reply


def frontend_config(**keys: Any) -> Any:
    config = parse_config(relay_config_dict(**keys))
    return config, config.frontends["relay"]


def backend_of(config: Any, reactor: Any) -> Backend:
    return Backend(config.backends["gw"], reactor, random.Random(1))


def test_tls_loading(tmp_path: Path) -> None:
    cert, key = write_self_signed(str(tmp_path))
    options = load_tls(TLSServerConfig(certificate=cert, key=key))
    assert isinstance(options, CertificateOptions)
    chain = tmp_path / "chain.pem"
    chain.write_bytes(Path(cert).read_bytes() * 2)  # a leaf and an (odd) intermediate
    assert load_tls(TLSServerConfig(certificate=str(chain), key=key, min_version="TLSv1.3"))


def test_tls_errors_name_the_key(tmp_path: Path) -> None:
    cert, key = write_self_signed(str(tmp_path))
    (tmp_path / "other").mkdir()
    other_cert, _ = write_self_signed(str(tmp_path / "other"), "other.test")
    reactor = MemoryReactorClock()
    for tls, message in [
        ({"certificate": str(tmp_path / "nope.pem"), "key": key}, "frontend.relay.tls: cannot read"),
        ({"certificate": key, "key": key}, "frontend.relay.tls: " + key + ": no PEM certificate"),
        ({"certificate": cert, "key": cert}, "frontend.relay.tls: cannot load the certificate or key"),
        ({"certificate": other_cert, "key": key}, "frontend.relay.tls: the certificate and key do not fit"),
    ]:
        config, fc = frontend_config(tls=tls)
        with pytest.raises(RelaySetupError, match=message):
            build_relay_frontend(fc, backend_of(config, reactor), reactor)


def test_users_file_errors_name_the_key(tmp_path: Path) -> None:
    config, fc = frontend_config(auth={"users": str(tmp_path / "missing")}, allow_plaintext_auth=True)
    reactor = MemoryReactorClock()
    with pytest.raises(RelaySetupError, match=r"frontend\.relay\.auth\.users: .*cannot read"):
        build_relay_frontend(fc, backend_of(config, reactor), reactor)


def test_built_frontend_has_tls_auth_and_a_thread_pool(tmp_path: Path) -> None:
    cert, key = write_self_signed(str(tmp_path))
    users = tmp_path / "users"
    users.write_text(f"alice:{auth.hash_password('pw', ln=4)}\n")
    config, fc = frontend_config(
        tls={"certificate": cert, "key": key}, auth={"users": str(users), "mechanisms": ["PLAIN"]}
    )
    reactor = MemoryReactorClock()
    frontend = build_relay_frontend(fc, backend_of(config, reactor), reactor)
    assert frontend.tls_options is not None and frontend.portal is not None
    assert frontend.settings.auth_mechanisms == ("PLAIN",) and frontend.settings.tls_available
    assert isinstance(frontend.sink, MemoryMessageSink) and frontend.sink.keep == 0
    assert isinstance(frontend.policy, LoopbackRelayPolicy)
    pool = frontend.auth_pool
    assert pool is not None and not pool.started
    frontend.doStart()
    assert pool.started
    frontend.doStop()
    assert not pool.started


def test_the_daemon_builds_relay_frontends(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = parse_config(relay_config_dict())
    service = RelaybalService(config, MemoryReactorClock())
    assert isinstance(service.frontends["relay"], RelayFrontend)
    bad = parse_config(relay_config_dict(tls={"certificate": str(tmp_path / "x"), "key": "y"}))
    with pytest.raises(SystemExit) as info:
        RelaybalService(bad, MemoryReactorClock())
    assert info.value.code == 1
    assert "relaybal: frontend.relay.tls: cannot read" in capsys.readouterr().err


# ----------------------------------------------------------------------------- memory sink, queue IDs, policy


def envelope() -> Envelope:
    state = SessionState(frontend="relay", helo="x", sender=Mailbox("a", "b.test"))
    state.recipients.append(Mailbox("c", "d.test"))
    return Envelope.of(state, 0.0)


def test_memory_sink_keeps_the_last_messages() -> None:
    sink = MemoryMessageSink(lambda: 1.0, keep=2)
    ids = []
    for n in range(3):
        writer = sink.begin(envelope())
        writer.write(b"body %d\r\n" % n)
        done: list[str] = []
        writer.commit().addCallback(done.append)
        ids.append(done[0])
    assert [m.data for m in sink.messages] == [b"body 1\r\n", b"body 2\r\n"]
    assert sink.committed == 3 and len(set(ids)) == 3 and ids == sorted(ids)
    writer = sink.begin(envelope())
    writer.abort()
    assert sink.aborted == 1


def test_memory_sink_keeping_nothing_counts_bytes() -> None:
    sink = MemoryMessageSink(lambda: 1.0, keep=0)
    writer = sink.begin(envelope())
    writer.write(b"12345")
    writer.commit()
    assert sink.bytes == 5 and not sink.messages and writer.chunks == []


def test_memory_sink_failures() -> None:
    sink = MemoryMessageSink(lambda: 1.0)
    sink.fail_begin = SinkError()
    with pytest.raises(SinkError) as info:
        sink.begin(envelope())
    assert info.value.reply == Reply(451, "4.3.0", "Temporary failure, try again later")


def test_queue_ids_are_unique_and_ordered_even_when_time_stands_still() -> None:
    now = [1_700_000_000.0]
    ids = QueueIdGenerator(lambda: now[0])
    made = [ids.next() for _ in range(100)]
    now[0] -= 5  # the clock steps back
    made += [ids.next() for _ in range(10)]
    assert len(set(made)) == 110
    assert made == sorted(made) and len({len(i) for i in made}) == 1


@pytest.mark.parametrize(
    ("host", "local"),
    [("127.0.0.1", True), ("127.1.2.3", True), ("::1", True), (None, True), ("192.0.2.1", False),
     ("::ffff:10.0.0.1", False), ("not-an-ip", False)],
)  # fmt: skip
def test_loopback_detection(host: str | None, local: bool) -> None:
    assert is_local_client(host) is local
