"""How many bytes handed to a consumer's socket can its application still not have processed?

The rewind rule (``hub/cursors.py``) needs an upper bound, sampled now and then;
the tighter it is, the less a restarted consumer is sent again. From the kernel:

* our send queue: ``SIOCOUTQ``, bytes not yet acknowledged by the peer
  (unsent + unacked), read first;
* the peer's receive queue: when the consumer runs on this host (loopback, or
  one of our own addresses), its socket is ours to inspect through sock_diag
  (``NETLINK_SOCK_DIAG``, an exact 4-tuple lookup, what ``ss`` uses): the
  ``rqueue`` of an established TCP socket is ``rcv_nxt - copied_seq``, the bytes
  received and not yet read. A byte leaves our send queue only after it reached
  the peer's receive queue, so send queue (read first) + receive queue (read
  second) covers every unread byte. For a remote consumer the kernel cannot
  tell: its receive buffer is taken as this host's largest possible one
  (``tcp_rmem`` max or twice ``rmem_max``), which assumes the peer's is no larger;
* plus ``client_buffer_bytes``, the client's own read buffers.

A sample is only taken while our socket is ESTABLISHED (checked after the
queue is read): a reset purges the send queue, and the purged bytes were lost,
not delivered. A local peer whose socket is gone (it was reset) gives no
sample at all. Everything here costs a few microseconds (measured: ~2 us for
the netlink round trip), and never blocks: the netlink socket is non-blocking
and the kernel answers within the request.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import itertools
import socket
import struct
import termios
from functools import cache

import trio

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST = 1
NLMSG_ERROR = 2
TCP_ESTABLISHED = 1
SIOCOUTQ = termios.TIOCOUTQ  # the same ioctl number on Linux
_NO_COOKIE = 0xFFFFFFFF
_ALL_STATES = 0xFFFFFFFF
_HEADER = struct.Struct("=IHHII")  # nlmsghdr: len, type, flags, seq, pid
_REQUEST = struct.Struct("=BBBBI")  # inet_diag_req_v2 before its sockid
_MSG_QUEUES = struct.Struct("=II")  # inet_diag_msg: rqueue, wqueue (after expires)
_MSG_QUEUES_AT = _HEADER.size + 4 + 48 + 4  # family..retrans, sockid, expires


class InflightProbe:
    """Samples one consumer socket; ``unprocessed_bound`` is None when it cannot tell."""

    def __init__(self, sock: trio.socket.SocketType, client_buffer_bytes: int) -> None:
        self._sock = sock
        self._client = client_buffer_bytes
        self._peer_query: bytes | None = None  # sock_diag request for the peer's socket, if local
        with contextlib.suppress(OSError, ValueError):
            for query in _peer_requests(sock):
                if _diag_queues(query) is not None:
                    self._peer_query = query
                    break
        self.source = "peer socket" if self._peer_query is not None else "send queue"

    @classmethod
    def open(cls, stream: trio.abc.Stream, client_buffer_bytes: int) -> InflightProbe | None:
        """A probe for a TCP consumer; None when the kernel cannot be asked (not TCP, not Linux)."""
        if not isinstance(stream, trio.SocketStream):
            return None
        sock = stream.socket
        if sock.family not in (socket.AF_INET, socket.AF_INET6) or _send_queue(sock) is None:
            return None
        return cls(sock, client_buffer_bytes)

    def unprocessed_bound(self) -> int | None:
        """Bytes handed to the socket so far that the consumer may not have processed."""
        sock = self._sock
        queued = _send_queue(sock)
        if queued is None or not _established(sock):
            return None
        if self._peer_query is None:
            return queued + kernel_max_receive_buffer() + self._client
        peer = _diag_queues(self._peer_query)
        if peer is None:
            return None
        return queued + peer[0] + self._client


def replay_window(stream: trio.abc.Stream, client_buffer_bytes: int) -> int:
    """The fixed bound when the kernel cannot be sampled: our largest possible send
    buffer + the largest receive buffer a peer on this host can have + the client's own."""
    send_buffer = _kernel_max_buffer("tcp_wmem", "wmem_max", 4 * 1024 * 1024)
    if isinstance(stream, trio.SocketStream):
        send_buffer = max(send_buffer, stream.socket.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF))
    return send_buffer + kernel_max_receive_buffer() + client_buffer_bytes


def kernel_max_receive_buffer() -> int:
    """The most a local consumer's kernel can buffer for it (autotuned or set)."""
    return _kernel_max_buffer("tcp_rmem", "rmem_max", 6 * 1024 * 1024)


@cache
def _kernel_max_buffer(tcp_key: str, core_key: str, floor: int) -> int:
    best = floor
    try:
        with open(f"/proc/sys/net/ipv4/{tcp_key}") as f:
            best = max(best, int(f.read().split()[2]))
        with open(f"/proc/sys/net/core/{core_key}") as f:
            best = max(best, 2 * int(f.read()))  # SO_SNDBUF/SO_RCVBUF are doubled by the kernel
    except (OSError, ValueError, IndexError):
        pass
    return best


# -- the kernel interfaces ---------------------------------------------------


def _send_queue(sock: trio.socket.SocketType) -> int | None:
    try:
        raw = fcntl.ioctl(sock.fileno(), SIOCOUTQ, b"\0\0\0\0")
    except OSError:
        return None
    return int(struct.unpack("=i", raw)[0])


def _established(sock: trio.socket.SocketType) -> bool:
    try:
        state = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)
    except OSError:
        return False
    return len(state) == 1 and state[0] == TCP_ESTABLISHED


def _peer_requests(sock: trio.socket.SocketType) -> list[bytes]:
    """sock_diag requests for the socket at the other end of ``sock``, if it is local:
    an IPv4-mapped address may belong to an IPv4 or an IPv6 socket, so both are tried."""
    ours, theirs = sock.getsockname(), sock.getpeername()
    requests = []
    for family, peer_ip, our_ip in _address_forms(theirs[0], ours[0]):
        # inet_diag_sockid as the peer sees it: its own port and address are "source".
        sockid = (
            struct.pack("!HH", theirs[1], ours[1])
            + peer_ip.packed.ljust(16, b"\0")
            + our_ip.packed.ljust(16, b"\0")
            + struct.pack("=III", 0, _NO_COOKIE, _NO_COOKIE)
        )
        requests.append(_REQUEST.pack(family, socket.IPPROTO_TCP, 0, 0, _ALL_STATES) + sockid)
    return requests


IP = ipaddress.IPv4Address | ipaddress.IPv6Address


def _address_forms(peer: str, ours: str) -> list[tuple[int, IP, IP]]:
    a, b = (ipaddress.ip_address(h.split("%", 1)[0]) for h in (peer, ours))
    if isinstance(a, ipaddress.IPv4Address) and isinstance(b, ipaddress.IPv4Address):
        return [(socket.AF_INET, a, b)]
    forms: list[tuple[int, IP, IP]] = []
    if isinstance(a, ipaddress.IPv6Address) and isinstance(b, ipaddress.IPv6Address):
        if a.ipv4_mapped is not None and b.ipv4_mapped is not None:
            forms.append((socket.AF_INET, a.ipv4_mapped, b.ipv4_mapped))
        forms.append((socket.AF_INET6, a, b))
    return forms


_netlink: socket.socket | None = None
_netlink_broken = False
_sequence = itertools.count(1)


def _diag_socket() -> socket.socket | None:
    global _netlink, _netlink_broken
    if _netlink is None and not _netlink_broken:
        try:
            _netlink = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_SOCK_DIAG)
            _netlink.setblocking(False)
        except (OSError, AttributeError):
            _netlink_broken = True  # no sock_diag here (not Linux, or a sandbox): remote bounds
    return _netlink


def _diag_queues(body: bytes) -> tuple[int, int] | None:
    """(rqueue, wqueue) of the socket ``body`` names, or None when it does not exist."""
    nl = _diag_socket()
    if nl is None:
        return None
    seq = next(_sequence) & 0xFFFFFFFF
    try:
        nl.send(_HEADER.pack(_HEADER.size + len(body), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST, seq, 0) + body)
        while True:  # the answer is queued before send returns; skip any stale one
            reply = nl.recv(8192)
            if len(reply) < _HEADER.size:
                return None
            _length, kind, _flags, got, _pid = _HEADER.unpack_from(reply)
            if got != seq:
                continue
            if kind == NLMSG_ERROR or len(reply) < _MSG_QUEUES_AT + _MSG_QUEUES.size:
                return None
            rqueue, wqueue = _MSG_QUEUES.unpack_from(reply, _MSG_QUEUES_AT)
            return int(rqueue), int(wqueue)
    except OSError:  # EAGAIN (no answer), ENOBUFS ...
        return None
