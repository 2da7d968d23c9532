import numpy as np
import pytest

from monolith_ray.config import (
    AdmissionConfig,
    InitializerConfig,
    OptimizerConfig,
    SlotConfig,
)
from monolith_ray.features import make_fids
from monolith_ray.ps import (
    DirectCalls,
    RayCalls,
    ShardClient,
    ShardServer,
    calls_for,
    shard_of,
)
from monolith_ray.ps.channel import ChannelCalls
from monolith_ray.ps.packed_slots import PackedSlots

ADMISSION = AdmissionConfig(sketch_width=1024, sketch_depth=2)
LR = 0.5
SGD = OptimizerConfig(kind="sgd", learning_rate=LR)
INIT = InitializerConfig(kind="normal", scale=0.1)
SLOTS = (
    SlotConfig(name="user", slot_id=1, dim=3, optimizer=SGD, initializer=INIT, expire_s=50.0),
    SlotConfig(name="item", slot_id=2, dim=3, optimizer=SGD, initializer=INIT),
)
NAMES = [s.name for s in SLOTS]


class Recorder:
    """A shard that records each method call it gets."""

    def __init__(self, shard: ShardServer, log: list) -> None:
        self.shard, self.log = shard, log

    def __getattr__(self, method):
        def call(*args):
            self.log.append((id(self), method, args))
            return getattr(self.shard, method)(*args)
        return call


def make_client(n_shards=3):
    shards = [ShardServer(SLOTS, ADMISSION) for _ in range(n_shards)]
    return ShardClient(shards, NAMES), shards


def batch_fids(seed=0, n=200):
    rng = np.random.default_rng(seed)
    return {"user": make_fids(1, rng.integers(0, 40, n)),
            "item": make_fids(2, rng.integers(0, 90, n))}


def test_pull_matches_a_single_table_in_input_order_with_duplicates():
    client, shards = make_client(3)
    reference = ShardServer(SLOTS, ADMISSION)
    fids = batch_fids()
    rows = client.pull(fids, now=1.0)
    expected = reference.pull(fids, now=1.0)
    for name in NAMES:
        assert rows[name].shape == (fids[name].size, 4) and rows[name].dtype == np.float32
        np.testing.assert_array_equal(rows[name], expected[name])
        owner = shard_of(np.unique(fids[name]), 3)
        for k, shard in enumerate(shards):
            mine = np.unique(fids[name])[owner == k]
            assert len(shard.tables[name]) == mine.size
            assert shard.tables[name].contains(mine).all()


def test_one_call_per_shard_carrying_every_slot():
    log = []
    client = ShardClient([Recorder(ShardServer(SLOTS, ADMISSION), log) for _ in range(3)], NAMES,
                         calls=DirectCalls())
    fids = batch_fids()
    client.pull(fids, now=1.0)
    client.push(fids, {n: np.ones((f.size, 4), np.float32) for n, f in fids.items()}, now=1.0)
    assert [m for _, m, _ in log] == ["pull"] * 3 + ["push"] * 3
    assert len({shard for shard, _, _ in log}) == 3
    for _, method, args in log:
        assert isinstance(args[0], PackedSlots) and set(args[0].names) == set(NAMES)
        for ids in args[0].unpack().values():
            assert np.unique(ids).size == ids.size  # deduplicated before the call


def test_pushed_gradient_changes_exactly_that_row_by_sgd():
    client, _ = make_client(2)
    fids = batch_fids()
    before = client.pull(fids, now=1.0)
    target = fids["item"][5]
    grad = np.array([[1.0, -2.0, 0.5, 3.0]], np.float32)
    assert client.push({"item": np.array([target])}, {"item": grad}, now=2.0) == 1
    after = client.lookup(fids)
    hit = fids["item"] == target
    np.testing.assert_allclose(after["item"][hit], before["item"][hit] - LR * grad, rtol=1e-6)
    np.testing.assert_array_equal(after["item"][~hit], before["item"][~hit])
    np.testing.assert_array_equal(after["user"], before["user"])


def test_duplicate_ids_have_their_gradients_summed():
    client, _ = make_client(2)
    a, b = make_fids(1, np.array([7, 8]))
    before = client.pull({"user": np.array([a, b])}, now=0.0)["user"]
    grads = np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 2, 0]], np.float32)
    assert client.push({"user": np.array([a, b, a])}, {"user": grads}, now=1.0) == 2
    after = client.lookup({"user": np.array([a, b])})["user"]
    np.testing.assert_allclose(after[0], before[0] - LR * (grads[0] + grads[2]), rtol=1e-6)
    np.testing.assert_allclose(after[1], before[1] - LR * grads[1], rtol=1e-6)


def test_read_only_inputs_are_accepted():
    client, _ = make_client(2)
    fids = batch_fids()
    grads = {n: np.full((f.size, 4), 0.1, np.float32) for n, f in fids.items()}
    for a in (*fids.values(), *grads.values()):
        a.flags.writeable = False
    client.pull(fids, now=0.0)
    assert client.push(fids, grads, now=0.0) > 0


def test_lookup_never_inserts_and_reads_zeros_for_unknown_ids():
    client, _ = make_client(2)
    rows = client.lookup(batch_fids())
    assert not any(rows[n].any() for n in NAMES)
    assert all(s["rows"] == 0 for s in client.stats().values())


def test_a_pull_issued_before_a_push_reads_the_rows_before_it():
    client, _ = make_client(2)
    fids = {"user": make_fids(1, np.array([1, 2])), "item": make_fids(2, np.array([3]))}
    first = client.pull(fids, now=0.0)
    pending = client.pull_async(fids, now=1.0)
    client.push(fids, {n: np.ones((f.size, 4), np.float32) for n, f in fids.items()}, now=1.0)
    np.testing.assert_array_equal(client.wait(pending)["user"], first["user"])
    np.testing.assert_allclose(client.pull(fids, now=2.0)["user"], first["user"] - LR, rtol=1e-6)


def test_push_pull_is_a_push_then_a_pull_in_one_call_per_shard():
    log = []
    client = ShardClient([Recorder(ShardServer(SLOTS, ADMISSION), log) for _ in range(2)], NAMES)
    separate, _ = make_client(2)
    fids, following = batch_fids(0), batch_fids(1)
    grads = {n: np.full((f.size, 4), 0.5, np.float32) for n, f in fids.items()}
    for c in (client, separate):
        c.pull(fids, now=0.0)
    del log[:]
    rows = client.wait(client.push_pull_async(fids, grads, 1.0, following, 2.0))
    assert [m for _, m, _ in log] == ["push_pull"] * 2
    separate.push(fids, grads, now=1.0)
    expected = separate.pull(following, now=2.0)
    for name in NAMES:
        np.testing.assert_array_equal(rows[name], expected[name])
        np.testing.assert_array_equal(client.lookup(fids)[name], separate.lookup(fids)[name])


def test_calls_are_all_issued_before_any_is_waited_for():
    events = []

    class Deferred:
        def submit(self, shard, method, *args):
            events.append("submit")
            return lambda: getattr(shard, method)(*args)

        def gather(self, handles):
            events.append("gather")
            return [h() for h in handles]

    shards = [ShardServer(SLOTS, ADMISSION) for _ in range(3)]
    client = ShardClient(shards, NAMES, calls=Deferred())
    reference = ShardServer(SLOTS, ADMISSION)
    fids = batch_fids()
    rows = client.pull(fids, now=0.0)
    assert events == ["submit"] * 3 + ["gather"]
    np.testing.assert_array_equal(rows["user"], reference.pull(fids, now=0.0)["user"])


def test_call_mechanism_is_chosen_from_the_shards():
    class Method:
        def remote(self, *args):
            raise AssertionError

    class Handle:
        pull = Method()

    assert isinstance(calls_for([ShardServer(SLOTS, ADMISSION)]), DirectCalls)
    assert isinstance(calls_for([Handle(), Handle()]), RayCalls)
    with pytest.raises(TypeError, match="mix"):
        calls_for([Handle(), ShardServer(SLOTS, ADMISSION)])
    # Channels are for actor handles only; objects in this process are called directly.
    assert isinstance(calls_for([Handle()], transport="channel", timeout_s=7), ChannelCalls)
    assert calls_for([Handle()], transport="channel", timeout_s=7).timeout_s == 7
    assert isinstance(calls_for([ShardServer(SLOTS, ADMISSION)], transport="channel"),
                      DirectCalls)
    with pytest.raises(ValueError, match="unknown transport"):
        calls_for([Handle()], transport="tcp")


def test_stats_evict_snapshot_and_restore_cover_every_shard(tmp_path):
    client, _ = make_client(2)
    old = batch_fids(0)
    client.pull(old, now=0.0)
    rows = client.lookup(old)
    client.snapshot(tmp_path)
    fresh, _ = make_client(2)
    fresh.restore(tmp_path)
    for name in NAMES:
        np.testing.assert_array_equal(fresh.lookup(old)[name], rows[name])
    # A restored table holds the same rows, version and counters; its bytes may differ (its
    # map is rebuilt at the size it needs, without the original's free rows).
    without_bytes = lambda stats: {slot: {k: v for k, v in s.items() if k != "bytes"}  # noqa: E731
                                   for slot, s in stats.items()}
    assert without_bytes(fresh.stats()) == without_bytes(client.stats())
    assert client.stats()["user"]["rows"] == np.unique(old["user"]).size
    client.pull({"user": make_fids(1, np.array([1000]))}, now=100.0)
    evicted = client.evict_expired(now=100.0)
    np.testing.assert_array_equal(np.sort(evicted["user"]), np.unique(old["user"]))
    assert evicted["item"].size == 0  # item rows never expire


def test_packed_arrays_round_trip_and_a_shard_answers_in_the_form_asked():
    ids = {"user": make_fids(1, np.array([3, 1, 2])), "item": np.empty(0, np.int64)}
    packed = PackedSlots.of(ids)
    assert packed.names == ("user", "item") and packed.counts == (3, 0)
    assert packed.data.shape == (3,)
    for name in ids:
        np.testing.assert_array_equal(packed.unpack()[name], ids[name])
    rows = {"user": np.arange(12, dtype=np.float32).reshape(3, 4),
            "item": np.empty((0, 4), np.float32)}
    assert {n: a.shape for n, a in PackedSlots.of(rows).unpack().items()} == {
        "user": (3, 4), "item": (0, 4)}
    assert PackedSlots.of({}).unpack() == {}
    with pytest.raises(ValueError, match="need 3 values"):
        packed._replace(data=packed.data[:2]).unpack()
    a, b = ShardServer(SLOTS, ADMISSION), ShardServer(SLOTS, ADMISSION)
    as_mapping, as_packed = a.pull(ids, now=0.0), b.pull(packed, now=0.0)
    assert isinstance(as_mapping, dict) and isinstance(as_packed, PackedSlots)
    for name in ids:
        np.testing.assert_array_equal(as_packed.unpack()[name], as_mapping[name])


def test_distinct_sorted_fids_route_without_an_inverse_to_the_same_rows():
    client, _ = make_client(3)
    reference, _ = make_client(3)
    fids = {n: np.unique(f) for n, f in batch_fids().items()}
    routes = client.route(fids)
    assert routes.inverse == (None, None)
    shuffled = {n: f[::-1].copy() for n, f in fids.items()}
    assert all(i is not None for i in reference.route(shuffled).inverse)
    rows, expected = client.pull(routes, now=0.0), reference.pull(shuffled, now=0.0)
    for name in NAMES:
        np.testing.assert_array_equal(rows[name][::-1], expected[name])


def test_routes_stand_in_for_the_fids_in_pulls_and_pushes():
    client, _ = make_client(2)
    reference, _ = make_client(2)
    fids = batch_fids()  # with duplicates
    grads = {n: np.full((f.size, 4), 0.25, np.float32) for n, f in fids.items()}
    routes = client.route(fids)
    routed = []
    client.route = lambda f: routed.append(f) or ShardClient.route(client, f)
    for name, rows in client.pull(routes, now=0.0).items():
        np.testing.assert_array_equal(rows, reference.pull(fids, now=0.0)[name])
    assert client.push(routes, grads, now=1.0) == reference.push(fids, grads, now=1.0)
    assert routed == []  # routed once, by the caller
    for name in NAMES:
        np.testing.assert_array_equal(client.lookup(fids)[name], reference.lookup(fids)[name])
    with pytest.raises(ValueError, match="routes for 2 shards"):
        make_client(3)[0].pull(routes, now=0.0)


def test_bad_requests_name_the_problem():
    client, _ = make_client(2)
    with pytest.raises(KeyError, match="genre"):
        client.pull({"genre": np.arange(3, dtype=np.int64)}, now=0.0)
    with pytest.raises(TypeError, match="user"):
        client.pull({"user": np.ones(3)}, now=0.0)
    with pytest.raises(ValueError, match="item"):
        client.push({"item": np.arange(3, dtype=np.int64)},
                    {"item": np.ones((2, 4), np.float32)}, now=0.0)


# Ray starts its workers with subprocess (fork then exec at once), which JAX, imported by
# other test modules, warns about; nothing runs between the fork and the exec.
@pytest.mark.filterwarnings("ignore:os.fork:RuntimeWarning")
def test_ray_actor_shards(ray_session):
    import ray

    shards = [ray.remote(ShardServer).remote(SLOTS, ADMISSION) for _ in range(2)]
    client = ShardClient(shards, NAMES)
    assert isinstance(client.calls, RayCalls)
    fids = batch_fids()
    rows = client.pull(fids, now=1.0)
    reference = ShardServer(SLOTS, ADMISSION).pull(fids, 1.0)
    np.testing.assert_array_equal(rows["item"], reference["item"])
    grads = {n: np.ones((f.size, 4), np.float32) for n, f in fids.items()}
    assert client.push(fids, grads, now=2.0) == sum(np.unique(f).size for f in fids.values())
    after = client.lookup(fids)
    counts = np.unique(fids["user"], return_inverse=True, return_counts=True)
    np.testing.assert_allclose(after["user"], rows["user"] - LR * counts[2][counts[1]][:, None],
                               rtol=1e-5)
