"""Channels (``monolith_ray.ps.channel``): the frame format, the token check, ordering,
errors, timeouts and reconnects, in process over loopback, then against shard actors."""

from __future__ import annotations

import os
import random
import signal
import socket
import struct
import threading
import time
from typing import Any

import numpy as np
import pytest

from monolith_ray.config import load_config
from monolith_ray.features import make_fids
from monolith_ray.ps import channel, wire
from monolith_ray.ps.channel import (
    SESSION_BYTES,
    TOKEN_BYTES,
    ChannelCalls,
    ChannelServer,
    read_frame,
)
from monolith_ray.ps.calls import DirectCalls, ShardUnavailableError
from monolith_ray.ps.client import ShardClient
from monolith_ray.ps.packed_slots import PackedSlots
from monolith_ray.ps.shard import ShardServer

CFG = load_config()  # the MovieLens slots: 8 slots, rows 17 wide
SLOTS = CFG.slots
NAMES = [s.name for s in SLOTS]
WIDTH = SLOTS[0].dim + 1


def movielens_fids(seed: int, n: int = 300) -> dict[str, np.ndarray]:
    """Per slot fids with many duplicates (values drawn from small ranges), unsorted."""
    rng = np.random.default_rng(seed)
    return {s.name: make_fids(s.slot_id, rng.integers(0, 10 + 20 * s.slot_id, n))
            for s in SLOTS}


def grads_of(fids: dict[str, np.ndarray], seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {n: rng.standard_normal((f.size, WIDTH)).astype(np.float32) for n, f in fids.items()}


class Echo:
    """A fake target: records every call (method, argument) in order and returns the
    argument; ``pull`` can be made to sleep or wait on a gate, and ``secret`` (a method
    outside CHANNEL_METHODS) counts its calls. ``open_channel`` serves it like a shard."""

    def __init__(self, sleep_s: float = 0.0) -> None:
        self.log: list[tuple[str, Any]] = []
        self.sleep_s = sleep_s
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.secret_calls = 0
        self.server: ChannelServer | None = None

    def open_channel(self) -> tuple[str, int, bytes]:
        if self.server is None:
            self.server = ChannelServer(self)
        return self.server.address

    def pull(self, x: Any, *rest: Any) -> Any:
        self.log.append(("pull", x))
        self.entered.set()
        if not self.gate.wait(30):
            raise TimeoutError("gate never opened")
        time.sleep(self.sleep_s)
        return x

    def push(self, x: Any, *rest: Any) -> Any:
        self.log.append(("push", x))
        return x

    def lookup(self, x: Any) -> Any:
        """``x``, or for ``x = ("raise", type name, message)`` raises that builtin error."""
        self.log.append(("lookup", x))
        if isinstance(x, tuple) and x[:1] == ("raise",):
            raise {"ValueError": ValueError, "KeyError": KeyError}[x[1]](x[2])
        return x

    def secret(self) -> str:
        self.secret_calls += 1
        return "secret"


def send_request(sock: socket.socket, seq: int, method: str, *args: Any) -> None:
    """Write one request frame, as a client does (``acked`` = ``seq``)."""
    sock.sendall(channel.encode(wire.REQUEST, wire.METHOD_IDS[method], seq, seq, args))


def receive_reply(sock: socket.socket) -> tuple[bool, Any]:
    """Read one reply frame -> (True, result) or (False, the error it carries)."""
    frame = read_frame(sock)
    value = wire.decode(frame.body, frame.buffers)
    return (True, value) if frame.head.kind == wire.RESULT else (False, wire.error_of(value))


def assert_closed_by_peer(sock: socket.socket) -> None:
    """The peer closed ``sock``: a read gives EOF (or a reset, when it closed with our data
    unread)."""
    try:
        data = sock.recv(1)
    except ConnectionResetError:
        data = b""
    assert data == b""


# ------------------------------------------------------------------ frames


def test_frames_follow_each_other_whole_on_one_connection():
    rng = np.random.default_rng(0)
    ids = PackedSlots.of({"user": make_fids(1, np.arange(50)), "item": np.empty(0, np.int64)})
    rows = PackedSlots.of({"user": rng.standard_normal((50, WIDTH)).astype(np.float32),
                      "item": np.empty((0, WIDTH), np.float32)})
    big = np.arange(2_000_000, dtype=np.float32)  # 8 MB: larger than the socket buffers
    args = (ids, rows, 1.5, {"big": big, "strided": big[::1000]}, 2.25)
    a, b = socket.socketpair()
    with a, b:
        # A sender thread: a frame bigger than the socket buffers blocks until it is read.
        sender = threading.Thread(target=lambda: (send_request(a, 4, "push_pull", *args),
                                                  send_request(a, 5, "stats")))
        sender.start()
        first, second = read_frame(b), read_frame(b)
        sender.join(5)
        assert not sender.is_alive()
        a.close()
        with pytest.raises(ConnectionError):
            read_frame(b)
    assert (first.head.seq, wire.METHODS[first.head.method]) == (4, "push_pull")
    assert (second.head.seq, wire.decode(second.body, second.buffers)) == (5, ())
    g_ids, g_rows, now, arrays, pull_now = wire.decode(first.body, first.buffers)
    assert (now, pull_now) == (1.5, 2.25)
    for sent, received in ((ids, g_ids), (rows, g_rows)):
        assert isinstance(received, PackedSlots)
        assert (received.names, received.counts, received.shapes) == (
            sent.names, sent.counts, sent.shapes)
        assert received.data.dtype == sent.data.dtype and received.data.flags.writeable
        np.testing.assert_array_equal(received.data, sent.data)
    for key in ("big", "strided"):
        np.testing.assert_array_equal(arrays[key], args[3][key])
    arrays["big"][0] = -1.0  # writable for real, and not the sender's memory
    assert big[0] == 0.0


def test_a_peer_closing_mid_frame_is_a_connection_error():
    a, b = socket.socketpair()
    with a, b:
        frame = channel.encode(wire.REQUEST, 0, 0, 0, (np.arange(100, dtype=np.int64), 1.0))
        a.sendall(frame[:len(frame) // 2])
        a.close()
        with pytest.raises(ConnectionError):
            read_frame(b)


# ------------------------------------------------------------------ the same as direct calls


def test_shard_client_over_channels_gives_the_rows_counts_and_stats_of_direct_calls():
    direct_shards = [ShardServer(SLOTS, CFG.admission) for _ in range(3)]
    channel_shards = [ShardServer(SLOTS, CFG.admission) for _ in range(3)]
    calls = ChannelCalls(timeout_s=30)
    direct = ShardClient(direct_shards, NAMES, calls=DirectCalls())
    over = ShardClient(channel_shards, NAMES, calls=calls)
    try:
        def same_rows(a: dict, b: dict, fids: dict) -> None:
            assert a.keys() == b.keys() == fids.keys()
            for name, f in fids.items():
                assert a[name].shape == (f.size, WIDTH) and a[name].dtype == np.float32
                np.testing.assert_array_equal(a[name], b[name])

        fids = [movielens_fids(seed) for seed in range(4)]
        for name, f in fids[0].items():
            assert np.unique(f).size < f.size, name  # duplicate fids in every slot

        first = over.pull(fids[0], now=1.0)
        same_rows(first, direct.pull(fids[0], now=1.0), fids[0])
        assert any(np.abs(r).sum() > 0 for r in first.values())  # initialized, not zeros

        counts = (over.push(fids[0], grads_of(fids[0], 1), now=2.0),
                  direct.push(fids[0], grads_of(fids[0], 1), now=2.0))
        assert counts[0] == counts[1] == sum(np.unique(f).size for f in fids[0].values())

        for step in range(1, 4):  # the trainer's steps: push the last, pull the next
            rows = [c.wait(c.push_pull_async(fids[step - 1], grads_of(fids[step - 1], step),
                                             2.0 + step, fids[step], 2.0 + step))
                    for c in (over, direct)]
            same_rows(*rows, fids[step])

        # Several calls in flight per shard before waiting: a pull, then a push, then a lookup.
        results = []
        for c in (over, direct):
            pull = c.pull_async(fids[1], now=9.0)
            push = c.push_async(fids[3], grads_of(fids[3], 9), now=9.0)
            look = c.lookup_async(fids[2])
            results.append((c.wait(look), c.wait(push), c.wait(pull)))
        (look_a, push_a, pull_a), (look_b, push_b, pull_b) = results
        same_rows(look_a, look_b, fids[2])
        same_rows(pull_a, pull_b, fids[1])
        assert push_a == push_b > 0

        assert over.stats() == direct.stats()
        assert over.stats()[NAMES[0]]["rows"] == len(set(np.concatenate(
            [f[NAMES[0]] for f in fids]).tolist()))
        for a, b in zip(channel_shards, direct_shards):
            assert a.stats() == b.stats()  # every shard alike, versions included
            assert a._channel is not None and b._channel is None  # went over a channel
        unseen = {NAMES[1]: make_fids(2, np.arange(10_000, 10_020))}
        same_rows(over.lookup(unseen), direct.lookup(unseen), unseen)
    finally:
        calls.close()


# ------------------------------------------------------------------ security


def test_a_wrong_token_closes_the_connection_before_anything_else_is_read(monkeypatch):
    target = Echo()
    server = ChannelServer(target)
    host, port, token = server.address
    assert len(token) == TOKEN_BYTES
    wrong = token[:-1] + bytes([token[-1] ^ 1])  # differs in its last byte only
    read = []
    real_read_frame = channel.read_frame
    monkeypatch.setattr(channel, "read_frame", lambda sock: read.append(1) or real_read_frame(sock))
    try:
        with socket.create_connection((host, port), timeout=5) as raw:
            raw.sendall(wrong + b"s" * SESSION_BYTES
                        + channel.encode(wire.REQUEST, 0, 0, 0, ("from a stranger",)))
            assert_closed_by_peer(raw)
        with socket.create_connection((host, port), timeout=5) as raw:
            raw.sendall(channel.encode(wire.REQUEST, 0, 0, 0, ("no token at all",)))
            assert_closed_by_peer(raw)
        assert read == []  # no frame of theirs was even read
        # The server still serves a peer with the token, and only that peer's call ran.
        calls = ChannelCalls(timeout_s=5, address_of=lambda shard, timeout: server.address)
        assert calls.gather([calls.submit(target, "pull", "friend")]) == ["friend"]
        assert target.log == [("pull", "friend")]
        calls.close()
    finally:
        server.close()


def test_only_channel_methods_can_be_called_and_a_missing_one_keeps_the_connection():
    target = Echo()
    server = ChannelServer(target)
    host, port, token = server.address
    try:
        with socket.create_connection((host, port), timeout=5) as raw:
            raw.sendall(token + b"s" * SESSION_BYTES)
            send_request(raw, 0, "stats")  # a channel method Echo lacks
            ok, error = receive_reply(raw)
            assert not ok and isinstance(error, AttributeError) and "stats" in str(error)
            send_request(raw, 1, "push", "still here")
            assert receive_reply(raw) == (True, "still here")
            # A method id past the table (no name can reach "secret" or "open_channel").
            raw.sendall(wire.HEAD.pack(wire.MAGIC, wire.REQUEST, len(wire.METHODS), 0, 0, 2, 2))
            assert_closed_by_peer(raw)
        assert target.secret_calls == 0 and server.target is target

        calls = ChannelCalls(timeout_s=5, address_of=lambda shard, timeout: server.address)
        for method in ("secret", "open_channel", "__init__", "__class__", "no_such"):
            with pytest.raises(ValueError, match=f"{method!r} cannot be called over a channel"):
                calls.submit(target, method)
        assert calls.gather([calls.submit(target, "pull", 1)]) == [1]
        calls.close()
    finally:
        server.close()


# ------------------------------------------------------------------ errors, timeouts, order


def test_a_targets_exception_is_raised_by_gather_and_later_calls_still_work():
    target = Echo()
    calls = ChannelCalls(timeout_s=5)
    try:
        ok = calls.submit(target, "pull", "before")
        bad = calls.submit(target, "lookup", ("raise", "ValueError", "bad ids: 3"))
        after = calls.submit(target, "push", "after")
        assert calls.gather([ok]) == ["before"]
        with pytest.raises(ValueError, match="bad ids: 3"):
            calls.gather([bad, after])
        assert calls.gather([after]) == ["after"]
        with pytest.raises(KeyError):
            calls.gather([calls.submit(target, "lookup", ("raise", "KeyError", "k"))])
        assert calls.gather([calls.submit(target, "pull", i) for i in range(3)]) == [0, 1, 2]

        # A real shard's error: a slot it does not hold.
        shard = ShardServer(SLOTS, CFG.admission)
        with pytest.raises(KeyError, match="no slot 'genre'"):
            calls.gather([calls.submit(shard, "pull", {"genre": np.arange(3)}, 0.0)])
        rows = calls.gather([calls.submit(shard, "pull", {NAMES[0]: np.arange(3)}, 0.0)])[0]
        assert rows[NAMES[0]].shape == (3, WIDTH)
    finally:
        calls.close()


@pytest.mark.timeout(60)
def test_a_call_not_answered_in_time_raises_shard_unavailable_naming_its_position():
    fast, slow = Echo(), Echo(sleep_s=1.5)
    calls = ChannelCalls(timeout_s=0.5)
    try:
        assert calls.gather([calls.submit(fast, "pull", 0), calls.submit(slow, "push", 0)]) \
            == [0, 0]  # connected
        handles = [calls.submit(fast, "pull", 1), calls.submit(slow, "pull", "late")]
        start = time.monotonic()
        with pytest.raises(ShardUnavailableError,
                           match=r"\[1\] of 2 did not answer within 0\.5 s"):
            calls.gather(handles)
        assert 0.4 < time.monotonic() - start < 1.4
        time.sleep(1.5)  # the late answer arrives; it is read as that call's, not the next
        assert calls.gather([calls.submit(slow, "push", "next")]) == ["next"]
    finally:
        calls.close()


def test_many_calls_before_one_gather_are_answered_in_order():
    targets = [Echo(), Echo()]
    calls = ChannelCalls(timeout_s=10)
    try:
        methods = ("pull", "push", "lookup")
        sent = [(k % 2, methods[k % 3], (k, np.full(k % 7, k, np.int64))) for k in range(300)]
        handles = [calls.submit(targets[t], method, arg) for t, method, arg in sent]
        results = calls.gather(handles)
        assert [r[0] for r in results] == list(range(300))
        for (_, _, (k, array)), (k2, got) in zip(sent, results):
            np.testing.assert_array_equal(got, array)
        for t, target in enumerate(targets):
            assert [(m, x[0]) for m, x in target.log] == [
                (method, arg[0]) for tt, method, arg in sent if tt == t]
        # Gathered out of order, each still gets its own reply.
        handles = [calls.submit(targets[k % 2], "push", k) for k in range(20)]
        assert calls.gather(handles[::-1]) == list(range(20))[::-1]
    finally:
        calls.close()


# ------------------------------------------------------------------ reconnects


class TrackedServer(ChannelServer):
    """A ChannelServer that keeps its connections, for a test to break them."""

    def __init__(self, target: Any) -> None:
        self.conns: list[socket.socket] = []
        super().__init__(target)

    def _serve(self, conn: socket.socket) -> None:
        self.conns.append(conn)
        super()._serve(conn)


@pytest.mark.timeout(60)
def test_a_broken_connection_is_reopened_and_unanswered_calls_are_sent_again_in_order():
    target = Echo()
    servers: list[TrackedServer] = []

    def address_of(shard: Any, timeout_s: float | None) -> tuple[str, int, bytes]:
        assert shard is target and timeout_s == 10
        servers.append(TrackedServer(shard))  # a fresh server each time, as a restarted shard
        return servers[-1].address

    calls = ChannelCalls(timeout_s=10, address_of=address_of)
    try:
        assert calls.gather([calls.submit(target, "pull", 0)]) == [0]
        target.gate.clear()
        target.entered.clear()
        in_flight = [calls.submit(target, "pull", k) for k in (1, 2, 3)]
        assert target.entered.wait(5)  # the server is running call 1, holding 2 and 3
        old = servers[0]
        old.close()
        old.conns[0].shutdown(socket.SHUT_RDWR)  # the shard's end of the connection breaks
        target.gate.set()  # call 1 finishes; its answer cannot be sent
        after = calls.submit(target, "push", 4)  # made after the break
        assert calls.gather([*in_flight, after]) == [1, 2, 3, 4]
        assert len(servers) == 2
        # Call 1 ran on the old connection, then every unanswered call on the new one, in order.
        assert target.log == [("pull", 0), ("pull", 1), ("pull", 1), ("pull", 2), ("pull", 3),
                              ("push", 4)]
        assert calls.gather([calls.submit(target, "push", 5)]) == [5]
        assert len(servers) == 2  # the new connection stays
    finally:
        calls.close()
        for server in servers:
            server.close()


@pytest.mark.timeout(60)
def test_a_call_resent_to_the_same_live_server_runs_once_and_gets_its_first_reply():
    target = Echo()
    server = TrackedServer(target)
    calls = ChannelCalls(timeout_s=10, address_of=lambda shard, timeout: server.address)
    try:
        assert calls.gather([calls.submit(target, "pull", 0)]) == [0]
        target.gate.clear()
        target.entered.clear()
        in_flight = [calls.submit(target, "pull", k) for k in (1, 2)]
        assert target.entered.wait(5)  # the server is running call 1, holding 2
        server.conns[0].shutdown(socket.SHUT_RDWR)  # the connection breaks, the shard lives
        after = calls.submit(target, "push", 3)  # made after the break
        target.gate.set()  # call 1 finishes; its reply cannot be sent on the old connection
        assert calls.gather([*in_flight, after]) == [1, 2, 3]
        assert len(server.conns) == 2  # one reconnect
        # Call 1 was resent, but answered from the first run's reply: every call ran once.
        assert target.log == [("pull", 0), ("pull", 1), ("pull", 2), ("push", 3)]
    finally:
        calls.close()
        server.close()


@pytest.mark.timeout(60)
def test_a_session_in_use_is_never_forgotten_however_many_others_come(monkeypatch):
    monkeypatch.setattr(channel, "MAX_SESSIONS", 2)
    target = Echo()
    server = TrackedServer(target)
    address_of = lambda shard, timeout: server.address
    trainer = ChannelCalls(timeout_s=10, address_of=address_of)
    others = [ChannelCalls(timeout_s=10, address_of=address_of) for _ in range(4)]
    try:
        assert trainer.gather([trainer.submit(target, "pull", 0)]) == [0]
        target.gate.clear()
        target.entered.clear()
        running = trainer.submit(target, "pull", 1)
        assert target.entered.wait(5)
        for other in others:  # short-lived clients come and go, past MAX_SESSIONS
            assert other.gather([other.submit(target, "push", "x")]) == ["x"]
            other.close()
        server.conns[0].shutdown(socket.SHUT_RDWR)  # then the trainer's connection breaks
        target.gate.set()
        assert trainer.gather([running]) == [1]
        assert [x for method, x in target.log if method == "pull"] == [0, 1]  # ran once
    finally:
        for calls in [trainer, *others]:
            calls.close()
        server.close()


class Counter:
    """A fake target whose ``push(k, sleep_s)`` records ``k`` and sleeps."""

    def __init__(self) -> None:
        self.log: list[int] = []

    def push(self, k: int, sleep_s: float = 0.0) -> int:
        self.log.append(k)
        time.sleep(sleep_s)
        return k


@pytest.mark.timeout(120)
def test_under_random_breaks_on_both_ends_every_call_runs_at_most_once_in_order():
    rng = random.Random(0)
    target = Counter()
    server = TrackedServer(target)
    calls = ChannelCalls(timeout_s=10, address_of=lambda shard, timeout: server.address)
    stop = threading.Event()

    def break_server_ends() -> None:
        pauses = random.Random(1)
        while not stop.wait(pauses.uniform(0.0005, 0.01)):
            for conn in server.conns[-2:]:
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    breaker = threading.Thread(target=break_server_ends, daemon=True)
    breaker.start()
    k, answered = 0, set()
    try:
        for _ in range(150):
            n = rng.randint(1, 8)
            tickets = [calls.submit(target, "push", k + i, rng.choice([0, 0, 0.002]))
                       for i in range(n)]
            if rng.random() < 0.2:
                calls.close()  # the client's end breaks too
            try:
                assert calls.gather(tickets) == list(range(k, k + n))
                answered.update(range(k, k + n))
            except ShardUnavailableError:
                pass  # broke MAX_BREAKS times in a row: these calls may or may not have run
            k += n
    finally:
        stop.set()
        breaker.join(5)
        calls.close()
        server.close()
    assert len(server.conns) > 20  # it did break, often
    assert target.log == sorted(set(target.log))  # none ran twice, none out of order
    assert len(answered) > k // 2 and answered <= set(target.log)  # an answer means it ran


def test_a_push_resent_after_the_connection_breaks_is_applied_once():
    shard, reference = ShardServer(SLOTS, CFG.admission), ShardServer(SLOTS, CFG.admission)
    fids = {n: np.unique(f) for n, f in movielens_fids(7).items()}
    grads = grads_of(fids, 3)
    for s in (shard, reference):
        s.pull(fids, 1.0)
    before = shard.stats()
    expected = reference.push(fids, grads, 2.0)
    calls = ChannelCalls(timeout_s=10)
    try:
        pushed = calls.submit(shard, "push", fids, grads, 2.0)
        deadline = time.monotonic() + 10
        while shard.stats() == before:  # the shard has applied the push ...
            assert time.monotonic() < deadline
            time.sleep(0.01)
        calls.close()  # ... and the connection breaks before its reply is read: resent
        assert calls.gather([pushed]) == [expected]
        assert shard.stats() == reference.stats()  # versions: applied once, not twice
        for name, rows in reference.lookup(fids).items():
            np.testing.assert_array_equal(shard.lookup(fids)[name], rows)
        assert calls.gather([calls.submit(shard, "lookup", fids)])[0].keys() == fids.keys()
    finally:
        calls.close()


def test_a_server_keeps_unacknowledged_replies_and_forgets_idle_sessions(monkeypatch):
    monkeypatch.setattr(channel, "MAX_SESSIONS", 2)
    target = Echo()
    server = ChannelServer(target)
    clients = [ChannelCalls(timeout_s=5, address_of=lambda shard, timeout: server.address)
               for _ in range(5)]

    def idle(n: int) -> None:  # wait until the server has seen n sessions' connections close
        deadline = time.monotonic() + 5
        while sum(s.connections == 0 for s in server._sessions.values()) < n:
            assert time.monotonic() < deadline
            time.sleep(0.01)

    try:
        for k in range(50):
            assert clients[0].gather([clients[0].submit(target, "push", k)]) == [k]
        (first,) = server._sessions.values()
        assert first.last == 49 and list(first.replies) == [49]  # 0..48 acknowledged
        tickets = [clients[0].submit(target, "push", k) for k in range(50, 60)]
        assert clients[0].gather(tickets) == list(range(50, 60))
        assert len(first.replies) <= 11  # the calls sent before any of their replies
        for client in clients[1:3]:
            assert client.gather([client.submit(target, "push", "x")]) == ["x"]
        assert len(server._sessions) == 3  # over MAX_SESSIONS: a session in use is kept
        clients[0].close()
        clients[1].close()
        idle(2)
        clients[3].gather([clients[3].submit(target, "push", "y")])
        # The two idle sessions went, the oldest first, to make room: 2 and 3 are in use.
        assert len(server._sessions) == 2 and first not in server._sessions.values()
        monkeypatch.setattr(channel, "SESSION_IDLE_S", 0.0)
        clients[2].close()
        idle(1)
        clients[4].gather([clients[4].submit(target, "push", "z")])
        assert [s.connections for s in server._sessions.values()] == [1, 1]  # 3 and 4
    finally:
        for client in clients:
            client.close()
        server.close()


def test_closing_the_client_resends_its_unanswered_calls_on_a_new_connection():
    shard = ShardServer(SLOTS, CFG.admission)  # default address_of: shard.open_channel()
    reference = ShardServer(SLOTS, CFG.admission)
    calls = ChannelCalls(timeout_s=10)
    fids = {n: np.unique(f) for n, f in movielens_fids(5).items()}
    try:
        assert calls.gather([calls.submit(shard, "stats")]) == [reference.stats()]
        first = calls.submit(shard, "pull", fids, 1.0)
        calls.close()  # the connection breaks with the pull unanswered
        second = calls.submit(shard, "lookup", fids)  # made after the break
        rows, looked = calls.gather([first, second])
        expected = reference.pull(fids, 1.0)
        for name in NAMES:
            np.testing.assert_array_equal(rows[name], expected[name])
            np.testing.assert_array_equal(looked[name], expected[name])
        assert calls.gather([calls.submit(shard, "stats")])[0][NAMES[0]]["rows"] == \
            fids[NAMES[0]].size
    finally:
        calls.close()


# ------------------------------------------------------------------ known defects


class CustomError(Exception):
    """An error type the wire format does not list."""


class RaisesCustomError(Echo):
    def lookup(self, x: Any) -> Any:
        self.log.append(("lookup", x))
        raise CustomError(f"{x}/b")


@pytest.mark.timeout(60)
def test_an_unlisted_error_arrives_as_a_runtime_error_and_does_not_shift_later_replies():
    target = RaisesCustomError()
    calls = ChannelCalls(timeout_s=1)
    try:
        with pytest.raises(RuntimeError, match="CustomError: x/b"):
            calls.gather([calls.submit(target, "lookup", "x")])
        assert calls.gather([calls.submit(target, "push", "next")]) == ["next"]
    finally:
        calls.close()


@pytest.mark.parametrize("connected", [True, False])
@pytest.mark.timeout(60)
def test_a_call_that_cannot_be_encoded_is_refused_and_does_not_poison_the_link(connected):
    target = Echo()
    calls = ChannelCalls(timeout_s=1)
    try:
        if connected:
            assert calls.gather([calls.submit(target, "push", 0)]) == [0]
        with pytest.raises(wire.WireError, match="function cannot be sent"):
            calls.submit(target, "push", lambda: 1)
        assert calls.gather([calls.submit(target, "push", "next")]) == ["next"]
        assert target.log[-1] == ("push", "next") and len(target.log) == 1 + connected
    finally:
        calls.close()


@pytest.mark.timeout(60)
def test_a_result_that_cannot_be_encoded_is_answered_with_an_error():
    class Unsendable(Echo):
        def push(self, x: Any, *rest: Any) -> Any:
            return object() if x == "odd" else x

    target = Unsendable()
    calls = ChannelCalls(timeout_s=5)
    try:
        with pytest.raises(RuntimeError, match="push: its result could not be sent"):
            calls.gather([calls.submit(target, "push", "odd")])
        assert calls.gather([calls.submit(target, "push", "next")]) == ["next"]
    finally:
        calls.close()


@pytest.mark.timeout(60)
def test_large_calls_in_flight_before_one_gather_do_not_deadlock():
    target = Echo()
    calls = ChannelCalls(timeout_s=1)
    big = np.ones(8_000_000, np.float32)  # 32 MB each way per call
    try:
        assert calls.gather([calls.submit(target, "push", 0)]) == [0]
        results = calls.gather([calls.submit(target, "push", big) for _ in range(2)])
        assert all(np.array_equal(r, big) for r in results)
    finally:
        calls.close()


def test_a_read_only_array_arrives_writable_in_fresh_memory():
    frozen = np.arange(5, dtype=np.int64)
    frozen.flags.writeable = False  # as arrays from Ray's object store come
    a, b = socket.socketpair()
    with a, b:
        send_request(a, 0, "lookup", frozen)
        frame = read_frame(b)
    (got,) = wire.decode(frame.body, frame.buffers)
    np.testing.assert_array_equal(got, frozen)
    assert got.flags.writeable and not np.shares_memory(got, frozen)
    rows = ShardServer(SLOTS, CFG.admission).pull({NAMES[0]: frozen}, 1.0)[NAMES[0]]
    assert rows.shape == (5, SLOTS[0].dim + 1)  # and a shard copies a read-only input


# ------------------------------------------------------------------ shard actors

# Ray starts its workers with subprocess (fork then exec at once), which JAX, imported by
# other test modules, warns about; nothing runs between the fork and the exec.
ray_fork = pytest.mark.filterwarnings("ignore:os.fork:RuntimeWarning")


@ray_fork
@pytest.mark.timeout(180)
def test_channels_to_shard_actors_match_in_process_shards_and_a_killed_one_fails_fast(
        ray_session):
    import ray

    shards = [ray.remote(ShardServer).options(num_cpus=0).remote(SLOTS, CFG.admission)
              for _ in range(2)]
    calls = ChannelCalls(timeout_s=30)
    client = ShardClient(shards, NAMES, calls=calls)
    reference = ShardClient([ShardServer(SLOTS, CFG.admission) for _ in range(2)], NAMES,
                            calls=DirectCalls())
    try:
        fids = movielens_fids(0)
        rows, expected = client.pull(fids, 1.0), reference.pull(fids, 1.0)
        for slot in NAMES:
            np.testing.assert_array_equal(rows[slot], expected[slot])
        grads = grads_of(fids, 1)
        assert client.push(fids, grads, 2.0) == reference.push(fids, grads, 2.0) > 0
        for slot, rows in client.lookup(fids).items():
            np.testing.assert_array_equal(rows, reference.lookup(fids)[slot])
        assert client.stats() == reference.stats()
        pids = calls.gather([calls.submit(s, "pid") for s in shards])
        assert os.getpid() not in pids and len(set(pids)) == 2  # served by the actors

        ray.kill(shards[1])
        # ray.kill returns before the actor's process is gone, and until then its channel
        # still answers (for some tens of ms); then the next call fails, well before the 30 s
        # timeout: the client learns from Ray that the shard is dead, it does not hang.
        start, answered = time.monotonic(), 0
        with pytest.raises(ShardUnavailableError, match=r"\[1\] of 2 are dead or unreachable"):
            while time.monotonic() - start < 10:
                client.pull(fids, 3.0)
                answered += 1
        assert time.monotonic() - start < 10, answered
        assert calls.gather([calls.submit(shards[0], "pid")]) == pids[:1]  # shard 0 is fine
    finally:
        calls.close()
        for shard in shards:
            ray.kill(shard)


@ray_fork
@pytest.mark.timeout(180)
def test_a_restarted_shard_actor_is_reconnected_and_answers_from_its_fresh_table(ray_session):
    import ray

    shard = ray.remote(ShardServer).options(num_cpus=0, max_restarts=-1,
                                            max_task_retries=-1).remote(SLOTS, CFG.admission)
    calls = ChannelCalls(timeout_s=60)
    client = ShardClient([shard], NAMES, calls=calls)
    fids = movielens_fids(3)
    try:
        fresh = client.pull(fids, 1.0)
        client.push(fids, grads_of(fids, 3), 2.0)
        trained = client.lookup(fids)
        assert not np.array_equal(trained[NAMES[0]], fresh[NAMES[0]])
        (old_pid,) = calls.gather([calls.submit(shard, "pid")])

        os.kill(old_pid, signal.SIGKILL)  # as a crash or an OOM kill would
        start = time.monotonic()
        after = client.pull(fids, 3.0)  # waits for the restart, then reconnects
        assert time.monotonic() - start < 60
        (new_pid,) = calls.gather([calls.submit(shard, "pid")])
        assert new_pid != old_pid
        expected = ShardServer(SLOTS, CFG.admission).pull(fids, 3.0)  # nothing restored
        for name in NAMES:
            np.testing.assert_array_equal(after[name], expected[name])
        stats = client.stats()
        for name in NAMES:
            assert stats[name]["rows"] == np.unique(fids[name]).size
    finally:
        calls.close()
        ray.kill(shard)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("body, message", [
    (b"\xc1", "not msgpack"),  # a byte msgpack never uses
    (b"\xa5abc", "not msgpack"),  # truncated
    (b"\xc7\x00\x09", "Ext is not a value"),  # an extension type the format does not have
    (b"\x05", "arguments must be a tuple"),
], ids=["invalid", "truncated", "unknown-type", "not-a-tuple"])
def test_a_request_the_shard_cannot_decode_is_answered_with_the_error(body, message) -> None:
    target = Echo()
    server = ChannelServer(target)
    host, port, token = server.address
    try:
        with socket.create_connection((host, port), timeout=5) as raw:
            raw.sendall(token + b"d" * SESSION_BYTES + wire.HEAD.pack(
                wire.MAGIC, wire.REQUEST, wire.METHOD_IDS["push"], 0, len(body), 0, 0) + body)
            ok, error = receive_reply(raw)
            assert not ok and isinstance(error, ValueError) and message in str(error)
            send_request(raw, 0, "push", "next")  # the same seq: the bad one did not run
            assert receive_reply(raw) == (True, "next")  # the connection lives
        assert target.log == [("push", "next")]
    finally:
        server.close()


@pytest.mark.timeout(30)
def test_a_channel_that_keeps_breaking_fails_its_calls_instead_of_looping() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    accepted = []

    def hang_up() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            accepted.append(1)
            conn.close()

    threading.Thread(target=hang_up, daemon=True).start()
    address = ("127.0.0.1", listener.getsockname()[1], b"t" * 16)
    calls = ChannelCalls(timeout_s=5, address_of=lambda shard, timeout: address)
    try:
        with pytest.raises(ShardUnavailableError, match=r"\[0\] of 1: the channel broke 4 "):
            calls.gather([calls.submit(object(), "pull", 1)])
        assert len(accepted) == 4
    finally:
        calls.close()
        listener.close()


@pytest.mark.timeout(30)
def test_connections_that_never_show_the_token_are_capped_and_do_not_block_others(
        monkeypatch) -> None:
    monkeypatch.setattr(channel, "MAX_HANDSHAKES", 2)
    target = Echo()
    server = ChannelServer(target)
    host, port, _ = server.address
    silent = [socket.create_connection((host, port), timeout=5) for _ in range(2)]
    try:
        time.sleep(0.2)  # both now wait to show a token
        extra = socket.create_connection((host, port), timeout=5)
        assert extra.recv(1) == b""  # refused at once: closed without reading anything
        extra.close()
        for s in silent:
            s.close()  # their handshakes end
        time.sleep(0.2)
        calls = ChannelCalls(timeout_s=5, address_of=lambda shard, timeout: server.address)
        assert calls.gather([calls.submit(target, "push", "served")]) == ["served"]
        calls.close()
    finally:
        server.close()


@pytest.mark.timeout(30)
def test_a_peer_trickling_its_token_is_closed_at_the_deadline(monkeypatch) -> None:
    """The token deadline is for the whole token, not for each read: a byte every 0.2 s
    would otherwise hold a handshake slot for ever."""
    monkeypatch.setattr(channel, "TOKEN_TIMEOUT_S", 1.0)
    server = ChannelServer(Echo())
    host, port, token = server.address
    try:
        with socket.create_connection((host, port), timeout=5) as raw:
            start, closed = time.monotonic(), False
            for byte in token:
                try:
                    raw.sendall(bytes([byte]))
                except OSError:
                    closed = True
                    break
                time.sleep(0.2)
            if not closed:
                assert_closed_by_peer(raw)
            assert time.monotonic() - start < 3.0
    finally:
        server.close()


@pytest.mark.timeout(30)
@pytest.mark.parametrize("head", [
    wire.HEAD.pack(wire.MAGIC, wire.REQUEST, 0, 60_000, 0, 0, 0),
    wire.HEAD.pack(wire.MAGIC, wire.REQUEST, 0, 0, (1 << 32) - 1, 0, 0),
    wire.HEAD.pack(wire.MAGIC, wire.REQUEST, 0, 1, 8, 0, 0) + struct.pack("<Q", 1 << 40),
    b"\x80\x05garbage, a pickle's opening" + bytes(wire.HEAD.size),
], ids=["many buffers", "huge body", "huge buffer", "not a header"])
def test_a_frame_declaring_too_much_is_refused_before_anything_is_allocated(head) -> None:
    target = Echo()
    server = ChannelServer(target)
    host, port, token = server.address
    try:
        with socket.create_connection((host, port), timeout=5) as raw:
            raw.sendall(token + b"h" * SESSION_BYTES + head)
            assert_closed_by_peer(raw)
        with pytest.raises(channel.FrameError):
            left, right = socket.socketpair()
            with left, right:
                left.sendall(head)
                channel.read_frame(right)
        calls = ChannelCalls(timeout_s=5, address_of=lambda shard, timeout: server.address)
        assert calls.gather([calls.submit(target, "push", "served")]) == ["served"]
        calls.close()
    finally:
        server.close()


class _FailingListener:
    """A listening socket whose first ``failures`` accepts fail as when a process is out of
    file descriptors."""

    def __init__(self, sock: socket.socket, failures: int) -> None:
        self.sock, self.failures = sock, failures

    def accept(self) -> tuple[socket.socket, Any]:
        if self.failures:
            self.failures -= 1
            raise OSError(24, "Too many open files")
        return self.sock.accept()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.sock, name)


@pytest.mark.timeout(30)
def test_the_accept_loop_outlives_failed_accepts(monkeypatch) -> None:
    real = socket.create_server
    monkeypatch.setattr(channel.socket, "create_server",
                        lambda *a, **k: _FailingListener(real(*a, **k), failures=3))
    target = Echo()
    server = ChannelServer(target)
    monkeypatch.undo()
    try:
        calls = ChannelCalls(timeout_s=10, address_of=lambda shard, timeout: server.address)
        assert calls.gather([calls.submit(target, "push", "served")]) == ["served"]
        calls.close()
        assert server.accept_errors == 3
    finally:
        server.close()


def test_maintenance_that_names_files_is_not_a_channel_method(tmp_path) -> None:
    calls = ChannelCalls(timeout_s=5, address_of=lambda shard, timeout: ("127.0.0.1", 1, b""))
    for method in ("snapshot", "restore"):
        assert method not in channel.CHANNEL_METHODS
        with pytest.raises(ValueError, match=f"'{method}' cannot be called over a channel"):
            calls.submit(object(), method, str(tmp_path))
    calls.close()


@pytest.mark.timeout(120)
def test_hostile_peers_do_not_stop_a_trainer_and_nothing_of_theirs_is_decoded(monkeypatch):
    """Against a shard while a trainer steps: peers trickling a token, sending garbage, a
    huge declared frame after a wrong token, and more connections than the handshake slots.
    Every step matches a shard no one attacked, and the server decodes the trainer's frames
    only."""
    monkeypatch.setattr(channel, "TOKEN_TIMEOUT_S", 1.0)
    shard, reference = ShardServer(SLOTS, CFG.admission), ShardServer(SLOTS, CFG.admission)
    host, port, token = shard.open_channel()
    decoded: list[str] = []
    real_decode = wire.decode

    def counting_decode(body: Any, buffers: Any) -> Any:
        decoded.append(threading.current_thread().name)
        return real_decode(body, buffers)

    monkeypatch.setattr(wire, "decode", counting_decode)
    stop = threading.Event()

    def trickle() -> None:
        with socket.create_connection((host, port), timeout=5) as raw:
            for byte in token[:-1]:  # all but the last byte, slowly
                if stop.wait(0.2):
                    return
                try:
                    raw.sendall(bytes([byte]))
                except OSError:
                    return

    def garbage() -> None:
        rng = random.Random(2)
        while not stop.is_set():
            try:
                with socket.create_connection((host, port), timeout=5) as raw:
                    raw.sendall(bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 600))))
            except OSError:
                pass
            stop.wait(0.01)

    def huge() -> None:
        wrong = bytes(b ^ 0xFF for b in token)
        while not stop.is_set():
            try:
                with socket.create_connection((host, port), timeout=5) as raw:
                    raw.sendall(wrong + b"h" * SESSION_BYTES + wire.HEAD.pack(
                        wire.MAGIC, wire.REQUEST, 0, 1, 8, 0, 0) + struct.pack("<Q", 1 << 40))
            except OSError:
                pass
            stop.wait(0.02)

    crowd: list[socket.socket] = []

    def many() -> None:
        while not stop.is_set() and len(crowd) < 3 * channel.MAX_HANDSHAKES:
            try:
                crowd.append(socket.create_connection((host, port), timeout=5))
            except OSError:
                pass

    peers = [threading.Thread(target=f, daemon=True) for f in (trickle, garbage, huge, many)]
    calls = ChannelCalls(timeout_s=30, address_of=lambda s, timeout: (host, port, token))
    client = ShardClient([shard], NAMES, calls=calls)
    expected_client = ShardClient([reference], NAMES, calls=DirectCalls())
    try:
        assert client.stats() == expected_client.stats()  # connected before the peers come
        for peer in peers:
            peer.start()
        for step in range(40):
            fids = movielens_fids(step, 100)
            rows, expected = client.pull(fids, float(step)), expected_client.pull(fids, step)
            for name in NAMES:
                np.testing.assert_array_equal(rows[name], expected[name])
            grads = grads_of(fids, step)
            assert client.push(fids, grads, step + 0.5) == expected_client.push(
                fids, grads, step + 0.5)
    finally:
        stop.set()
        for peer in peers:
            peer.join(10)
        for s in crowd:
            s.close()
        calls.close()
        shard._channel.close()
    assert shard.stats() == reference.stats()
    served = [name for name in decoded if name == "channel"]  # the server's threads
    assert len(served) == 81  # the trainer's stats, 40 pulls and 40 pushes: no more
