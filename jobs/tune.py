"""Ray job entry point for `raydino tune`: Ray Tune sweep over the loss weights, restorable.

    ray job submit --working-dir . --runtime-env cluster/runtime_env.yaml -- \
        python jobs/tune.py --preset ffhq256 [arguments of `raydino tune`] [key=value ...]

No logic here: the arguments go to `raydino tune` unchanged (see docs/cluster.md).
"""

import sys

from raydino.cli import main

if __name__ == "__main__":
    sys.exit(main(["tune", *sys.argv[1:]]))
