"""The whole real-time loop on one machine: what ``make demo`` and ``monolith-ray demo`` run.

One process starts the embedded Kafka broker and a local Ray (or joins ``--address``), then:

1. training: ``OnlineTraining`` (shard actors, dense server, trainer actors on the Kafka
   ``examples`` stream), from ``monolith_ray.train.online``;
2. serving: the ``ParameterSync`` actor and the recommender on Ray Serve, HTTP on
   ``serve.host:serve.port`` (127.0.0.1:8000), with the simulator's items as candidate pool;
3. joining: ``joiner.n_joiners`` joiner actors turning ``features`` + ``actions`` into
   ``examples``;
4. users: :class:`SimulatedUsers`, a thread calling ``/recommend`` for random users of a
   ``UserSimulator`` and ``/feedback`` for the items they click.

So every click closes the loop: serve -> feedback -> join -> train -> sync -> serve. Quality is
measured prequentially on what users were actually shown: the rolling AUC of served scores
against the simulated clicks on exploration traffic (random candidates), and the
click-through of the ranked top-k against that of random items, over the last ``window``
impressions of each. A live table shows them with examples joined and read by training,
table sizes, sync versions and serving QPS and latency, until Ctrl-C or ``duration_s``; then
everything is shut down, a summary printed and written (``summary.json``), and
``demo.png`` plots rolling AUC and click-through over time, both under ``data.output_dir``.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import requests

from monolith_ray.config import Config
from monolith_ray.model.metrics import auc
from monolith_ray.stream.producers import SatiatedUsers, UserSimulator

DEMO_CONFIG = Path(__file__).parent / "defaults" / "demo.yaml"
APP_NAME = "monolith_ray"
logger = logging.getLogger(__name__)


class SimulatedUsers(threading.Thread):
    """Users of ``sim`` asking ``url`` for ``k`` recommendations, ``rate_per_s`` requests a
    second, clicking what :meth:`UserSimulator.respond` says and reporting each click to
    ``/feedback`` ``click_delay_s`` later in event time.

    A share ``explore`` of requests send ``k`` random candidates (an exploration slot, all
    shown): their impressions are an unbiased sample, so the AUC of served scores against
    clicks is measured on them, and their click-through is the no-model baseline. The other
    requests rank the whole pool; ``ctr`` is their click-through. A request answered with a
    5xx or a lost connection is sent once more (``retried``; a replica killed mid-request
    answers 500); ``failed`` counts those that failed twice or got a 4xx."""

    def __init__(self, url: str, sim: UserSimulator, rate_per_s: float = 20.0, k: int = 5,
                 click_delay_s: int = 1, window: int = 2000, explore: float = 0.2,
                 seed: int = 0, requests_limit: int | None = None,
                 keep_log: bool = False, sim_origin: float | None = None,
                 api_key: str = "") -> None:
        super().__init__(name="simulated-users", daemon=True)
        self.url, self.sim, self.k = url, sim, k
        self.headers = auth_headers(api_key)  # sent with every call (serve.api_keys)
        self.rate_per_s, self.click_delay_s, self.explore = rate_per_s, click_delay_s, explore
        # Users tire of categories shown to them when the simulator has satiation.
        self.satiated = SatiatedUsers(sim) if np.any(sim.satiation_lambda) else None
        self.requests_limit = requests_limit
        # With ``keep_log``, every answered request: (wall s, user, clicks per item (k,),
        # each item's propensity, policy, arm, each item's inclusion or None, the items shown
        # (k,), the simulator's time s, each item's score (k,)); a benchmark's horizon,
        # bounded by ``requests_limit``.
        self.log: list[tuple[Any, ...]] | None = [] if keep_log else None
        self.done = threading.Event()  # set once ``requests_limit`` requests were sent
        # The simulator's clock (its users' drift): the wall clock, or ``sim_origin`` plus the
        # seconds since this thread started, so runs at different hours see the same users.
        self.sim_origin, self._sim_started = sim_origin, time.time()
        self.stop_event = threading.Event()
        self._rng = np.random.default_rng(seed)
        self._lock = threading.Lock()
        # (score, clicked) per impression, explored and ranked apart; (wall s, latency ms,
        # ok) per request.
        self.explored: collections.deque[tuple[float, bool]] = collections.deque(maxlen=window)
        self.ranked: collections.deque[tuple[float, bool]] = collections.deque(maxlen=window)
        self.requests: collections.deque[tuple[float, float, bool]] = \
            collections.deque(maxlen=10_000)
        self.totals = {"requests": 0, "failed": 0, "retried": 0, "impressions": 0,
                       "clicks": 0}
        self.errors: collections.deque[tuple[float, str]] = collections.deque(maxlen=20)
        self.version: dict[str, int] = {}

    def run(self) -> None:
        session = requests.Session()
        session.headers.update(self.headers)
        period = 1.0 / self.rate_per_s
        due = time.monotonic()
        self._sim_started = time.time()
        sent = 0
        while not self.stop_event.is_set():
            if self.requests_limit is not None and sent >= self.requests_limit:
                self.done.set()
                return
            due += period
            self._one(session)
            sent += 1
            self.stop_event.wait(max(0.0, due - time.monotonic()))

    def _one(self, session: requests.Session) -> None:
        user = int(self._rng.integers(self.sim.n_users))
        body: dict[str, Any] = {"user": {"id": user}, "k": self.k}
        explore = bool(self._rng.random() < self.explore)
        if explore:
            body["candidates"] = self._rng.choice(self.sim.n_items, self.k,
                                                  replace=False).tolist()
        start = time.perf_counter()
        for attempt in range(2):  # one retry after a 5xx or a lost connection, as a load
            try:                  # balancer in front of the replicas would do
                # the user as the session key: with serve.user_affinity, one replica a user
                r = session.post(self.url + "/recommend", json=body, timeout=10,
                                 headers={"x-session-id": str(user)})
                ok = r.status_code == 200
                error = "" if ok else f"HTTP {r.status_code}: {r.text[:200]}"
                if r.status_code < 500:
                    break
            except requests.RequestException as err:
                ok, error = False, f"{type(err).__name__}: {err}"
            if attempt == 0:
                with self._lock:
                    self.totals["retried"] += 1
                    self.errors.append((time.time(), "retried after " + error))
        latency = (time.perf_counter() - start) * 1e3
        now = time.time()
        if not ok:
            with self._lock:
                self.requests.append((now, latency, ok))
                self.totals["requests"] += 1
                self.totals["failed"] += 1
                self.errors.append((now, error))
            return
        answer = r.json()
        items = np.array([i["item_id"] for i in answer["items"]], dtype=np.int64)
        tokens = {i["item_id"]: i["token"] for i in answer["items"]}
        scores = [i["score"] for i in answer["items"]]
        at = int(now if self.sim_origin is None else self.sim_origin + now - self._sim_started)
        if self.satiated is not None:
            clicked = self.satiated.show(np.array([user]), items[None, :], at)[0]
        else:
            clicked = self.sim.respond(np.full(items.size, user), items, at)
        for item in items[clicked].tolist():
            try:
                session.post(self.url + "/feedback", timeout=10, json={
                    "request_id": answer["request_id"], "item_id": item, "action": "click",
                    "token": tokens[item], "time": int(now) + self.click_delay_s},
                    headers={"x-session-id": str(user)})  # to the replica that showed it
            except requests.RequestException:
                pass  # a lost click is a negative to the joiner, as in production
        with self._lock:
            self.requests.append((now, latency, ok))
            self.totals["requests"] += 1
            self.version = answer["model_version"]
            (self.explored if explore else self.ranked).extend(zip(scores, clicked.tolist()))
            self.totals["impressions"] += int(items.size)
            self.totals["clicks"] += int(clicked.sum())
            if self.log is not None and answer["items"]:
                first = answer["items"][0]
                self.log.append((now, user, clicked.tolist(),
                                 [float(i.get("propensity", 1.0)) for i in answer["items"]],
                                 str(first.get("policy", "greedy")), first.get("arm"),
                                 [i.get("inclusion") for i in answer["items"]],
                                 items.tolist(), at, scores))

    def stats(self, window_s: float = 30.0) -> dict[str, Any]:
        """Rolling quality over the last impressions, and QPS and latency (ms) over the last
        ``window_s`` seconds."""
        with self._lock:
            explored, ranked = list(self.explored), list(self.ranked)
            recent = [r for r in self.requests if r[0] >= time.time() - window_s]
            totals, version = dict(self.totals), dict(self.version)
        out: dict[str, Any] = {**totals, "model_version": version, "auc": float("nan"),
                               "ctr": float("nan"), "ctr_random": float("nan"), "qps": 0.0,
                               "p50_ms": float("nan"), "p99_ms": float("nan")}
        if ranked:
            out["ctr"] = float(np.mean([c for _, c in ranked]))
        if explored:
            scores = np.array([s for s, _ in explored], dtype=np.float32)
            labels = np.array([c for _, c in explored], dtype=np.float32)
            out["ctr_random"] = float(labels.mean())
            out["auc"] = auc(scores, labels)  # exact: served scores sit close together
        if recent:
            lat = np.array([r[1] for r in recent])
            span = max(time.time() - recent[0][0], 1e-3)
            out.update(qps=len(recent) / span, p50_ms=float(np.percentile(lat, 50)),
                       p99_ms=float(np.percentile(lat, 99)))
        return out


@dataclasses.dataclass
class Loop:
    """The running parts of the demo (handles and threads), for progress and shutdown."""

    cfg: Config
    training: Any
    sync: Any
    joiners: list[Any]
    joiner_runs: list[Any]
    users: SimulatedUsers
    trainer_thread: threading.Thread
    training_error: list[BaseException] = dataclasses.field(default_factory=list)
    history: list[Any] = dataclasses.field(default_factory=list)  # the history shards

    def arms(self) -> dict[str, dict[str, Any]]:
        """The experiment arms side by side: per arm its counts and click-through interval."""
        return _arms(self.users.url, self.users.headers) if self.cfg.experiments else {}

    def progress(self) -> dict[str, Any]:
        """One snapshot of every part's counters; raises what ended training or a joiner's
        run, if one ended (e.g. ``RestartLimitError`` naming a process that died for good, or
        a joiner past ``joiner.recoveries_per_hour``)."""
        import ray

        if self.training_error:
            raise self.training_error[0]
        ended, _ = ray.wait(self.joiner_runs, num_returns=len(self.joiner_runs), timeout=0)
        ray.get(ended)  # a run ends only when the loop stops, or with its error
        restarts = self.training.supervisor.counts()  # training checks them on schedule
        users = self.users.stats()
        joined = ray.get([j.counters.remote() for j in self.joiners], timeout=30)
        read = ray.get(self.training.monitor.totals.remote(), timeout=30)
        shard_stats = ray.get([s.stats.remote() for s in self.training.shards], timeout=30)
        sync = ray.get(self.sync.status.remote(), timeout=30)
        rows = {name: sum(s[name]["rows"] for s in shard_stats) for name in shard_stats[0]}
        return {"wall_s": time.time(), **users, "arms": self.arms(),
                "retrieval": _retrieval(self.users.url, self.users.headers),
                "examples_joined": sum(j["positives"] + j["negatives"] for j in joined),
                "examples_read": read["records"], "table_rows": rows,
                "sync_versions": sync["versions"], "sparse_syncs": sync["sparse_syncs"],
                "dense_swaps": sync["dense_swaps"], "serving_rows": sync["rows"],
                "restarts": restarts}


def auth_headers(api_key: str) -> dict[str, str]:
    """The headers a call to the HTTP API carries with ``api_key`` (one of
    ``serve.api_keys``; none without one)."""
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def _retrieval(url: str, headers: dict[str, str]) -> dict[str, Any] | None:
    """The replica's retrieval counters and search latency (``/healthz``; None without
    retrieval or if it does not answer)."""
    try:
        r = requests.get(url + "/healthz", timeout=5, headers=headers)
        r.raise_for_status()
    except requests.RequestException as err:
        logger.warning("no retrieval figures: %s", err)
        return None
    return r.json().get("retrieval")


def _arms(url: str, headers: dict[str, str]) -> dict[str, dict[str, Any]]:
    """Each experiment arm's counts and intervals from ``GET /experiments`` (none if it does
    not answer)."""
    try:
        r = requests.get(url + "/experiments", timeout=5, headers=headers)
        r.raise_for_status()
    except requests.RequestException as err:
        logger.warning("no experiment counts: %s", err)
        return {}
    return {a["arm"]: {k: a[k] for k in ("policy", "satiation", "impressions", "clicks", "ctr",
                                         "ctr_low", "ctr_high")}
            for e in r.json()["experiments"] for a in e["arms"]}


def demo_simulator(cfg: Config) -> UserSimulator:
    """The demo's users: few enough users and items that a few minutes of clicks teach the
    model something."""
    return UserSimulator(n_users=200, n_items=100, drift_period_s=3600.0, seed=cfg.train.seed,
                         n_categories=8, satiation=1.0)


def _has_category(cfg: Config) -> bool:
    """Whether ``cfg`` has a slot named ``category``: then the candidate pool and a warm
    start's past give each item its simulated category there."""
    return any(s.name == "category" for s in cfg.slots)


def warm_start(cfg: Config, sim: UserSimulator, folder: str, n_requests: int,
               rate_per_s: float, k: int, sim_end: int, epochs: int, seed: int = 0,
               click_delay_s: int = 1) -> tuple[Config, dict[str, Any]]:
    """A past for the loop to start from -> ``cfg`` starting from it and ``{"impressions",
    "clicks", "dumped", "epochs"}``.

    ``n_requests`` requests of random users of ``sim``, each shown ``k`` random items (with
    their ``category`` if a slot has that name), ``rate_per_s`` a second, clicked by the users
    (drift and satiation; a click ``click_delay_s`` after its impression, as
    :class:`SimulatedUsers` sends them), are published to ``cfg.kafka``'s features and actions
    topics. Their event times (wall clock, s) end now; the simulator's clock (s) ends at
    ``sim_end``, where :class:`SimulatedUsers` with ``sim_origin=sim_end`` starts. The users'
    satiation is not carried over: the horizon starts with rested users. Joiners run to the
    end (``drain``) join them; ``data.dump`` writes the examples to Parquet in ``folder``. The
    config returned has ``online.start: dump:<folder>`` and ``train.epochs: epochs``: passes
    over the dump, then the stream from where the dump ends, while the joiners of
    :func:`start` resume after the past from their group's committed offsets. RuntimeError if
    an impression or a click was not joined (e.g. ``click_delay_s`` beyond
    ``joiner.window_s``). Costs one pass of the joiner and of the dump over ``n_requests * k``
    impressions."""
    from monolith_ray.data.dump import dump_examples
    from monolith_ray.stream.joiner import run_joiners
    from monolith_ray.stream.kafka import ensure_topics
    from monolith_ray.stream.producers import publish, simulated_events

    ensure_topics(cfg.kafka)
    seconds = int(n_requests / rate_per_s)
    first = int(time.time()) - seconds
    events = simulated_events(sim, n_requests, start_time=first, requests_per_s=rate_per_s,
                              items_per_request=k, seed=seed, click_delay_s=click_delay_s,
                              sim_time_offset_s=sim_end - seconds - first,
                              with_category=_has_category(cfg))
    published = publish(cfg.kafka, events)
    joined = run_joiners(cfg, stop_when_idle_s=10.0, drain=True)
    examples = sum(j["positives"] + j["negatives"] + j["sampled_out"] for j in joined)
    positives = sum(j["positives"] for j in joined)
    # A joiner that recovered from a Kafka error wrote again what it had read since its last
    # commit: at least once, so more than were published.
    exact = not any(j["recoveries"] for j in joined)
    if (examples < published["features"] or positives < published["actions"]
            or exact and (examples, positives) != (published["features"], published["actions"])):
        raise RuntimeError(f"warm start: {published['features']} impressions and "
                           f"{published['actions']} clicks published, {examples} examples "
                           f"and {positives} positives joined")
    dumped = dump_examples(cfg, folder)
    warm = dataclasses.replace(
        cfg, online=dataclasses.replace(cfg.online, start=f"dump:{folder}"),
        train=dataclasses.replace(cfg.train, epochs=epochs))
    return warm, {"impressions": published["features"], "clicks": published["actions"],
                  "dumped": dumped["examples"], "epochs": epochs}


def start(cfg: Config, rate_per_s: float = 20.0, sim: UserSimulator | None = None,
          explore: float = 0.2, requests_limit: int | None = None,
          keep_log: bool = False, sim_origin: float | None = None,
          warm_timeout_s: float = 600.0) -> Loop:
    """Start every part on the running Ray with ``cfg.kafka`` reachable -> the :class:`Loop`.

    ``sim`` (default :func:`demo_simulator`) answers as the users; with a slot named
    ``category`` in the config, the candidate pool gives each item its simulated category
    there. ``explore``, ``requests_limit``, ``keep_log`` and ``sim_origin`` go to
    :class:`SimulatedUsers`. With ``online.start: dump:<path>`` (a warm start) the users
    start only once the dump is trained and a replica serves it (:func:`_serve_warm`, at
    most ``warm_timeout_s``)."""
    from ray import serve

    from monolith_ray.history.server import start_history_shards
    from monolith_ray.serve.app import CandidatePool, build_app
    from monolith_ray.serve.serving_shard import start_serving_shards
    from monolith_ray.retrieval.configured import synced_parts
    from monolith_ray.serve.sync import start_parameter_sync
    from monolith_ray.stream.joiner import start_joiners
    from monolith_ray.train.online import OnlineTraining

    sim = sim if sim is not None else demo_simulator(cfg)
    training = OnlineTraining(cfg)
    serving = start_serving_shards(cfg) if cfg.serve.store == "sharded" else []
    sync = start_parameter_sync(cfg.table_slots, training.shards, training.dense, cfg.serve,
                                supervision=cfg.supervision, serving=serving,
                                parts=synced_parts(cfg))
    serve.start(http_options={"host": cfg.serve.host, "port": cfg.serve.port})
    with_category = _has_category(cfg)
    pool = CandidatePool([(i, {"category": int(sim.categories[i])} if with_category else {})
                          for i in range(sim.n_items)])
    history = start_history_shards(cfg)  # none without history slots (the demo's default)
    serve.run(build_app(cfg, sync, pool, serving, history), name=APP_NAME, route_prefix="/")
    joiners = start_joiners(cfg)
    training.supervisor.watch_all({"sync": sync, **{f"joiner-{k}": j
                                                    for k, j in enumerate(joiners)},
                                   **{f"history-{k}": h for k, h in enumerate(history)}})
    runs = [j.run.remote() for j in joiners]
    errors: list[BaseException] = []
    trainer_thread = threading.Thread(target=_train, args=(training, errors),
                                      name="online-training", daemon=True)
    trainer_thread.start()
    users = SimulatedUsers(f"http://{cfg.serve.host}:{cfg.serve.port}", sim, rate_per_s,
                           seed=cfg.train.seed, explore=explore,
                           requests_limit=requests_limit, keep_log=keep_log,
                           sim_origin=sim_origin, api_key=_first_key(cfg))
    loop = Loop(cfg, training, sync, joiners, runs, users, trainer_thread, errors, history)
    if cfg.online.start.startswith("dump:"):
        try:
            _serve_warm(cfg, training, sync, errors, warm_timeout_s)
        except BaseException:
            stop(loop)  # no part outlives a failed start
            raise
    users.start()
    return loop


def _first_key(cfg: Config) -> str:
    """The key the loop's own clients send: the first of ``serve.api_keys`` (none set:
    "")."""
    return cfg.serve.api_keys[0] if cfg.serve.api_keys else ""


def _serve_warm(cfg: Config, training: Any, sync: Any, errors: list[BaseException],
                timeout_s: float) -> None:
    """Wait until ``training`` has trained its dump and reads the stream, sync both parts
    now, and wait until a replica answers ``/healthz`` with those versions and, with
    retrieval, an index rebuilt since: the first request is served by the warm model.
    TimeoutError after ``timeout_s``; what ended training early is raised."""
    import ray

    deadline = time.monotonic() + timeout_s
    url = f"http://{cfg.serve.host}:{cfg.serve.port}/healthz"

    headers = auth_headers(_first_key(cfg))

    def health() -> dict[str, Any] | None:
        try:
            return requests.get(url, timeout=5, headers=headers).json()
        except (requests.RequestException, ValueError):
            return None  # the replica is not answering yet

    while not training.streaming.wait(timeout=1.0):
        if errors:
            raise errors[0]
        if time.monotonic() > deadline:
            raise TimeoutError(f"the dump was not trained within {timeout_s} s")
    before = health() or {}
    index = (before.get("retrieval") or {}).get("version", -1)
    want = ray.get(sync.sync_now.remote("both"), timeout=max(deadline - time.monotonic(), 1))
    while True:
        now = health()
        if now is not None:
            held, retrieval = now.get("model_version", {}), now.get("retrieval")
            if (all(held.get(part, -1) >= want[part] for part in ("sparse", "dense"))
                    and (retrieval is None or retrieval.get("version", 0) > index)):
                return
        if time.monotonic() > deadline:
            raise TimeoutError(f"no replica served versions {want} within {timeout_s} s")
        time.sleep(cfg.serve.poll_interval_s)


def stop(loop: Loop) -> None:
    """Shut every part down: users, joiners (committing), training, serving."""
    import ray
    from ray import serve

    loop.users.stop_event.set()
    if loop.users.ident is not None:  # started
        loop.users.join(timeout=30)
    for j in loop.joiners:
        j.stop.remote()
    try:
        ray.get(loop.joiner_runs, timeout=30)
    except Exception as err:  # noqa: BLE001 - shutting down regardless
        logger.warning("joiners did not stop cleanly: %s", err)
    for j in loop.joiners:
        ray.kill(j)
    loop.training.close()
    loop.trainer_thread.join(timeout=30)
    serve.delete(APP_NAME)
    ray.kill(loop.sync)
    for h in loop.history:
        ray.kill(h)


def _train(training: Any, errors: list[BaseException]) -> None:
    """Run ``training``; what ends it early goes to ``errors`` for the demo to raise (at
    shutdown its actors are killed: that error is expected and only logged)."""
    try:
        training.run()
    except Exception as err:  # noqa: BLE001 - raised by Loop.progress, or ends with shutdown
        errors.append(err)
        logger.info("online training ended: %s: %s", type(err).__name__, err)


def run_demo(cfg: Config, duration_s: float | None = None, rate_per_s: float = 20.0,
             refresh_s: float = 1.0) -> dict[str, Any]:
    """Run the loop until Ctrl-C or ``duration_s`` -> the summary (also printed and written,
    with the plot, under ``cfg.data.output_dir``)."""
    from monolith_ray.stream import kafka_session

    out = Path(cfg.data.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    history: list[dict[str, Any]] = []
    with kafka_session(cfg.kafka) as bootstrap:
        cfg = dataclasses.replace(cfg, kafka=dataclasses.replace(
            cfg.kafka, bootstrap_servers=bootstrap))
        started = time.time()
        loop = start(cfg, rate_per_s)
        try:
            _watch(loop, history, started, duration_s, refresh_s)
        except KeyboardInterrupt:
            pass
        finally:
            stop(loop)
    summary = _summary(history, started, out)
    print(json.dumps(summary, default=float))
    return summary


def _watch(loop: Loop, history: list[dict[str, Any]], started: float,
           duration_s: float | None, refresh_s: float) -> None:
    """Collect progress every ``refresh_s`` until the duration passes; draw it live on a
    terminal, one line every 10 s otherwise."""
    live = None
    if sys.stdout.isatty():
        from rich.live import Live

        live = Live(auto_refresh=False)
        live.start()
    last_line = 0.0
    try:
        while duration_s is None or time.time() - started < duration_s:
            time.sleep(refresh_s)
            p = loop.progress()
            p["elapsed_s"] = p["wall_s"] - started
            history.append(p)
            if live is not None:
                live.update(_table(p), refresh=True)
            elif p["wall_s"] - last_line >= 10:
                last_line = p["wall_s"]
                print(_line(p), flush=True)
    finally:
        if live is not None:
            live.stop()


def _rate(history: list[dict[str, Any]], key: str, span_s: float = 10.0) -> float:
    """Per-second rate of ``key`` over the last ``span_s`` of ``history``."""
    now = history[-1]
    past = [h for h in history if h["wall_s"] >= now["wall_s"] - span_s][0]
    dt = now["wall_s"] - past["wall_s"]
    return (now[key] - past[key]) / dt if dt > 0 else 0.0


def _table(p: dict[str, Any]) -> Any:
    from rich.table import Table

    t = Table(title=f"monolith_ray demo — {p['elapsed_s']:.0f} s (Ctrl-C to stop)")
    t.add_column("part")
    t.add_column("now", justify="right")
    t.add_row("rolling AUC (explored impressions)", f"{p['auc']:.3f}")
    t.add_row("click-through: ranked top-k / random k", f"{p['ctr']:.3f} / {p['ctr_random']:.3f}")
    t.add_row("serving QPS / p50 / p99 ms", f"{p['qps']:.1f} / {p['p50_ms']:.1f} / "
                                            f"{p['p99_ms']:.1f}")
    t.add_row("requests (failed) / clicks",
              f"{p['requests']} ({p['failed']}) / {p['clicks']}")
    t.add_row("examples joined / read by training",
              f"{p['examples_joined']} / {p['examples_read']}")
    t.add_row("table rows (training)", ", ".join(f"{k} {v}" for k, v in p["table_rows"].items()))
    t.add_row("sync versions (dense, sparse)",
              f"{p['sync_versions']['dense']}, {p['sync_versions']['sparse']}")
    t.add_row("restarts (by process)", ", ".join(
        f"{k} {v}" for k, v in p["restarts"].items() if v) or "none")
    t.add_row("served with (dense, sparse)",
              ", ".join(str(p["model_version"].get(k, "-")) for k in ("dense", "sparse")))
    retrieval = p.get("retrieval")
    if retrieval:
        t.add_row("retrieval: items indexed / searches (random draws) / p99 ms",
                  f"{retrieval['items']} / {retrieval['searches']} ({retrieval['fallbacks']}) "
                  f"/ {retrieval.get('p99_ms', '-')}")
    for label, arm in p.get("arms", {}).items():
        kind = arm["policy"] + (" + satiation" if arm["satiation"] else "")
        t.add_row(f"arm {label} ({kind}): click-through [95%] of impressions",
                  f"{arm['ctr']:.3f} [{arm['ctr_low']:.3f}, {arm['ctr_high']:.3f}] of "
                  f"{arm['impressions']}")
    return t


def _line(p: dict[str, Any]) -> str:
    return (f"[{p['elapsed_s']:5.0f} s] auc {p['auc']:.3f} ctr {p['ctr']:.3f} "
            f"(random {p['ctr_random']:.3f}) "
            f"qps {p['qps']:.1f} p99 {p['p99_ms']:.0f} ms requests {p['requests']} "
            f"joined {p['examples_joined']} read {p['examples_read']} "
            f"rows {sum(p['table_rows'].values())} versions {p['sync_versions']} "
            f"restarts {sum(p['restarts'].values())}"
            + "".join(f" | {label} ctr {a['ctr']:.3f}" for label, a in p.get("arms", {}).items()))


def _summary(history: list[dict[str, Any]], started: float, out: Path) -> dict[str, Any]:
    """The run's figures; writes ``summary.json`` and ``demo.png`` to ``out``."""
    last = history[-1] if history else {}
    summary = {
        "seconds": time.time() - started,
        **{k: last.get(k) for k in ("requests", "failed", "retried", "impressions", "clicks",
                                    "auc",
                                    "ctr", "ctr_random", "p50_ms", "p99_ms", "examples_joined",
                                    "examples_read", "table_rows", "sync_versions",
                                    "sparse_syncs", "dense_swaps", "restarts", "arms",
                                    "retrieval")},
        "ctr_first": next((h["ctr"] for h in history if h["impressions"] >= 500), None),
        "plot": str(out / "demo.png"), "history": str(out / "history.json"),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=float))
    (out / "history.json").write_text(json.dumps(history, default=float))
    plot_history(history, out / "demo.png")
    return summary


def plot_history(history: list[dict[str, Any]], path: Path) -> None:
    """PNG of rolling AUC and click-through against elapsed seconds, sync times marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [h["elapsed_s"] for h in history]
    fig, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(8, 6))
    top.plot(t, [h["auc"] for h in history], color="tab:blue")
    top.set_ylabel("rolling AUC")
    bottom.plot(t, [h["ctr"] for h in history], color="tab:orange", label="ranked top-k")
    bottom.plot(t, [h["ctr_random"] for h in history], color="tab:grey", label="random k")
    bottom.set_ylabel("click-through")
    bottom.legend(loc="lower right")
    bottom.set_xlabel("seconds since start")
    for axis in (top, bottom):
        axis.grid(alpha=0.3)
        for a, b in zip(history, history[1:]):
            if b["sync_versions"]["dense"] != a["sync_versions"]["dense"]:
                axis.axvline(b["elapsed_s"], color="grey", alpha=0.4, lw=0.8)
    top.set_title("monolith_ray demo: served quality (grey: dense swaps)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
