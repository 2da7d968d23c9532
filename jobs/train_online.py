"""Online training job: ``ray job submit --working-dir . -- python jobs/train_online.py [options]``.

The same as ``monolith-ray train-online``: train on the ``examples`` topic (after a Parquet dump
of it, or from a snapshot), snapshotting parameters and Kafka offsets together. See
``monolith-ray train-online --help`` for the options.
"""

import sys

from monolith_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["train-online", *sys.argv[1:]]))
