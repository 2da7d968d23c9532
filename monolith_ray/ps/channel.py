"""Channels: a trainer's per-step calls to a parameter-server shard over one TCP connection.

Why: a Ray actor call costs about 0.75 ms of the caller's CPU and 0.8 ms of the callee's beyond
the work it asks for (task spec, gRPC, reference counting), whatever it carries. A trainer
makes one call per shard per step, and on a small node those costs take the cores the jitted
step needs (``benchmarks/train_throughput.py`` measures both transports). A channel carries the
same calls (same methods, same arguments, same order) over a socket the shard opens on request,
for about 0.1 ms a call on either side.

Ray stays the control plane: it places, restarts and names the shards, and the snapshots, syncs
and maintenance calls stay Ray calls. A trainer asks a shard actor for its channel with an
ordinary actor call (``ShardServer.open_channel`` -> host, port, token) and asks again after a
connection breaks.

Wire format: ``monolith_ray.ps.wire``, no pickle: a frame is a fixed header (kind, method id,
sequence number, counts and lengths), a msgpack body and raw array buffers, received into fresh
writable memory. A connection opens with the token and the client's session id (16 random
bytes each); a request carries its method's id, its arguments, its sequence number in the
session and the oldest call of the session still unanswered when it was made (``acked``); a
reply its result, or its error as a listed exception type and a message.

Security: a shard serves only peers that hold its token (16 random bytes handed out over
Ray): a connection's first 16 bytes must be the token, read raw and compared before anything
else is read, or the connection is closed; at most ``MAX_HANDSHAKES`` connections wait to
show it at once, each for at most ``TOKEN_TIMEOUT_S`` in all (a peer trickling a byte at a
time is closed on time too). A frame's header is checked before anything is allocated for it
(at most ``wire.MAX_BUFFERS`` buffers and ``wire.MAX_MESSAGE_BYTES`` in all); a malformed
header closes the connection, a malformed body is answered with the error. Decoding never runs
code, so a peer that holds the token can call the table methods and no more. The accept loop
outlives transient errors (out of file descriptors: it pauses and goes on) and ends only when
the server is closed. The server listens on the node's address (Ray's node IP) on a port the
OS picks, and only :data:`CHANNEL_METHODS` can be called: per-step table methods, never
snapshots or restores, which stay Ray calls. The token travels over Ray and the frames in the
clear, as Ray's own traffic does; on a cluster the nodes must reach each other on any TCP
port, as Ray's own workers already do.

Why sockets and not pyzmq (measured): a complete pyzmq transport (a ROUTER per shard with
CURVE keys and a ZAP handler admitting only client keys registered through ``open_channel``,
a DEALER per trainer and shard, sessions keyed by the authenticated key, ``ZMQ_MAXMSGSIZE``,
high-water marks, the same ``ps.wire`` parts as multipart frames) was built and measured
against this transport. ``python -m benchmarks.train_throughput --repeats 3``, the two
alternating on the same checkout (only ``ps/channel.py`` and ``ps/shard.py`` differing), load
average 2-6:

======================  =====================  =====================
figure                  sockets (2 runs)       pyzmq + CURVE (3 runs)
======================  =====================  =====================
ratio                   0.819, 0.891           0.848, 0.836, 0.857
ratio_default_batch     0.734, 0.795           0.654, 0.679, 0.638
======================  =====================  =====================

At the shipped batch size (256, eight times the calls per example of 2048) pyzmq cost 14 % of
the ratio (medians 0.654 against 0.765; ``benchmarks.shard_calls``: 0.54-0.59 ms a round trip
against 0.29-0.43 ms, each message also crossing libzmq's I/O thread on both ends), more than
the 10 % allowed, so the transport stays these sockets with the holes closed: no pickle (a
token holder can call the per-step table methods and nothing else), the token checked before
anything is read, a whole-handshake deadline, bounded frames and handshakes, an accept loop
that outlives errors. Left open: frames travel unencrypted and the token in the clear on the
node network, as Ray's own traffic does by default; a peer on that network that reads a token
can call the table methods (the pyzmq version, in the history of this file, closes that at
the cost above).

Ordering and failures: a shard serves a connection's calls one at a time in order, as Ray runs
one caller's actor calls, and replies in order; the shard's lock serializes them with its Ray
calls and other trainers' channels. A call not answered within ``timeout_s`` raises
:class:`ShardUnavailableError`. When a connection breaks (the shard's process died), the client
asks the actor for its channel again: Ray holds that call until a restarted actor is up (which
restores its snapshot first, see ``monolith_ray.train.job.start_servers``), and the calls not
yet answered are sent again in order, as Ray retries a restarted actor's calls
(``max_task_retries``). A shard dead for good raises :class:`ShardUnavailableError` naming it.
A connection that breaks while the shard lives on also resends, but runs nothing twice: the
server keeps, per session, the number of the last call it ran and its replies not yet
acknowledged, and answers a call it already ran with the reply it sent (a push is applied
once). A restarted shard has lost that state with its table and runs what is resent on the
table it restored. A session with no open connection is forgotten after ``SESSION_IDLE_S``, or
sooner, least recently used first, once more than ``MAX_SESSIONS`` are kept; one with an open
connection is kept. A call not answered in time fails every call in flight on that connection
(the next call opens a new one); such calls may still run on the shard, which reads what
reached it. A connection that breaks ``MAX_BREAKS`` times in a row without an answer fails its
calls too, rather than reconnecting for ever. A request the shard cannot decode is answered
with the error, like a method's. Flow control: a client keeps at most ``MAX_IN_FLIGHT_BYTES``
of requests (or one larger request) and ``MAX_IN_FLIGHT_CALLS`` calls unanswered per
connection, reading replies before it sends more, so that neither end blocks writing while the
other does as long as their replies fit the two ends' socket buffers (a trainer keeps one call
in flight per shard).
"""

from __future__ import annotations

import hmac
import secrets
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from monolith_ray.ps import wire
from monolith_ray.ps.calls import ShardUnavailableError, dead_or_unreachable, not_answered

# What a channel may call on a shard: its per-step and table methods (maintenance that names
# files, snapshot and restore, stays on Ray calls).
CHANNEL_METHODS = frozenset(wire.METHODS)
TOKEN_BYTES = 16
TOKEN_TIMEOUT_S = 10.0  # a connection that has not presented its token by then is closed
ACCEPT_PAUSE_S = 0.1  # after a failed accept (e.g. out of file descriptors), before the next
MAX_IN_FLIGHT_BYTES = 64 * 1024  # requests; their replies (pulled rows) may be ~8x larger
MAX_IN_FLIGHT_CALLS = 64
MAX_BREAKS = 3  # reconnects without a reply before the calls in flight fail
MAX_HANDSHAKES = 32  # connections at once that have not yet shown the token; more are closed
SESSION_BYTES = 16
MAX_SESSIONS = 64  # sessions a server keeps, beyond those with an open connection
SESSION_IDLE_S = 120.0  # a session without a connection for this long is forgotten

Address = tuple[str, int, bytes]  # host, port, token


class Frame(NamedTuple):
    """One message read whole from a connection, its body not yet decoded."""

    head: wire.Head
    body: bytearray
    buffers: list[bytearray]


def encode(kind: int, method: int, seq: int, acked: int, value: Any) -> bytes:
    """One frame: the message of ``value`` (see ``monolith_ray.ps.wire``) as one byte string.
    WireError if ``value`` holds anything the wire format cannot carry."""
    return b"".join(wire.encode(kind, method, seq, acked, value))


class FrameError(ConnectionError):
    """A frame whose header is malformed or declares more buffers or bytes than a channel
    takes; its connection is closed, as its stream can no longer be followed."""


def read_frame(sock: socket.socket) -> Frame:
    """Read one whole frame from ``sock``. FrameError, before anything is allocated for it,
    if its header is malformed or declares more than ``wire.MAX_BUFFERS`` buffers,
    ``wire.MAX_BODY_BYTES`` of body or ``wire.MAX_MESSAGE_BYTES`` in all; ConnectionError if
    the peer closed."""
    fixed = _read(sock, wire.HEAD.size)
    try:
        head = wire.parse_head(fixed)
        part = fixed + _read(sock, 8 * head.n_buffers)
        sizes = wire.parse_sizes(head, part)
    except wire.WireError as err:
        raise FrameError(str(err)) from None
    body = _read(sock, head.body_bytes)
    return Frame(head, body, [_read(sock, size) for size in sizes])


def _read(sock: socket.socket, n: int, deadline: float | None = None) -> bytearray:
    """Exactly ``n`` bytes from ``sock`` (fresh, writable); with ``deadline`` (a
    ``time.monotonic()`` instant), TimeoutError once it passes, however the bytes trickle."""
    buf = bytearray(n)
    view, got = memoryview(buf), 0
    while got < n:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{got} of {n} bytes by the deadline")
            sock.settimeout(left)
        k = sock.recv_into(view[got:])
        if k == 0:
            raise ConnectionError("the channel's peer closed the connection")
        got += k
    return buf


@dataclass
class _Session:
    """What a server remembers of one client session: the last call it ran and the encoded
    replies the client may not have read yet, by sequence number. ``lock`` is held while a
    call runs, so a call resent on a new connection waits for the old connection's run."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    last: int = -1
    replies: dict[int, bytes] = field(default_factory=dict)
    connections: int = 0  # open connections using it; never forgotten while > 0
    idle_since: float = 0.0  # time.monotonic() when its last connection closed


class ChannelServer:
    """Serves ``target``'s :data:`CHANNEL_METHODS` to connections that present the token,
    each connection on its own thread. ``target`` serializes its own methods (a
    ``ShardServer`` holds a lock)."""

    def __init__(self, target: Any, host: str = "127.0.0.1") -> None:
        self.target = target
        self.token = secrets.token_bytes(TOKEN_BYTES)
        self._sock = socket.create_server((host, 0), backlog=64)
        self.host = host
        self.port = self._sock.getsockname()[1]
        self._handshakes = threading.BoundedSemaphore(MAX_HANDSHAKES)
        self._closed = threading.Event()
        self.accept_errors = 0  # accepts that failed while the server was open
        self._sessions: dict[bytes, _Session] = {}
        self._sessions_lock = threading.Lock()
        threading.Thread(target=self._accept, name="channel-accept", daemon=True).start()

    @property
    def address(self) -> Address:
        return self.host, self.port, self.token

    def close(self) -> None:
        """Stop accepting connections (open ones end when their peer closes)."""
        self._closed.set()
        self._sock.close()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                if self._closed.is_set():
                    return
                # E.g. out of file descriptors: the listener is fine, so pause and go on,
                # or every later trainer would be refused while open_channel hands it out.
                self.accept_errors += 1
                self._closed.wait(ACCEPT_PAUSE_S)
                continue
            if not self._handshakes.acquire(blocking=False):
                conn.close()  # too many strangers at once: refuse this one only
                continue
            try:
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)  # a vanished peer
                threading.Thread(target=self._serve, args=(conn,), name="channel",
                                 daemon=True).start()
            except (OSError, RuntimeError):  # e.g. no thread to spare: refuse this one only
                self._handshakes.release()
                conn.close()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            try:
                try:
                    hello = bytes(_read(conn, TOKEN_BYTES + SESSION_BYTES,
                                        time.monotonic() + TOKEN_TIMEOUT_S))
                finally:
                    self._handshakes.release()
                if not hmac.compare_digest(hello[:TOKEN_BYTES], self.token):
                    return
                session = self._open_session(hello[TOKEN_BYTES:])
                try:
                    conn.settimeout(None)
                    while True:
                        frame = read_frame(conn)  # whole, so the stream stays in step below
                        conn.sendall(self._answer(frame, session))
                finally:
                    self._close_session(session)
            except (ConnectionError, OSError):
                return

    def _open_session(self, key: bytes) -> _Session:
        """The session ``key`` names (made if new), counted as used by one more connection;
        sessions without a connection are forgotten first if idle too long or too many."""
        with self._sessions_lock:
            now = time.monotonic()
            idle = sorted((s.idle_since, k) for k, s in self._sessions.items()
                          if s.connections == 0 and k != key)
            excess = len(self._sessions) + (key not in self._sessions) - MAX_SESSIONS
            for n, (since, k) in enumerate(idle):
                if n < excess or now - since > SESSION_IDLE_S:
                    del self._sessions[k]
            session = self._sessions.setdefault(key, _Session())
            session.connections += 1
            return session

    def _close_session(self, session: _Session) -> None:
        with self._sessions_lock:
            session.connections -= 1
            if session.connections == 0:
                session.idle_since = time.monotonic()

    def _answer(self, frame: Frame, session: _Session) -> bytes:
        """The reply frame to one request frame: its result, or the error that decoding the
        request, calling the method or encoding the result raised; a call the session already
        ran gets the reply it was sent."""
        head = frame.head
        seq, method = head.seq, wire.METHODS[head.method]
        try:
            if head.kind != wire.REQUEST:
                raise wire.WireError(f"a message of kind {head.kind} where a request goes")
            args = wire.decode(frame.body, frame.buffers)
            if not isinstance(args, tuple):
                raise wire.WireError(f"a request's arguments must be a tuple, got "
                                     f"{type(args).__name__}")
        except wire.WireError as err:  # the caller gets it; nothing ran
            return _reply(head, (False, err), "a request that could not be decoded")
        with session.lock:
            for done in [k for k in session.replies if k < head.acked]:
                del session.replies[done]  # the client has read these
            if seq <= session.last:
                return session.replies.get(seq) or _reply(head, (False, RuntimeError(
                    f"call {seq} is behind its session's latest call {session.last}: "
                    f"answered already, or overtaken and not run")), method)
            try:
                reply = (True, getattr(self.target, method)(*args))
            except Exception as err:  # noqa: BLE001 - the caller gets it
                reply = (False, err)
            encoded = _reply(head, reply, method)
            session.last, session.replies[seq] = seq, encoded
            return encoded


def _reply(request: wire.Head, reply: tuple[bool, Any], what: str) -> bytes:
    """The frame of ``reply`` (ok and result, or False and an exception) to ``request``; if
    the result cannot be encoded, the frame of a RuntimeError describing it, naming ``what``
    was called."""
    ok, value = reply
    head = (wire.RESULT if ok else wire.ERROR, request.method, request.seq, request.acked)
    try:
        return encode(*head, value if ok else wire.error_value(value))
    except wire.WireError as err:
        return encode(wire.ERROR, *head[1:], wire.error_value(
            RuntimeError(f"{what}: its result could not be sent ({err})")))


def actor_address(shard: Any, timeout_s: float | None) -> Address:
    """``shard.open_channel()``: over Ray for an actor handle (waits out a restart), directly
    for an object in this process."""
    opener = shard.open_channel
    if not hasattr(opener, "remote"):
        return opener()
    import ray

    return ray.get(opener.remote(), timeout=timeout_s)


@dataclass
class _Link:
    """One connection to one shard and its calls not yet answered, oldest first, each as its
    sequence number and encoded frame."""

    shard: Any
    session: bytes = field(default_factory=lambda: secrets.token_bytes(SESSION_BYTES))
    sock: socket.socket | None = None
    next_seq: int = 0
    unanswered: deque[tuple[int, bytes]] = field(default_factory=deque)
    replies: dict[int, tuple[bool, Any]] = field(default_factory=dict)
    breaks: int = 0  # connections lost in a row without a reply read in between

    @property
    def bytes_in_flight(self) -> int:
        return sum(len(frame) for _, frame in self.unanswered)


@dataclass(frozen=True)
class Ticket:
    """A call in flight on a channel: its link and sequence number."""

    link: _Link
    seq: int


class ChannelCalls:
    """``Calls`` over channels to shard actors (or to ``ShardServer`` objects in this
    process, whose channels then run on threads here): ``submit`` sends one call,
    ``gather`` reads the replies. Not thread-safe: one trainer thread uses it."""

    def __init__(self, timeout_s: float | None = 60.0,
                 address_of: Callable[[Any, float | None], Address] = actor_address) -> None:
        self.timeout_s = timeout_s
        self.address_of = address_of
        self._links: dict[Any, _Link] = {}

    def submit(self, shard: Any, method: str, *args: Any) -> Ticket:
        if method not in CHANNEL_METHODS:
            raise ValueError(f"{method!r} cannot be called over a channel")
        key = getattr(shard, "_actor_id", None) or id(shard)
        link = self._links.get(key)
        if link is None:
            link = self._links[key] = _Link(shard)
        seq = link.next_seq
        acked = link.unanswered[0][0] if link.unanswered else seq
        # A call the wire format cannot carry fails here, before it is queued.
        frame = encode(wire.REQUEST, wire.METHOD_IDS[method], seq, acked, args)
        while link.unanswered and (
                len(link.unanswered) >= MAX_IN_FLIGHT_CALLS
                or link.bytes_in_flight + len(frame) > MAX_IN_FLIGHT_BYTES):
            self._read_reply(link, 0, 1)  # flow control: make room first
        link.next_seq += 1
        link.unanswered.append((seq, frame))
        if link.sock is None:
            try:  # connecting sends every unanswered call, this one included
                self._connect(link, 0, 1)
            except ShardUnavailableError:
                pass  # gather tries again and raises, naming the call's position
        else:
            try:
                link.sock.sendall(frame)
            except OSError:
                self._drop(link)  # resent after reconnecting, when a reply is awaited
        return Ticket(link, seq)

    def gather(self, handles: list[Ticket]) -> list[Any]:
        """The results of ``handles`` in order; a shard's error is raised here."""
        results = []
        for i, ticket in enumerate(handles):
            while ticket.seq not in ticket.link.replies:
                self._read_reply(ticket.link, i, len(handles))
            ok, value = ticket.link.replies.pop(ticket.seq)
            if not ok:
                raise value
            results.append(value)
        return results

    def close(self) -> None:
        """Close every connection."""
        for link in self._links.values():
            self._drop(link)

    def _read_reply(self, link: _Link, i: int, n: int) -> None:
        """Read the reply to ``link``'s oldest unanswered call into ``link.replies``,
        reconnecting (and resending) if the connection broke. ``i`` of ``n``: the position
        of the call waited for, named in errors."""
        if link.sock is None:
            self._connect(link, i, n)
            if link.sock is None:
                return  # broke again while connecting; counted, the caller comes back
        try:
            frame = read_frame(link.sock)
        except TimeoutError as err:
            self._fail_all(link, not_answered([i], n, self.timeout_s), err)
            return
        except (ConnectionError, OSError) as err:
            self._broke(link, i, n, err)  # the next read reconnects and resends
            return
        seq = link.unanswered[0][0]
        if frame.head.seq != seq or frame.head.kind == wire.REQUEST:
            self._broke(link, i, n, FrameError(
                f"a reply to call {frame.head.seq} (kind {frame.head.kind}) where the reply "
                f"to call {seq} was due"))
            return
        link.breaks = 0
        link.unanswered.popleft()
        try:
            value = wire.decode(frame.body, frame.buffers)
            link.replies[seq] = (True, value) if frame.head.kind == wire.RESULT else (
                False, wire.error_of(value))
        except wire.WireError as err:
            link.replies[seq] = (False, RuntimeError(f"a shard's reply could not be decoded: "
                                                     f"{err}"))

    def _broke(self, link: _Link, i: int, n: int, err: OSError) -> None:
        """Count a lost connection; past ``MAX_BREAKS`` in a row, fail the calls in flight."""
        self._drop(link)
        link.breaks += 1
        if link.breaks > MAX_BREAKS:
            self._fail_all(link, ShardUnavailableError(
                f"parameter server(s) [{i}] of {n}: the channel broke {link.breaks} times in a "
                f"row without answering ({err})"), err)
        else:
            time.sleep(0.05 * link.breaks)  # e.g. a shard process that is still dying

    def _fail_all(self, link: _Link, error: ShardUnavailableError, cause: BaseException) -> None:
        """Fail every call in flight on ``link`` with ``error`` and close its connection (its
        stream may stand mid-frame); the next call opens a new one."""
        error.__cause__ = cause
        link.breaks = 0
        while link.unanswered:
            seq, _ = link.unanswered.popleft()
            link.replies[seq] = (False, error)
        self._drop(link)

    def _connect(self, link: _Link, i: int, n: int) -> None:
        """Open ``link``'s connection (asking the shard for its address) and send its
        unanswered calls again, in order."""
        from ray.exceptions import GetTimeoutError, RayActorError

        try:
            host, port, token = self.address_of(link.shard, self.timeout_s)
        except GetTimeoutError as err:
            raise not_answered([i], n, self.timeout_s) from err
        except RayActorError as err:
            raise dead_or_unreachable([i], n, err) from err
        try:
            link.sock = socket.create_connection((host, port), timeout=self.timeout_s)
            link.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            link.sock.sendall(token + link.session)
            for _, frame in link.unanswered:
                link.sock.sendall(frame)
        except TimeoutError as err:
            self._fail_all(link, ShardUnavailableError(
                f"parameter server(s) [{i}] of {n} at {host}:{port} did not take the calls "
                f"within {self.timeout_s} s"), err)
        except OSError as err:
            self._broke(link, i, n, err)

    @staticmethod
    def _drop(link: _Link) -> None:
        if link.sock is not None:
            link.sock.close()
            link.sock = None
