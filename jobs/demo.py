"""The whole loop as a job: ``ray job submit --working-dir . -- python jobs/demo.py [options]``.

The same as ``monolith-ray demo``: the embedded broker (unless ``--set
kafka.bootstrap_servers=...``), HTTP serving, simulated users, the joiner, online training and
the parameter sync, for ``--duration`` seconds. See ``monolith-ray demo --help``.
"""

import sys

from monolith_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["demo", *sys.argv[1:]]))
