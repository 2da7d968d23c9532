"""Batch training job: ``ray job submit --working-dir . -- python jobs/train_batch.py [--config FILE]``.

The same as ``monolith-ray train``: train from Parquet on Ray actors, evaluate, write metrics
and a snapshot. See ``monolith-ray train --help`` for the options.
"""

import sys

from monolith_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
