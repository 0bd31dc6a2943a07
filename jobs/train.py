"""Ray job entry point for `raydino train`: progressive generator training with Ray Train, resumable.

    ray job submit --working-dir . --runtime-env cluster/runtime_env.yaml -- \
        python jobs/train.py --preset ffhq256 [arguments of `raydino train`] [key=value ...]

No logic here: the arguments go to `raydino train` unchanged (see docs/cluster.md).
"""

import sys

from raydino.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
