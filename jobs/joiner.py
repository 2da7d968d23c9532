"""Online joiner job: ``ray job submit --working-dir . -- python jobs/joiner.py [options]``.

The same as ``monolith-ray join``: joiner actors turn the ``features`` and ``actions`` topics
into ``examples``. See ``monolith-ray join --help`` for the options.
"""

import sys

from monolith_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["join", *sys.argv[1:]]))
