"""The least Python a TCP splice can run per connection: a reference point, not a product.

Raw ``select.epoll``, no Twisted, no banner check, no timeouts, no logging, no
PROXY header, round robin by ``itertools.cycle``; partial sends are kept and
resumed. ``bench/splice_floor.py`` runs it beside HAProxy and relaybal to show
how close to HAProxy any Python splice can get on this machine. With
``--procs N`` the listening socket is shared by N forked processes.

Usage: ``python bench/splice_floor_proxy.py [--procs N] LISTEN_PORT SERVER_PORT...``
"""

from __future__ import annotations

import argparse
import itertools
import os
import select
import socket


def serve(listener: socket.socket, servers: list[tuple[str, int]]) -> None:
    rr = itertools.cycle(servers)
    poller = select.epoll()
    lfd = listener.fileno()
    poller.register(lfd, select.EPOLLIN)
    socks: dict[int, socket.socket] = {}
    peer: dict[int, socket.socket] = {}
    pending: dict[int, bytes] = {}

    def close(fd: int) -> None:
        sock = socks.pop(fd, None)
        if sock is None:
            return
        other = peer.pop(fd)
        pending.pop(fd, None)
        poller.unregister(fd)
        sock.close()
        if other.fileno() in socks:
            close(other.fileno())

    while True:
        for fd, events in poller.poll():
            if fd == lfd:
                while True:
                    try:
                        client, _ = listener.accept()
                    except BlockingIOError:
                        break
                    client.setblocking(False)
                    server = socket.socket()
                    server.setblocking(False)
                    server.connect_ex(next(rr))
                    cfd, sfd = client.fileno(), server.fileno()
                    socks[cfd], socks[sfd], peer[cfd], peer[sfd] = client, server, server, client
                    poller.register(cfd, select.EPOLLIN)
                    poller.register(sfd, select.EPOLLIN)
                continue
            sock = socks.get(fd)
            if sock is None:
                continue
            if events & select.EPOLLOUT:
                data = pending.pop(fd)
                sent = sock.send(data)
                if sent < len(data):
                    pending[fd] = data[sent:]
                else:
                    poller.modify(fd, select.EPOLLIN)
                    poller.modify(peer[fd].fileno(), select.EPOLLIN)
                continue
            try:
                data = sock.recv(65536)
            except BlockingIOError:  # a stale event for a reused descriptor number
                continue
            except OSError:
                data = b""
            if not data:
                close(fd)
                continue
            other = peer[fd]
            try:
                sent = other.send(data)
            except BlockingIOError:
                sent = 0
            except OSError:
                close(fd)
                continue
            if sent < len(data):
                pending[other.fileno()] = data[sent:]
                poller.modify(other.fileno(), select.EPOLLOUT)
                poller.modify(fd, 0)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--procs", type=int, default=1)
    parser.add_argument("port", type=int)
    parser.add_argument("servers", type=int, nargs="+")
    args = parser.parse_args()
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", args.port))
    listener.listen(4096)
    listener.setblocking(False)
    for _ in range(args.procs - 1):
        if os.fork() == 0:
            break
    serve(listener, [("127.0.0.1", port) for port in args.servers])


if __name__ == "__main__":
    main()
