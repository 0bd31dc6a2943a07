"""Ray job entry point for `raydino pyramids`: DINOv2 feature pyramids of an image folder or bucket.

    ray job submit --working-dir . --runtime-env cluster/runtime_env.yaml -- \
        python jobs/pyramids.py --preset ffhq256 [arguments of `raydino pyramids`] [key=value ...]

No logic here: the arguments go to `raydino pyramids` unchanged (see docs/cluster.md).
"""

import sys

from raydino.cli import main

if __name__ == "__main__":
    sys.exit(main(["pyramids", *sys.argv[1:]]))
