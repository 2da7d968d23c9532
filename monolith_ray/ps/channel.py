"""Channels: a trainer's per-step calls to a parameter-server shard over pyzmq with CURVE.

Why: a Ray actor call costs about 0.75 ms of the caller's CPU and 0.8 ms of the callee's beyond
the work it asks for (task spec, gRPC, reference counting), whatever it carries. A trainer
makes one call per shard per step, and on a small node those costs take the cores the jitted
step needs (``benchmarks/train_throughput.py`` measures both transports). A channel carries the
same calls (same methods, same arguments, same order) over a ZeroMQ connection the shard opens
on request, for about 0.1 ms a call on either side.

Ray stays the control plane: it places, restarts and names the shards, and the snapshots, syncs
and maintenance calls stay Ray calls. A trainer (a :class:`ChannelCalls`, one CURVE key pair
each) registers its public key with a shard actor in an ordinary actor call
(``ShardServer.open_channel(client_public_key)`` -> host, port, the shard's public key) and
asks again whenever its connection breaks: a restarted shard has a new process, port and key.

Transport: libzmq through pyzmq. A shard binds a ROUTER socket on the node's address (Ray's
node IP) on a port the OS picks; a trainer connects a DEALER per shard. ZeroMQ does the
framing (multipart messages), the TCP reads and writes on its own I/O thread, heartbeats and
high-water marks. Every message is :mod:`monolith_ray.ps.wire`'s parts, no pickle: a fixed
header (kind, method id, sequence number, counts and lengths), a msgpack body and the raw array
buffers, each a frame.

Security: CURVE (CurveZMQ: Curve25519 keys, every frame authenticated and encrypted) with a ZAP
handler on the shard that admits only the client keys registered through ``open_channel``,
a Ray call. libzmq runs the handshake and asks the handler on its own threads, and drops a peer
that fails it before any message of that peer reaches the application: nothing a stranger
sends is decoded. A peer has ``HANDSHAKE_S`` to complete its handshake (a peer trickling bytes
is dropped on time), and a frame declaring more than ``wire.MAX_MESSAGE_BYTES`` is refused
(``ZMQ_MAXMSGSIZE``) and its connection dropped. Strangers cost the shard a file descriptor
and libzmq's I/O thread some work each, never the thread that runs calls. An admitted peer can
call only :data:`CHANNEL_METHODS` (per-step table methods, never snapshots or restores, which
stay Ray calls); its messages are checked as ``wire`` checks them (a malformed header is
dropped, a malformed body answered with the error) and decoding never runs code. On a cluster
the nodes must reach each other on any TCP port, as Ray's own workers already do.

Transport measured (issue 12): three alternating runs each of ``python -m
benchmarks.train_throughput --repeats 3`` on the shared 2-core machine, the socket transport
(a token in the clear) against a pyzmq + CURVE prototype, both on ``ps.wire`` (load average 4
to 31 during the runs, so single figures swing widely):

=================  =====================  =====================  ========
figure             socket (3 runs)        pyzmq + CURVE          medians
=================  =====================  =====================  ========
ratio              0.900, 0.525, 0.928    0.899, 1.486, 0.841    0.900 / 0.899
ratio_default_b.   0.775, 0.739, 0.868    0.763, 0.703, 0.342    0.775 / 0.703
=================  =====================  =====================  ========

pyzmq cost about 0 % of ``ratio`` and 9 % of ``ratio_default_batch`` (medians), within the
10 % issue 12 allows, so the rule picks pyzmq: the maintained transport with authentication
and encryption replaced the hand-written sockets.

Ordering and failures: a shard runs one client's calls one at a time in order, as Ray runs one
caller's actor calls, on a thread of that client's session (so one client's slow call does not
hold another's), and replies in order; the shard's lock serializes them with its Ray calls and
other trainers' channels. The server's I/O loop only moves messages between libzmq and the
sessions, answers the ZAP handler and never waits on a peer: a reply to a peer whose queue is
full (``SNDHWM``, more than a client keeps in flight) is dropped, not waited for. A call not
answered within ``timeout_s`` raises :class:`ShardUnavailableError` and fails every call in
flight on that connection (the next call opens a new one); such calls may still run on the
shard. When a connection breaks (libzmq reports it disconnected, its handshake failed, or its
heartbeats went unanswered for ``HEARTBEAT_TIMEOUT_S``), the client asks the actor for its
channel again: Ray holds that call until a restarted actor is up (which restores its snapshot
first, see ``monolith_ray.train.job.start_servers``), and the calls not yet answered are sent
again in order on a new connection, as Ray retries a restarted actor's calls
(``max_task_retries``). A shard dead for good raises :class:`ShardUnavailableError` naming it;
a connection that breaks ``MAX_BREAKS`` times in a row without an answer fails its calls too.
A connection that breaks while the shard lives on also resends, but runs nothing twice: the
session (one per client key and shard) keeps the number of the last call it ran and its replies
the client has not acknowledged (a request carries the oldest call still unanswered,
``acked``), and answers a call it already ran with the reply it sent (a push is applied once).
A restarted shard has lost that state with its table and runs what is resent on the table it
restored. Sessions are bounded: registering a key forgets sessions idle for ``SESSION_IDLE_S``,
and least recently used ones past ``MAX_SESSIONS``, never one with a call queued or running; a
forgotten client's calls are refused unrun, and it registers again and resends them. A client keeps at most ``MAX_IN_FLIGHT_CALLS`` calls unanswered per
shard (a trainer keeps one).
"""

from __future__ import annotations

import atexit
import itertools
import queue
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import zmq
from zmq.utils import z85
from zmq.utils.monitor import recv_monitor_message

from monolith_ray.ps import wire
from monolith_ray.ps.client import (
    ShardUnavailableError,
    dead_or_unreachable,
    not_answered,
)

# What a channel may call on a shard: its per-step and table methods (maintenance that names
# files, snapshot and restore, stays on Ray calls).
CHANNEL_METHODS = frozenset(wire.METHODS)
MAX_IN_FLIGHT_CALLS = 64
HWM = 4 * MAX_IN_FLIGHT_CALLS  # messages queued per peer and direction (send and receive)
HANDSHAKE_S = 10.0  # a peer that has not completed its CURVE handshake by then is dropped
HEARTBEAT_S = 5.0  # a client pings its shard this often ...
HEARTBEAT_TIMEOUT_S = 30.0  # ... and counts the connection broken without an answer this long
MAX_BREAKS = 3  # reconnects without a reply before the calls in flight fail
MAX_SESSIONS = 64  # sessions a server keeps, beyond those with a call queued or running
SESSION_IDLE_S = 120.0  # a session without a call for this long is forgotten
CLOSE_WAIT_S = 5.0  # for a session's call in progress when its server closes
POLL_MS = 100  # the server loop's wait between checks that it is still open
ZAP_ENDPOINT = "inproc://zeromq.zap.01"  # where libzmq asks a context's ZAP handler
# Monitor events that mean a client's connection is gone or will never serve.
BREAK_EVENTS = (zmq.EVENT_DISCONNECTED | zmq.EVENT_CONNECT_RETRIED
                | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                | zmq.EVENT_HANDSHAKE_FAILED_AUTH)

FORGOTTEN = "this client's channel session was forgotten; it registers again"
FORGOTTEN_BODY = wire.encode(wire.ERROR, 0, 0, 0, ("ShardUnavailableError", FORGOTTEN))[1]
Address = tuple[str, int, bytes]  # host, port, the server's CURVE public key (Z85, 40 bytes)
Parts = list[Any]  # a message's frames: bytes, memoryviews or zmq.Frames


def _common_options(sock: zmq.Socket) -> None:
    """Options of both ends: no lingering on close, frames capped, queues bounded."""
    sock.linger = 0
    sock.setsockopt(zmq.MAXMSGSIZE, wire.MAX_MESSAGE_BYTES)
    sock.sndhwm = sock.rcvhwm = HWM


@dataclass
class _Session:
    """One client's calls on one server: a queue its thread runs in order, the last call run,
    the replies not yet acknowledged by sequence number, and the calls queued or running."""

    key: bytes
    calls: queue.SimpleQueue = field(default_factory=queue.SimpleQueue)
    last: int = -1
    replies: dict[int, Parts] = field(default_factory=dict)
    pending: int = 0
    used_at: float = field(default_factory=time.monotonic)


class ChannelServer:
    """Serves ``target``'s :data:`CHANNEL_METHODS` over a CURVE ROUTER socket on ``host`` to
    the client keys given to :meth:`register`. ``target`` serializes its own methods (a
    ``ShardServer`` holds a lock)."""

    _ids = itertools.count()

    def __init__(self, target: Any, host: str = "127.0.0.1") -> None:
        self.target = target
        self.host = host
        self.public_key, secret = zmq.curve_keypair()
        self.dropped = 0  # messages dropped: header malformed, or the peer's queue full
        self._sessions: OrderedDict[bytes, _Session] = OrderedDict()  # least recent first
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._context = zmq.Context(io_threads=1)
        self._zap = self._context.socket(zmq.REP)
        self._zap.linger = 0
        self._zap.bind(ZAP_ENDPOINT)  # before any CURVE socket of this context needs it
        self._router = self._context.socket(zmq.ROUTER)
        _common_options(self._router)
        self._router.router_mandatory = 1  # an unroutable or full peer raises, never blocks
        self._router.handshake_ivl = int(HANDSHAKE_S * 1000)
        self._router.curve_server = True
        self._router.curve_secretkey = secret
        self._router.curve_publickey = self.public_key
        self.port = self._router.bind_to_random_port(f"tcp://{host}")
        self._replies_endpoint = f"inproc://channel-replies-{next(self._ids)}"
        self._replies = self._context.socket(zmq.PULL)
        self._replies.linger = 0
        self._replies.bind(self._replies_endpoint)
        self._threads: list[threading.Thread] = []
        self._loop_thread = threading.Thread(target=self._loop, name="channel-io", daemon=True)
        self._loop_thread.start()
        atexit.register(self.close)

    def register(self, client_key: bytes) -> Address:
        """Admit the client with CURVE public key ``client_key`` (Z85, 40 bytes) -> the address
        to connect to. Forgets sessions idle too long, or beyond ``MAX_SESSIONS`` least
        recently used first, never one with a call queued or running."""
        try:
            valid = len(client_key) == 40 and len(z85.decode(client_key)) == 32
        except (KeyError, TypeError, ValueError):  # not Z85
            valid = False
        if not valid:
            raise ValueError("a client key must be a CURVE public key in Z85 (40 bytes)")
        with self._lock:
            if self._closed.is_set():
                raise RuntimeError("the channel server is closed")
            now = time.monotonic()
            session = self._sessions.pop(client_key, None)
            excess = len(self._sessions) + 1 - MAX_SESSIONS
            for key, old in list(self._sessions.items()):
                if old.pending == 0 and (excess > 0 or now - old.used_at > SESSION_IDLE_S):
                    del self._sessions[key]
                    old.calls.put(None)  # its thread ends
                    excess -= 1
            if session is None:
                session = _Session(client_key)
                thread = threading.Thread(target=self._run_session, args=(session,),
                                          name="channel", daemon=True)
                self._threads = [t for t in self._threads if t.is_alive()] + [thread]
                thread.start()
            session.used_at = now
            self._sessions[client_key] = session
        return self.address

    @property
    def address(self) -> Address:
        return self.host, self.port, self.public_key

    def close(self) -> None:
        """Stop serving: close the sockets (nothing lingers), end the session threads and the
        zmq context with its I/O thread. Idempotent."""
        with self._lock:
            if self._closed.is_set():
                return
            self._closed.set()
            sessions, self._sessions = list(self._sessions.values()), OrderedDict()
        atexit.unregister(self.close)
        for session in sessions:
            session.calls.put(None)
        self._loop_thread.join()
        for thread in self._threads:
            thread.join(CLOSE_WAIT_S)
        self._context.destroy(linger=0)  # closes the sockets of threads still in a call

    def _loop(self) -> None:
        """The I/O loop: ZAP requests, requests to their sessions, replies to their peers."""
        poller = zmq.Poller()
        for sock in (self._zap, self._router, self._replies):
            poller.register(sock, zmq.POLLIN)
        try:
            while not self._closed.is_set():
                ready = dict(poller.poll(POLL_MS))
                if self._zap in ready:
                    self._authenticate()
                if self._router in ready:
                    self._drain(self._router, self._dispatch)
                if self._replies in ready:
                    self._drain(self._replies, self._send)
        finally:
            for sock in (self._zap, self._router, self._replies):
                sock.close()

    @staticmethod
    def _drain(sock: zmq.Socket, handle: Callable[[list[zmq.Frame]], None]) -> None:
        """Handle the messages ``sock`` holds now (at most ``HWM``, then the loop goes on)."""
        for _ in range(HWM):
            try:
                handle(sock.recv_multipart(zmq.NOBLOCK, copy=False))
            except zmq.Again:
                return

    def _authenticate(self) -> None:
        """Answer one ZAP request: 200 for a CURVE client whose key is registered (its key is
        then the User-Id of its messages), 400 for any other."""
        request = self._zap.recv_multipart()
        request_id = request[1] if len(request) > 1 else b""
        key = b""
        if len(request) == 7 and request[5] == b"CURVE" and len(request[6]) == 32:
            key = z85.encode(request[6])
        with self._lock:
            admitted = key in self._sessions
        self._zap.send_multipart([b"1.0", request_id, b"200" if admitted else b"400",
                                  b"OK" if admitted else b"unknown client key",
                                  key if admitted else b"", b""])

    def _dispatch(self, frames: list[zmq.Frame]) -> None:
        """A request from a peer ([routing id, head, body, *buffers]) to its session's queue;
        the peer's key (from the handshake, not from the message) names the session."""
        if len(frames) < 3:
            self.dropped += 1
            return
        try:
            key = frames[1].get("User-Id").encode()  # set by the ZAP handler's answer
        except zmq.ZMQError:
            self.dropped += 1
            return
        with self._lock:
            session = self._sessions.get(key)
            if session is not None:
                session.pending += 1
                session.used_at = time.monotonic()
                self._sessions.move_to_end(key)
        if session is not None:
            session.calls.put(frames)
            return
        try:
            head = wire.parse_head(frames[1].buffer)
        except wire.WireError:
            self.dropped += 1
            return
        self._send([frames[0], *_reply(head, (False, ShardUnavailableError(FORGOTTEN)), "")])

    def _send(self, frames: Parts) -> None:
        """Send a reply ([routing id, *parts]) without waiting: dropped if its peer is gone or
        its queue is full (the session keeps it for a resend)."""
        try:
            self._router.send_multipart(frames, zmq.NOBLOCK, copy=False)
        except (zmq.Again, zmq.ZMQError):
            self.dropped += 1

    def _run_session(self, session: _Session) -> None:
        """A session's thread: run its calls in order, replies to the I/O loop."""
        out = self._context.socket(zmq.PUSH)
        out.linger = 0
        out.sndtimeo = 10 * POLL_MS  # the loop drains replies; it only stops when closed
        out.connect(self._replies_endpoint)
        try:
            while (frames := session.calls.get()) is not None and not self._closed.is_set():
                try:
                    reply = self._answer(session, frames[1:])
                finally:
                    with self._lock:
                        session.pending -= 1
                try:
                    if reply is not None:
                        out.send_multipart([frames[0], *reply], copy=False)
                except zmq.Again:
                    self.dropped += 1
        finally:
            out.close()

    def _answer(self, session: _Session, frames: list[zmq.Frame]) -> Parts | None:
        """The reply to one request ([head, body, *buffers]): its result, or the error that
        decoding it, calling the method or encoding the result raised; a call the session
        already ran gets the reply it was sent. None (dropped) if the header is malformed."""
        try:
            head = wire.parse_head(frames[0].buffer)
        except wire.WireError:
            self.dropped += 1
            return None
        method = wire.METHODS[head.method]
        try:
            if head.kind != wire.REQUEST:
                raise wire.WireError(f"a message of kind {head.kind} where a request goes")
            sizes = wire.parse_sizes(head, frames[0].buffer)
            body, buffers = frames[1].buffer, [f.buffer for f in frames[2:]]
            if len(body) != head.body_bytes or tuple(b.nbytes for b in buffers) != sizes:
                raise wire.WireError("a request's frames do not match its header")
            args = wire.decode(body, buffers)
            if not isinstance(args, tuple):
                raise wire.WireError(f"a request's arguments must be a tuple, got "
                                     f"{type(args).__name__}")
        except wire.WireError as err:  # the caller gets it; nothing ran
            return _reply(head, (False, err), "a request that could not be decoded")
        for done in [k for k in session.replies if k < head.acked]:
            del session.replies[done]  # the client has read these
        if head.seq <= session.last:
            return session.replies.get(head.seq) or _reply(head, (False, RuntimeError(
                f"call {head.seq} is behind its session's latest call {session.last}: "
                f"answered already, or overtaken and not run")), method)
        try:
            reply = (True, getattr(self.target, method)(*args))
        except Exception as err:  # noqa: BLE001 - the caller gets it
            reply = (False, err)
        parts = _reply(head, reply, method)
        session.last, session.replies[head.seq] = head.seq, parts
        return parts


def _reply(request: wire.Head, reply: tuple[bool, Any], what: str) -> Parts:
    """The parts of ``reply`` (ok and result, or False and an exception) to ``request``; if
    the result cannot be encoded, those of a RuntimeError describing it, naming ``what`` was
    called."""
    ok, value = reply
    head = (wire.RESULT if ok else wire.ERROR, request.method, request.seq, request.acked)
    try:
        return wire.encode(*head, value if ok else wire.error_value(value))
    except wire.WireError as err:
        return wire.encode(wire.ERROR, *head[1:], wire.error_value(
            RuntimeError(f"{what}: its result could not be sent ({err})")))


def actor_address(shard: Any, client_key: bytes, timeout_s: float | None) -> Address:
    """``shard.open_channel(client_key)``: over Ray for an actor handle (waits out a
    restart), directly for an object in this process."""
    opener = shard.open_channel
    if not hasattr(opener, "remote"):
        return opener(client_key)
    import ray

    return ray.get(opener.remote(client_key), timeout=timeout_s)


@dataclass
class _Link:
    """One connection to one shard (a DEALER and its monitor) and its calls not yet answered,
    oldest first, each as its sequence number and message parts."""

    shard: Any
    sock: zmq.Socket | None = None
    monitor: zmq.Socket | None = None
    poller: zmq.Poller | None = None
    next_seq: int = 0
    unanswered: deque[tuple[int, list[bytes]]] = field(default_factory=deque)
    replies: dict[int, tuple[bool, Any]] = field(default_factory=dict)
    breaks: int = 0  # connections lost in a row without a reply read in between


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
                 address_of: Callable[[Any, bytes, float | None], Address] = actor_address
                 ) -> None:
        self.timeout_s = timeout_s
        self.address_of = address_of
        self.public_key, self._secret_key = zmq.curve_keypair()
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
        # A call the wire format cannot carry fails here, before it is queued. Its parts are
        # copied: it is sent as it was now, also when resent.
        parts = [bytes(p) for p in wire.encode(wire.REQUEST, wire.METHOD_IDS[method], seq,
                                                acked, args)]
        while len(link.unanswered) >= MAX_IN_FLIGHT_CALLS:
            self._read_reply(link, 0, 1)  # make room first
        link.next_seq += 1
        link.unanswered.append((seq, parts))
        if link.sock is None:
            try:  # connecting sends every unanswered call, this one included
                self._connect(link, 0, 1)
            except ShardUnavailableError:
                pass  # gather tries again and raises, naming the call's position
        else:
            link.sock.send_multipart(parts, copy=False)
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
        """Close every connection (calls not yet answered are resent on the next one)."""
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
        deadline = None if self.timeout_s is None else time.monotonic() + self.timeout_s
        while True:
            try:
                frames = link.sock.recv_multipart(zmq.NOBLOCK, copy=False)
                break
            except zmq.Again:
                pass
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                self._fail_all(link, not_answered([i], n, self.timeout_s),
                               TimeoutError("no reply"))
                return
            ready = dict(link.poller.poll(None if left is None else max(1, int(left * 1e3))))
            if link.monitor in ready:
                event = recv_monitor_message(link.monitor)
                self._broke(link, i, n, ConnectionError(
                    f"the channel's connection broke (zmq event {event['event']!r})"))
                return
        self._take(link, frames, i, n)

    def _take(self, link: _Link, frames: list[zmq.Frame], i: int, n: int) -> None:
        """Record a reply ([head, body, *buffers]) to the oldest unanswered call; a reply to
        any other call (one already failed) is dropped, and one saying the shard forgot this
        client's session is a break (``i`` of ``n`` as in :meth:`_read_reply`)."""
        try:
            head = wire.parse_head(frames[0].buffer)
            sizes = wire.parse_sizes(head, frames[0].buffer)
        except (wire.WireError, IndexError):
            return
        if not link.unanswered or head.seq != link.unanswered[0][0] or head.kind == wire.REQUEST:
            return
        if head.kind == wire.ERROR and frames[1].bytes == FORGOTTEN_BODY:
            self._broke(link, i, n, ConnectionError(FORGOTTEN))  # registers again, resends
            return
        link.breaks = 0
        link.unanswered.popleft()
        try:
            buffers = [f.buffer for f in frames[2:]]
            if len(frames) < 2 or tuple(b.nbytes for b in buffers) != sizes:
                raise wire.WireError("a reply's frames do not match its header")
            value = wire.decode(frames[1].buffer, buffers)
            result = (True, value) if head.kind == wire.RESULT else (False, wire.error_of(value))
        except wire.WireError as err:
            result = (False, RuntimeError(f"a shard's reply could not be decoded: {err}"))
        link.replies[head.seq] = result

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
        """Fail every call in flight on ``link`` with ``error`` and close its connection; the
        next call opens a new one."""
        error.__cause__ = cause
        link.breaks = 0
        while link.unanswered:
            seq, _ = link.unanswered.popleft()
            link.replies[seq] = (False, error)
        self._drop(link)

    def _connect(self, link: _Link, i: int, n: int) -> None:
        """Register with ``link``'s shard (asking it for its address), connect, and send its
        unanswered calls again, in order."""
        from ray.exceptions import GetTimeoutError, RayActorError

        try:
            host, port, server_key = self.address_of(link.shard, self.public_key,
                                                     self.timeout_s)
        except GetTimeoutError as err:
            raise not_answered([i], n, self.timeout_s) from err
        except RayActorError as err:
            raise dead_or_unreachable([i], n, err) from err
        sock = zmq.Context.instance().socket(zmq.DEALER)
        _common_options(sock)
        sock.heartbeat_ivl = int(HEARTBEAT_S * 1000)
        sock.heartbeat_timeout = int(HEARTBEAT_TIMEOUT_S * 1000)
        sock.curve_serverkey = server_key
        sock.curve_publickey = self.public_key
        sock.curve_secretkey = self._secret_key
        link.sock, link.monitor = sock, sock.get_monitor_socket(BREAK_EVENTS)
        link.poller = zmq.Poller()
        link.poller.register(sock, zmq.POLLIN)
        link.poller.register(link.monitor, zmq.POLLIN)
        sock.connect(f"tcp://{host}:{port}")
        for _, parts in link.unanswered:  # queued until the connection is up
            sock.send_multipart(parts, copy=False)

    @staticmethod
    def _drop(link: _Link) -> None:
        if link.sock is not None:
            link.sock.disable_monitor()
            link.monitor.close(linger=0)
            link.sock.close(linger=0)
            link.sock = link.monitor = link.poller = None
