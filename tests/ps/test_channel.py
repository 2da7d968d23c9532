"""Channels (``monolith_ray.ps.channel``): the same results as direct calls, CURVE with
registered keys only, ordering, errors, timeouts, reconnects and resends that run once, in
process over loopback (breaks made by a TCP relay the test cuts), then against shard actors."""

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
import zmq
from zmq.utils.monitor import recv_monitor_message

from monolith_ray.config import load_config
from monolith_ray.features import make_fids
from monolith_ray.ps import channel, wire
from monolith_ray.ps.channel import ChannelCalls, ChannelServer
from monolith_ray.ps.client import (
    DirectCalls,
    ShardClient,
    ShardUnavailableError,
)
from monolith_ray.ps.shard import Packed, ShardServer

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

    def open_channel(self, client_key: bytes) -> tuple[str, int, bytes]:
        if self.server is None:
            self.server = ChannelServer(self)
        return self.server.register(client_key)

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


class Peer:
    """A raw DEALER to ``server`` with its own CURVE key pair, registered unless told not to
    (``curve=False``: no CURVE at all); sends hand-made messages, reads replies."""

    def __init__(self, server: ChannelServer, register: bool = True, curve: bool = True
                 ) -> None:
        public, secret = zmq.curve_keypair()
        host, port, server_key = server.register(public) if register else server.address
        self.sock = zmq.Context.instance().socket(zmq.DEALER)
        self.sock.linger = 0
        self.sock.rcvtimeo = 5000
        if curve:
            self.sock.curve_serverkey, self.sock.curve_publickey = server_key, public
            self.sock.curve_secretkey = secret
        self.events = self.sock.get_monitor_socket()
        self.sock.connect(f"tcp://{host}:{port}")

    def request(self, seq: int, method: str, *args: Any) -> None:
        self.sock.send_multipart(wire.encode(wire.REQUEST, wire.METHOD_IDS[method], seq, seq,
                                             args))

    def reply(self) -> tuple[bool, Any]:
        """The next reply -> (True, result) or (False, the error it carries)."""
        head_part, body, *buffers = self.sock.recv_multipart()
        head = wire.parse_head(head_part)
        value = wire.decode(body, buffers)
        return (True, value) if head.kind == wire.RESULT else (False, wire.error_of(value))

    def wait_for(self, event: int, timeout_s: float = 10.0) -> bool:
        """Whether the monitor reports ``event`` within ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            if self.events.poll(int(left * 1000)) and \
                    recv_monitor_message(self.events)["event"] == event:
                return True
        return False

    def close(self) -> None:
        self.sock.disable_monitor()
        self.events.close()
        self.sock.close()


class Relay:
    """A TCP relay to ``port`` on loopback whose connections a test can cut, as a network
    break would: ``cut()`` shuts every open one down; ``accepted`` counts connections."""

    def __init__(self, port: int) -> None:
        self.upstream = port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.accepted = 0
        self.open: list[socket.socket] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                down, _ = self.listener.accept()
                up = socket.create_connection(("127.0.0.1", self.upstream))
            except OSError:
                return
            with self.lock:
                self.accepted += 1
                self.open += [down, up]
            for a, b in ((down, up), (up, down)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(1 << 16):
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self) -> None:
        with self.lock:
            conns, self.open = self.open, []
        for s in conns:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def address_of(self, server: ChannelServer) -> Any:
        """An ``address_of`` that registers with ``server`` and connects through the relay."""
        return lambda shard, key, timeout: ("127.0.0.1", self.port, server.register(key)[2])

    def close(self) -> None:
        self.listener.close()
        self.cut()


def served(server: ChannelServer) -> Any:
    """An ``address_of`` that registers with ``server`` directly."""
    return lambda shard, key, timeout: server.register(key)


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


@pytest.fixture
def decoded(monkeypatch) -> list[str]:
    """The names of the threads that decode a message body, one entry per decode."""
    names: list[str] = []
    real_decode = wire.decode

    def counting_decode(body: Any, buffers: Any) -> Any:
        names.append(threading.current_thread().name)
        return real_decode(body, buffers)

    monkeypatch.setattr(wire, "decode", counting_decode)
    return names


@pytest.mark.timeout(60)
def test_only_registered_client_keys_get_through_and_nothing_else_is_decoded(decoded):
    target = Echo()
    server = ChannelServer(target)
    strangers = [Peer(server, register=False), Peer(server, register=False, curve=False)]
    try:
        for peer in strangers:
            peer.request(0, "push", "from a stranger")
        assert strangers[0].wait_for(zmq.EVENT_HANDSHAKE_FAILED_AUTH)  # refused by ZAP
        assert strangers[1].wait_for(zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL)  # not CURVE
        # A registered peer is served on the same socket meanwhile, and only its call ran.
        friend = Peer(server)
        friend.request(0, "push", "friend")
        assert friend.reply() == (True, "friend")
        friend.close()
        assert target.log == [("push", "friend")]
        assert decoded.count("channel") == 1  # the friend's request, on the server's side
    finally:
        for peer in strangers:
            peer.close()
        server.close()


@pytest.mark.timeout(30)
def test_a_client_key_must_be_a_curve_public_key():
    server = ChannelServer(Echo())
    try:
        for key in (b"", b" " * 40, zmq.curve_keypair()[0][:39], "not bytes"):
            with pytest.raises(ValueError):
                server.register(key)
    finally:
        server.close()


@pytest.mark.timeout(30)
def test_only_channel_methods_can_be_called_and_a_missing_one_keeps_the_connection():
    target = Echo()
    server = ChannelServer(target)
    peer = Peer(server)
    try:
        peer.request(0, "stats")  # a channel method Echo lacks
        ok, error = peer.reply()
        assert not ok and isinstance(error, AttributeError) and "stats" in str(error)
        peer.request(1, "push", "still here")
        assert peer.reply() == (True, "still here")
        # A method id past the table (no name can reach "secret" or "open_channel"): dropped.
        peer.sock.send_multipart([wire.HEAD.pack(wire.MAGIC, wire.REQUEST, len(wire.METHODS),
                                                 0, 0, 2, 2), b""])
        peer.request(2, "push", "and here")
        assert peer.reply() == (True, "and here")
        assert target.secret_calls == 0 and server.dropped == 1

        calls = ChannelCalls(timeout_s=5, address_of=served(server))
        for method in ("secret", "open_channel", "__init__", "__class__", "no_such"):
            with pytest.raises(ValueError, match=f"{method!r} cannot be called over a channel"):
                calls.submit(target, method)
        assert calls.gather([calls.submit(target, "pull", 1)]) == [1]
        calls.close()
    finally:
        peer.close()
        server.close()


@pytest.mark.timeout(30)
@pytest.mark.parametrize("parts, message", [
    ([b"\xc1"], "not msgpack"),  # a byte msgpack never uses
    ([b"\xa5abc"], "not msgpack"),  # truncated
    ([b"\xc7\x00\x09"], "Ext is not a value"),  # an extension type the format does not have
    ([b"\x05"], "arguments must be a tuple"),
    ([b"\x90", b"extra"], "frames do not match its header"),
], ids=["invalid", "truncated", "unknown-type", "not-a-tuple", "extra-frame"])
def test_a_request_the_shard_cannot_decode_is_answered_with_the_error(parts, message) -> None:
    target = Echo()
    server = ChannelServer(target)
    peer = Peer(server)
    try:
        peer.sock.send_multipart([wire.HEAD.pack(wire.MAGIC, wire.REQUEST,
                                                 wire.METHOD_IDS["push"], 0, len(parts[0]), 0,
                                                 0), *parts])
        ok, error = peer.reply()
        assert not ok and isinstance(error, ValueError) and message in str(error)
        peer.request(0, "push", "next")  # the same seq: the bad one did not run
        assert peer.reply() == (True, "next")  # the connection lives
        assert target.log == [("push", "next")]
    finally:
        peer.close()
        server.close()


@pytest.mark.timeout(30)
def test_a_frame_larger_than_the_cap_drops_the_connection_unread(monkeypatch, decoded):
    monkeypatch.setattr(wire, "MAX_MESSAGE_BYTES", 1 << 20)  # ZMQ_MAXMSGSIZE of new sockets
    target = Echo()
    server = ChannelServer(target)
    peer = Peer(server)
    try:
        peer.request(0, "push", "small")
        assert peer.reply() == (True, "small")
        peer.request(1, "push", np.zeros(1 << 19, np.float32))  # a 2 MB buffer frame
        assert peer.wait_for(zmq.EVENT_DISCONNECTED)
        assert target.log == [("push", "small")] and decoded.count("channel") == 1
    finally:
        peer.close()
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


@pytest.mark.timeout(60)
def test_a_broken_connection_is_reopened_and_unanswered_calls_are_sent_again_in_order():
    target = Echo()
    servers: list[ChannelServer] = []

    def address_of(shard: Any, key: bytes, timeout_s: float | None) -> tuple[str, int, bytes]:
        assert shard is target and timeout_s == 10
        servers.append(ChannelServer(shard))  # a fresh server each time, as a restarted shard
        return servers[-1].register(key)

    calls = ChannelCalls(timeout_s=10, address_of=address_of)
    try:
        assert calls.gather([calls.submit(target, "pull", 0)]) == [0]
        target.gate.clear()
        target.entered.clear()
        in_flight = [calls.submit(target, "pull", k) for k in (1, 2, 3)]
        assert target.entered.wait(5)  # the server is running call 1, holding 2 and 3
        closing = threading.Thread(target=servers[0].close)  # waits for call 1 to end
        closing.start()
        servers[0]._loop_thread.join(10)  # the old server's socket is closed: call 1's reply
        after = calls.submit(target, "push", 4)  # cannot reach the client
        target.gate.set()
        closing.join(10)
        assert calls.gather([*in_flight, after]) == [1, 2, 3, 4]
        # Call 1 ran on the old server, then every unanswered call on the new one, in order.
        assert target.log == [("pull", 0), ("pull", 1), ("pull", 1), ("pull", 2), ("pull", 3),
                              ("push", 4)]
        assert calls.gather([calls.submit(target, "push", 5)]) == [5]
        assert len(servers) == 2  # the new connection stays
    finally:
        calls.close()
        target.gate.set()
        for server in servers:
            server.close()


@pytest.mark.timeout(60)
def test_a_call_resent_to_the_same_live_server_runs_once_and_gets_its_first_reply():
    target = Echo()
    server = ChannelServer(target)
    relay = Relay(server.port)
    calls = ChannelCalls(timeout_s=10, address_of=relay.address_of(server))
    try:
        assert calls.gather([calls.submit(target, "pull", 0)]) == [0]
        target.gate.clear()
        target.entered.clear()
        in_flight = [calls.submit(target, "pull", k) for k in (1, 2)]
        assert target.entered.wait(5)  # the server is running call 1, holding 2
        relay.cut()  # the connection breaks, the shard lives
        after = calls.submit(target, "push", 3)  # made after the break
        target.gate.set()  # call 1 finishes; its reply cannot be sent on the old connection
        assert calls.gather([*in_flight, after]) == [1, 2, 3]
        assert relay.accepted == 2  # one reconnect
        # Call 1 was resent, but answered from the first run's reply: every call ran once.
        assert target.log == [("pull", 0), ("pull", 1), ("pull", 2), ("push", 3)]
    finally:
        calls.close()
        relay.close()
        server.close()


@pytest.mark.timeout(60)
def test_a_session_with_a_call_running_is_never_forgotten_however_many_others_come(
        monkeypatch):
    monkeypatch.setattr(channel, "MAX_SESSIONS", 2)
    target = Echo()
    server = ChannelServer(target)
    relay = Relay(server.port)
    trainer = ChannelCalls(timeout_s=10, address_of=relay.address_of(server))
    others = [ChannelCalls(timeout_s=10, address_of=served(server)) for _ in range(4)]
    try:
        assert trainer.gather([trainer.submit(target, "pull", 0)]) == [0]
        target.gate.clear()
        target.entered.clear()
        running = trainer.submit(target, "pull", 1)
        assert target.entered.wait(5)
        for other in others:  # short-lived clients come and go, past MAX_SESSIONS
            assert other.gather([other.submit(target, "push", "x")]) == ["x"]
            other.close()
        assert len(server._sessions) == 2  # bounded: the trainer's and the latest
        relay.cut()  # then the trainer's connection breaks
        target.gate.set()
        assert trainer.gather([running]) == [1]
        assert [x for method, x in target.log if method == "pull"] == [0, 1]  # ran once
    finally:
        for calls in [trainer, *others]:
            calls.close()
        relay.close()
        server.close()


@pytest.mark.timeout(60)
def test_a_client_whose_idle_session_was_forgotten_registers_again_and_is_served(
        monkeypatch):
    monkeypatch.setattr(channel, "MAX_SESSIONS", 1)
    target = Echo()
    server = ChannelServer(target)
    first, second = (ChannelCalls(timeout_s=10, address_of=served(server)) for _ in range(2))
    try:
        assert first.gather([first.submit(target, "push", 1)]) == [1]
        assert second.gather([second.submit(target, "push", 2)]) == [2]  # forgets first's
        assert list(server._sessions) == [second.public_key]
        # first's connection is still up, but its session is gone: refused unrun, then
        # registered again and resent.
        assert first.gather([first.submit(target, "push", 3)]) == [3]
        assert target.log == [("push", 1), ("push", 2), ("push", 3)]
    finally:
        first.close()
        second.close()
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
    server = ChannelServer(target)
    relay = Relay(server.port)
    calls = ChannelCalls(timeout_s=10, address_of=relay.address_of(server))
    stop = threading.Event()

    def break_connections() -> None:
        pauses = random.Random(1)
        while not stop.wait(pauses.uniform(0.002, 0.02)):  # a CURVE handshake takes ~1 ms
            relay.cut()

    breaker = threading.Thread(target=break_connections, daemon=True)
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
        relay.close()
        server.close()
    assert relay.accepted > 20  # it did break, often
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
        shard.close_channel()


def test_a_server_keeps_only_unacknowledged_replies():
    target = Echo()
    server = ChannelServer(target)
    calls = ChannelCalls(timeout_s=5, address_of=served(server))
    try:
        for k in range(50):
            assert calls.gather([calls.submit(target, "push", k)]) == [k]
        (session,) = server._sessions.values()
        assert session.last == 49 and list(session.replies) == [49]  # 0..48 acknowledged
        tickets = [calls.submit(target, "push", k) for k in range(50, 60)]
        assert calls.gather(tickets) == list(range(50, 60))
        assert len(session.replies) <= 11  # the calls sent before any of their replies
    finally:
        calls.close()
        server.close()


def test_closing_the_client_resends_its_unanswered_calls_on_a_new_connection():
    shard = ShardServer(SLOTS, CFG.admission)  # default address_of: shard.open_channel(key)
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
        shard.close_channel()


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
    target = Echo()
    calls = ChannelCalls(timeout_s=5)
    try:
        (back,) = calls.gather([calls.submit(target, "push", frozen)])
    finally:
        calls.close()
        target.server.close()
    ((_, got),) = target.log
    for array in (got, back):
        np.testing.assert_array_equal(array, frozen)
        assert array.flags.writeable and not np.shares_memory(array, frozen)
    rows = ShardServer(SLOTS, CFG.admission).pull({NAMES[0]: frozen}, 1.0)[NAMES[0]]
    assert rows.shape == (5, SLOTS[0].dim + 1)  # and a shard copies a read-only input


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
    address = ("127.0.0.1", listener.getsockname()[1], zmq.curve_keypair()[0])
    calls = ChannelCalls(timeout_s=5, address_of=lambda shard, key, timeout: address)
    try:
        with pytest.raises(ShardUnavailableError, match=r"\[0\] of 1: the channel broke 4 "):
            calls.gather([calls.submit(object(), "pull", 1)])
        assert len(accepted) >= 4
    finally:
        calls.close()
        listener.close()


def test_maintenance_that_names_files_is_not_a_channel_method(tmp_path) -> None:
    calls = ChannelCalls(timeout_s=5, address_of=lambda shard, key, timeout: ("127.0.0.1", 1,
                                                                              b""))
    for method in ("snapshot", "restore", "close_channel", "open_channel"):
        assert method not in channel.CHANNEL_METHODS
        with pytest.raises(ValueError, match=f"'{method}' cannot be called over a channel"):
            calls.submit(object(), method, str(tmp_path))
    calls.close()


# A ZMTP 3.0 greeting asking for CURVE, as a peer speaking the protocol opens.
GREETING = b"\xff" + bytes(8) + b"\x7f\x03\x00" + b"CURVE".ljust(20, b"\x00") + bytes(32)


def closed_by_peer(sock: socket.socket) -> bool:
    """Whether the peer closes ``sock`` within its timeout (a read gives EOF or a reset)."""
    try:
        while sock.recv(1 << 16):
            pass
        return True
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


@pytest.mark.timeout(120)
def test_hostile_peers_do_not_stop_a_trainer_and_nothing_of_theirs_is_decoded(monkeypatch,
                                                                              decoded):
    """Against a shard while a trainer steps: a peer trickling its greeting a byte at a time,
    peers sending garbage, a huge declared frame in the handshake, CURVE peers with keys the
    shard never registered, a peer without CURVE, and many idle connections. Every step
    matches a shard no one attacked, the server decodes the trainer's messages only, and the
    trickler and the huge frame are dropped by the server."""
    monkeypatch.setattr(channel, "HANDSHAKE_S", 1.0)
    shard, reference = ShardServer(SLOTS, CFG.admission), ShardServer(SLOTS, CFG.admission)
    calls = ChannelCalls(timeout_s=30)  # registers through shard.open_channel(key)
    client = ShardClient([shard], NAMES, calls=calls)
    expected_client = ShardClient([reference], NAMES, calls=DirectCalls())
    assert client.stats() == expected_client.stats()  # connected before the peers come
    server = shard._channel
    host, port = server.host, server.port
    stop = threading.Event()
    dropped: dict[str, bool] = {}

    def trickle() -> None:
        with socket.create_connection((host, port), timeout=5) as raw:
            for byte in GREETING:
                if stop.wait(0.2):
                    break
                try:
                    raw.sendall(bytes([byte]))
                except OSError:
                    dropped["trickle"] = True
                    return
            dropped["trickle"] = closed_by_peer(raw)

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
        with socket.create_connection((host, port), timeout=5) as raw:
            raw.sendall(GREETING + b"\x06" + struct.pack(">Q", 1 << 40))
            dropped["huge"] = closed_by_peer(raw)

    def strangers() -> None:
        peers = [Peer(server, register=False), Peer(server, register=False, curve=False)]
        seq = 0
        while not stop.wait(0.02):
            for peer in peers:
                peer.request(seq, "push", {NAMES[0]: np.arange(3)}, {NAMES[0]: np.ones(
                    (3, WIDTH), np.float32)}, 0.0)
            seq += 1
        for peer in peers:
            peer.close()

    peers = [threading.Thread(target=f, daemon=True)
             for f in (trickle, garbage, huge, strangers)]
    crowd = [socket.create_connection((host, port), timeout=5) for _ in range(200)]  # idle
    try:
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
        shard.close_channel()
    assert shard.stats() == reference.stats()
    assert dropped == {"trickle": True, "huge": True}
    assert decoded.count("channel") == 81  # the trainer's stats, 40 pulls and 40 pushes


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


