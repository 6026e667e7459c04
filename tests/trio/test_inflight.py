"""InflightProbe on real loopback sockets: the kernel's count of unread bytes, exactly."""

from __future__ import annotations

import socket
import struct

import trio

from lsproxy.serve.inflight import InflightProbe

ALLOWANCE = 1000


async def pair() -> tuple[trio.SocketStream, trio.SocketStream]:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    client = await trio.open_tcp_stream("127.0.0.1", port)
    server = await listeners[0].accept()
    await listeners[0].aclose()
    return server, client


async def settled(probe: InflightProbe, expected: int) -> int | None:
    """Loopback delivery is immediate, acknowledgements nearly so: wait for the ACKs."""
    with trio.move_on_after(2):
        while probe.unprocessed_bound() != expected:
            await trio.sleep(0.01)
    return probe.unprocessed_bound()


async def test_a_local_peer_s_unread_bytes_are_counted_exactly() -> None:
    server, client = await pair()
    probe = InflightProbe.open(server, ALLOWANCE)
    assert probe is not None and probe.source == "peer socket"
    assert probe.unprocessed_bound() == ALLOWANCE  # nothing sent yet
    await server.send_all(b"x" * 50_000)  # unread by the client: in its receive queue
    assert await settled(probe, ALLOWANCE + 50_000) == ALLOWANCE + 50_000
    got = 0
    while got < 20_000:
        got += len(await client.receive_some(20_000 - got))
    assert await settled(probe, ALLOWANCE + 30_000) == ALLOWANCE + 30_000
    await server.aclose()
    await client.aclose()


async def test_more_than_the_peer_s_buffer_holds_is_counted_in_our_send_queue() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.socket()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16_384)  # a small receiver
    client.connect(listener.getsockname())
    server, _ = listener.accept()
    listener.close()
    server.setblocking(False)
    sent = 0
    try:
        while True:  # until both the peer's receive buffer and our send buffer are full
            sent += server.send(b"y" * 65_536)
    except BlockingIOError:
        pass
    probe = InflightProbe(trio.socket.from_stdlib_socket(server), ALLOWANCE)
    assert probe.source == "peer socket"
    assert sent > 100_000  # more than the receiver can hold
    assert await settled(probe, ALLOWANCE + sent) == ALLOWANCE + sent  # queue + peer queue: all of it
    server.close()
    client.close()


async def test_no_sample_once_the_peer_reset_the_connection() -> None:
    """A reset purges our send queue: those bytes were lost, not read. No sample then."""
    server, client = await pair()
    probe = InflightProbe.open(server, ALLOWANCE)
    assert probe is not None
    await server.send_all(b"z" * 10_000)
    client.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    await client.aclose()  # RST, as a SIGKILLed consumer with unread data
    with trio.fail_after(2):
        while probe.unprocessed_bound() is not None:
            await trio.sleep(0.01)
    await server.aclose()
