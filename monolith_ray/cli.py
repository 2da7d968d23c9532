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
import sys
from collections.abc import Sequence

from monolith_ray.config import DEFAULT_CONFIG, ConfigError, load_config


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line ``argv`` -> exit status."""
    parser = argparse.ArgumentParser(
        prog="monolith-ray",
        description="Real-time recommendation training and serving on Ray.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = sub.add_parser(
        "train", help="train DeepFM from Parquet on Ray actors, evaluate, write metrics and a "
                      "snapshot", description=_doc_of(run_train))
    _config_args(train)
    train.add_argument("--address", default=None,
                       help="Ray address (default: the job's cluster, RAY_ADDRESS, or a local Ray)")
    train.set_defaults(run=run_train)

    data = sub.add_parser("data", help="fetch MovieLens-100K and write its Parquet splits",
                          description=_doc_of(run_data))
    data.add_argument("--dest", default="data", help="data folder (default: data)")
    data.set_defaults(run=run_data)

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

    from monolith_ray.train.job import run_batch_training

    cfg = load_config(args.config, args.set)
    ray.init(address=args.address, ignore_reinit_error=True)
    metrics = run_batch_training(cfg)
    summary = {k: v for k, v in metrics.items() if k != "trainers"}
    print(json.dumps(summary, default=float))
    return 0


def run_data(args: argparse.Namespace) -> int:
    """Download the MovieLens-100K files (from the recbole wheel) and write the splits."""
    from monolith_ray.data import movielens

    movielens.main(["fetch", "--dest", args.dest])
    return 0


def _config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=str(DEFAULT_CONFIG),
                        help="YAML config (default: the embedded MovieLens-100K config)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. --set train.epochs=1 (repeatable)")


def _doc_of(fn: object) -> str:
    return " ".join((fn.__doc__ or "").split())


if __name__ == "__main__":
    sys.exit(main())
