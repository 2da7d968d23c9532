"""The ``monolith-ray`` command: one subcommand per job, each also a ``jobs/`` entry point.

``monolith-ray train --config FILE`` and ``ray job submit -- python jobs/train_batch.py
--config FILE`` run the same code. Without ``--config`` a job uses the embedded MovieLens-100K
config; ``--set key.path=value`` overrides any key. Ray: a job started by ``ray job submit``
joins its cluster; otherwise ``--address`` (or ``RAY_ADDRESS``) names one, else a local Ray
starts in this process.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from monolith_ray.config import DEFAULT_CONFIG, ConfigError, load_config
from monolith_ray.config.inputs import check_inputs


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line ``argv`` -> exit status."""
    parser = argparse.ArgumentParser(
        prog="monolith-ray",
        description="Real-time recommendation training and serving on Ray.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    _command(sub, "train", run_train, "train DeepFM from Parquet on Ray actors, evaluate, write "
             "metrics and a snapshot")

    online = _command(sub, "train-online", run_train_online, "train on the Kafka examples "
                      "topic, snapshotting parameters and offsets together")
    online.add_argument("--start", default=None,
                        help="earliest, dump:PATH or snapshot:PATH (default: online.start)")

    join = _command(sub, "join", run_join, "join the features and actions topics into examples")
    join.add_argument("--joiners", type=int, default=None, help="joiner actors "
                                                                "(default: joiner.n_joiners)")
    join.add_argument("--max-seconds", type=float, default=None, help="stop after this long")
    join.add_argument("--idle-seconds", type=float, default=None,
                      help="stop once no record has come for this long")
    join.add_argument("--drain", action="store_true",
                      help="at the end, emit every waiting impression as a negative")
    join.add_argument("--replay", metavar="DIR", default=None,
                      help="first publish MovieLens-100K from DIR (holding ml-100k.inter etc.)")
    join.add_argument("--fraction", type=float, nargs=2, default=(0.0, 1.0),
                      metavar=("LO", "HI"), help="replay only this slice of the ratings")
    join.add_argument("--speedup", type=float, default=None,
                      help="replay at this many event seconds per wall second "
                           "(default: as fast as possible)")

    serve_ = _command(sub, "serve", run_serve,
                      "serve HTTP recommendations from a snapshot, synced on schedule")
    serve_.add_argument("--snapshot", default=None, metavar="PATH",
                        help="snapshot folder to serve (default: fresh parameters)")
    serve_.add_argument("--training", default=None, metavar="NAME",
                        help="sync from the running job whose train.name is NAME instead")
    _duration_arg(serve_)

    snapshot = _command(sub, "snapshot", run_snapshot,
                        "snapshot a running job's parameters now, or list the snapshots")
    snapshot.add_argument("--list", action="store_true",
                          help="list the snapshots under data.snapshot_root instead")

    restore = _command(sub, "restore", run_restore,
                       "load a snapshot into a running job's parameter servers")
    restore.add_argument("--snapshot", default=None, metavar="PATH",
                         help="a snapshot folder, or a root for its latest complete one "
                              "(default: data.snapshot_root)")

    broker = _command(sub, "broker", run_broker,
                      "run the embedded Kafka broker in the foreground", address=False)
    broker.add_argument("--port", type=int, default=9092, help="port (default: 9092)")
    _duration_arg(broker)

    simulate = _command(sub, "simulate", run_simulate,
                        "simulated users calling a running HTTP API", config=None, address=False)
    simulate.add_argument("--url", default="http://127.0.0.1:8000", help="API base URL")
    simulate.add_argument("--api-key", default=os.environ.get("MONOLITH_RAY_API_KEY", ""),
                          help="a key of the deployment's serve.api_keys (default: "
                               "$MONOLITH_RAY_API_KEY; none: no Authorization header)")
    simulate.add_argument("--rate", type=_positive, default=20.0, help="requests per second")
    simulate.add_argument("--users", type=int, default=200, help="simulated users")
    simulate.add_argument("--items", type=int, default=100, help="simulated items")
    simulate.add_argument("--duration", type=float, default=60.0, metavar="SECONDS",
                          help="how long (default: 60)")

    demo = _command(sub, "demo", run_demo, "run the whole real-time loop locally: serve, "
                    "simulated users, join, train online, sync",
                    config=(None, "the embedded demo config"))
    _duration_arg(demo)
    demo.add_argument("--rate", type=_positive, default=20.0,
                      help="simulated /recommend requests per second (default: 20)")

    data = _command(sub, "data", run_data, "fetch MovieLens-100K and write its Parquet splits "
                    "(data synth: write a synthetic stream)", config=None, address=False)
    data.add_argument("--dest", default="data", help="data folder (default: data)")
    synth = _command(data.add_subparsers(dest="source", metavar="SOURCE"), "synth", run_synth,
                     "a Criteo-shaped synthetic stream to Parquet or Kafka",
                     config=(str(SYNTH_CONFIG), "the embedded synthetic-stream config"),
                     address=False)
    synth.add_argument("--out", default=None, metavar="PATH",
                       help="write hour-partitioned Parquet here")
    synth.add_argument("--examples", type=int, required=True, metavar="N",
                       help="how many examples")
    synth.add_argument("--start", type=int, default=0, metavar="INDEX",
                       help="first example's index (a later range is a held-out set)")
    synth.add_argument("--seed", type=int, default=0, help="the stream's seed (default: 0)")
    synth.add_argument("--drift", type=float, default=0.0,
                       help="radians an event hour the hidden model turns (default: 0)")
    synth.add_argument("--kafka", choices=("examples", "joiner"), default=None,
                       help="produce to the config's Kafka: the examples topic, or features "
                            "and click actions for the joiner")

    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except ConfigError as err:
        print(f"monolith-ray {args.command}: bad config: {err}", file=sys.stderr)
        return 2


def run_train(args: argparse.Namespace) -> int:
    """Train on ``data.train`` with ``train.n_shards`` shard actors and ``train.n_trainers``
    trainer actors, evaluate on ``data.valid`` and ``data.test``, and write ``metrics.json``
    and ``snapshot/`` under ``data.output_dir``; print the metrics as one JSON line."""
    import ray

    from monolith_ray.train.job import INPUTS, run_batch_training

    cfg = load_config(args.config, args.set)
    check_inputs(cfg, INPUTS)
    ray.init(address=args.address, ignore_reinit_error=True)
    metrics = run_batch_training(cfg)
    summary = {k: v for k, v in metrics.items() if k != "trainers"}
    print(json.dumps(summary, default=float))
    return 0


def run_train_online(args: argparse.Namespace) -> int:
    """Train on the ``examples`` topic with the batch job's trainers, from ``--start``:
    ``earliest``, ``dump:PATH`` (train on a Parquet dump of the topic, then continue on Kafka
    from the offsets where the dump ended) or ``snapshot:PATH`` (resume parameters and
    offsets); snapshot both together every ``online.snapshot_every_s``; print the metrics."""
    import ray

    from monolith_ray.train.online import INPUTS, run_online_training

    start = [f"online.start={args.start}"] if args.start else []
    cfg = load_config(args.config, [*args.set, *start])
    check_inputs(cfg, INPUTS)
    ray.init(address=args.address, ignore_reinit_error=True)
    metrics = run_online_training(cfg)
    print(json.dumps({k: v for k, v in metrics.items() if k != "phases"}, default=float))
    return 0


def run_join(args: argparse.Namespace) -> int:
    """Run ``joiner.n_joiners`` joiner actors turning the ``features`` and ``actions`` topics
    into ``examples``; print their counters. With no ``kafka.bootstrap_servers`` the embedded
    broker runs for the command's duration, useful with ``--replay``. Without
    ``--max-seconds`` or ``--idle-seconds`` the joiners run until stopped."""
    import dataclasses
    import threading

    import ray

    from monolith_ray.stream import kafka_session
    from monolith_ray.stream.joiner import run_joiners
    from monolith_ray.stream.producers import replay_movielens

    cfg = load_config(args.config, args.set)
    ray.init(address=args.address, ignore_reinit_error=True)
    with kafka_session(cfg.kafka) as bootstrap:
        cfg = dataclasses.replace(
            cfg, kafka=dataclasses.replace(cfg.kafka, bootstrap_servers=bootstrap))
        replay: dict[str, float] = {}
        publisher = None
        if args.replay:
            publisher = threading.Thread(target=lambda: replay.update(replay_movielens(
                cfg.kafka, args.replay, speedup=args.speedup, fraction=tuple(args.fraction))))
            publisher.start()
        counters = run_joiners(cfg, args.joiners, max_seconds=args.max_seconds,
                               stop_when_idle_s=args.idle_seconds, drain=args.drain)
        if publisher is not None:
            publisher.join()
    print(json.dumps({"replay": replay, "joiners": counters}))
    return 0


def run_demo(args: argparse.Namespace) -> int:
    """Start the embedded Kafka broker and a local Ray, serve HTTP on serve.host:serve.port,
    and run the closed loop: simulated users call /recommend and /feedback, the joiner builds
    examples, the trainer learns online, the sync actor updates serving. Shows live progress
    until Ctrl-C or --duration, then shuts down, prints a summary and writes demo.png
    (rolling AUC and click-through over time) under data.output_dir."""
    import ray

    from monolith_ray.demo import DEMO_CONFIG, run_demo as demo
    from monolith_ray.train.online import INPUTS

    cfg = load_config(args.config or DEMO_CONFIG, args.set)
    check_inputs(cfg, (*INPUTS, "experiments"))
    ray.init(address=args.address, ignore_reinit_error=True, log_to_driver=False)
    try:
        demo(cfg, duration_s=args.duration, rate_per_s=args.rate)
    finally:
        ray.shutdown()
    return 0


def run_serve(args: argparse.Namespace) -> int:
    """Start shard and dense-server actors (restored from --snapshot if given), the parameter
    sync and the recommender on Ray Serve at serve.host:serve.port (candidates from
    serve.candidate_pool), logging impressions to Kafka if kafka.bootstrap_servers is set;
    run until Ctrl-C or --duration."""
    import dataclasses

    import ray
    from ray import serve

    from monolith_ray.history.server import start_history_shards
    from monolith_ray.serve.app import build_app
    from monolith_ray.serve.serving_shard import start_serving_shards
    from monolith_ray.retrieval.configured import synced_parts
    from monolith_ray.serve.sync import start_parameter_sync
    from monolith_ray.supervision import RestartLimitError, Supervisor
    from monolith_ray.train.job import find_servers, start_servers
    from monolith_ray.train.snapshots import restore_snapshot

    cfg = load_config(args.config, args.set)
    if not cfg.kafka.bootstrap_servers:
        cfg = dataclasses.replace(cfg, serve=dataclasses.replace(cfg.serve, log_features=False))
    cfg.check_serving()
    check_inputs(cfg, ("serve.candidate_pool", "experiments"))
    ray.init(address=args.address, ignore_reinit_error=True)
    if args.training and args.snapshot:
        print("monolith-ray serve: --training and --snapshot exclude each other (restoring "
              "would overwrite the running job's parameters)", file=sys.stderr)
        return 2
    if args.training:
        try:
            shards, dense = find_servers(dataclasses.replace(
                cfg, train=dataclasses.replace(cfg.train, name=args.training)))
        except ValueError as err:
            print(f"monolith-ray serve: {err}", file=sys.stderr)
            return 2
    else:
        shards, dense = start_servers(cfg, args.snapshot)
    if args.snapshot:
        restore_snapshot(args.snapshot, shards, dense)
    # Syncing from a job another process owns: leave its eviction records to its own sync.
    serving = (start_serving_shards(cfg, args.snapshot) if cfg.serve.store == "sharded"
               else [])
    sync = start_parameter_sync(cfg.table_slots, shards, dense, cfg.serve,
                                forget_evictions=not args.training,
                                supervision=cfg.supervision, serving=serving,
                                parts=synced_parts(cfg))
    serve.start(http_options={"host": cfg.serve.host, "port": cfg.serve.port})
    history = start_history_shards(cfg)  # none without history slots
    serve.run(build_app(cfg, sync, serving=serving, history=history), name="monolith_ray",
              route_prefix="/")
    print(json.dumps({"url": f"http://{cfg.serve.host}:{cfg.serve.port}",
                      "versions": ray.get(sync.versions.remote())}), flush=True)
    supervisor = Supervisor(cfg.supervision)
    supervisor.watch("sync", sync)
    supervisor.watch_all({f"history-{k}": h for k, h in enumerate(history)})
    if not args.training:  # another job's servers are that job's to watch
        supervisor.watch_all({**{f"shard-{k}": s for k, s in enumerate(shards)},
                              "dense": dense})
    try:
        _wait(args.duration, supervisor)
    except RestartLimitError as err:
        print(f"monolith-ray serve: {err}", file=sys.stderr)
        serve.shutdown()
        return 1
    serve.shutdown()
    return 0


def run_snapshot(args: argparse.Namespace) -> int:
    """Write a snapshot of the running job named train.name (its shard and dense-server
    actors) under data.snapshot_root now, pruning to data.snapshot_keep; print its folder.
    The Kafka offsets of the newest earlier snapshot are carried over, so an online job
    restored from it re-trains from there (at least once) and never skips. With --list,
    print the snapshots under data.snapshot_root instead."""
    import ray

    from monolith_ray.train.job import find_servers
    from monolith_ray.train.snapshots import (
        latest,
        list_snapshots,
        read_offsets,
        snapshot_root,
        take_snapshot,
    )

    cfg = load_config(args.config, args.set)
    root = snapshot_root(cfg)
    if args.list:
        print(json.dumps([{"location": s.location, "number": s.number, "complete": s.complete,
                           "taken_at": s.taken_at.isoformat()} for s in list_snapshots(root)]))
        return 0
    ray.init(address=args.address, ignore_reinit_error=True)
    try:
        shards, dense = find_servers(cfg)
    except ValueError as err:
        print(f"monolith-ray snapshot: {err}", file=sys.stderr)
        return 2
    previous = latest(root)
    offsets = read_offsets(previous) if previous else None
    print(json.dumps({"snapshot": take_snapshot(cfg, shards, dense, offsets)}))
    return 0


def run_restore(args: argparse.Namespace) -> int:
    """Load a snapshot (a folder, or the latest complete one under a root; default
    data.snapshot_root) into the shard and dense-server actors of the running job named
    train.name; print what was restored."""
    import ray

    from monolith_ray.train.job import find_servers
    from monolith_ray.train.snapshots import resolve, restore_snapshot, snapshot_root

    cfg = load_config(args.config, args.set)
    where = args.snapshot or snapshot_root(cfg)
    folder = resolve(where)
    ray.init(address=args.address, ignore_reinit_error=True)
    try:
        shards, dense = find_servers(cfg)
        offsets = restore_snapshot(folder or where, shards, dense)
    except (ValueError, FileNotFoundError) as err:
        print(f"monolith-ray restore: {err}", file=sys.stderr)
        return 2
    print(json.dumps({"restored": folder, "offsets": offsets}))
    return 0


def run_broker(args: argparse.Namespace) -> int:
    """Run the embedded Kafka-protocol broker (in-memory) on 127.0.0.1:--port with the
    config's topics created; print its address; stop on Ctrl-C or after --duration."""
    import dataclasses

    from monolith_ray.stream import EmbeddedBroker, ensure_topics

    cfg = load_config(args.config, args.set)
    with EmbeddedBroker(port=args.port) as broker:
        ensure_topics(dataclasses.replace(cfg.kafka, bootstrap_servers=broker.bootstrap))
        print(json.dumps({"bootstrap_servers": broker.bootstrap,
                          "topics": cfg.kafka.topics.names()}), flush=True)
        _wait(args.duration)
    return 0


def run_simulate(args: argparse.Namespace) -> int:
    """Simulated users (drifting preferences) calling --url's /recommend and /feedback at
    --rate requests per second for --duration; print their counts, QPS, latency and the
    click-through of ranked versus random items."""
    import time

    from monolith_ray.demo import SimulatedUsers
    from monolith_ray.stream.producers import UserSimulator

    users = SimulatedUsers(args.url, UserSimulator(n_users=args.users, n_items=args.items),
                           args.rate, api_key=args.api_key)
    users.start()
    time.sleep(args.duration)
    users.stop_event.set()
    users.join()
    print(json.dumps(users.stats(window_s=args.duration), default=float))
    return 0


def _wait(duration: float | None, supervisor: Any = None) -> None:
    """Sleep for ``duration`` seconds, or until Ctrl-C if None; meanwhile check
    ``supervisor`` (a ``monolith_ray.supervision.Supervisor``) every
    ``supervision.check_every_s``, which logs restarts and raises once a process is dead for
    good."""
    import time

    end = None if duration is None else time.monotonic() + duration
    step = 1.0 if supervisor is None else supervisor.cfg.check_every_s
    try:
        while end is None or time.monotonic() < end:
            time.sleep(step if end is None else max(0.0, min(step, end - time.monotonic())))
            if supervisor is not None:
                supervisor.check()
    except KeyboardInterrupt:
        pass


def run_data(args: argparse.Namespace) -> int:
    """Download the MovieLens-100K files (from the recbole wheel) and write the splits."""
    from monolith_ray.data import movielens

    movielens.main(["fetch", "--dest", args.dest])
    return 0


def run_synth(args: argparse.Namespace) -> int:
    """Write --examples examples of the synthetic Criteo-shaped stream
    (monolith_ray.data.synth) as hour-partitioned Parquet under --out, and/or with --kafka
    produce them to the config's kafka.bootstrap_servers (examples: the examples topic;
    joiner: features, and clicks within joiner.window_s, for the joiner); print a JSON
    summary (examples, positive rate, the hidden model's AUC, files or topics, seconds)."""
    import dataclasses
    import time

    from monolith_ray.data import synth

    if args.out is None and args.kafka is None:
        print("monolith-ray data synth: give --out, --kafka or both", file=sys.stderr)
        return 2
    spec = synth.SynthSpec(seed=args.seed, drift=args.drift)
    if args.kafka is not None:
        cfg = load_config(args.config, args.set)
        if not cfg.kafka.bootstrap_servers:
            print("monolith-ray data synth: kafka.bootstrap_servers is empty (start one with "
                  "monolith-ray broker and --set kafka.bootstrap_servers=HOST:PORT)",
                  file=sys.stderr)
            return 2
        spec = dataclasses.replace(spec, click_delay_s=max(1, min(spec.click_delay_s,
                                                                  cfg.joiner.window_s)))
    began = time.perf_counter()
    summary: dict[str, Any] = {}
    if args.out is not None:
        try:
            summary.update(synth.write_parquet(spec, args.out, args.examples, args.start),
                           out=args.out)
        except FileExistsError as err:
            print(f"monolith-ray data synth: {err}", file=sys.stderr)
            return 2
    if args.kafka is not None:
        produced = synth.produce(spec, cfg.kafka, args.examples, args.kafka, args.start)
        summary.update({k: v for k, v in produced.items() if k != "seconds"})
    seconds = time.perf_counter() - began
    summary["positive_rate"] = summary["positives"] / max(1, args.examples)
    print(json.dumps({**summary, "seconds": round(seconds, 3),
                      "examples_per_s": round(args.examples / seconds)}))
    return 0


MOVIELENS_CONFIG = (str(DEFAULT_CONFIG), "the embedded MovieLens-100K config")
SYNTH_CONFIG = DEFAULT_CONFIG.parent / "synth.yaml"


def _command(sub: argparse._SubParsersAction, name: str, run: Callable[..., int], summary: str,
             *, config: tuple[str | None, str] | None = MOVIELENS_CONFIG, address: bool = True
             ) -> argparse.ArgumentParser:
    """Subcommand ``name`` running ``run`` (its docstring the description): with ``--config``
    (default and its words, ``config``; None: no config) and ``--set``, and ``--address``."""
    parser = sub.add_parser(name, help=summary, description=_doc_of(run))
    if config is not None:
        default, words = config
        parser.add_argument("--config", default=default, help=f"YAML config (default: {words})")
        parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                            help="override a config key, e.g. --set train.epochs=1 (repeatable)")
    if address:
        parser.add_argument(
            "--address", default=None,
            help="Ray address (default: the job's cluster, RAY_ADDRESS, or a local Ray)")
    parser.set_defaults(run=run)
    return parser


def _duration_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--duration", type=float, default=None, metavar="SECONDS",
                        help="stop after this long (default: until Ctrl-C)")


def _positive(text: str) -> float:
    """argparse type: a number > 0."""
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _doc_of(fn: object) -> str:
    return " ".join((fn.__doc__ or "").split())


if __name__ == "__main__":
    sys.exit(main())
