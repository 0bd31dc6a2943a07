"""Ray job entry point for `raydino sample`: samples, reconstructions and text-conditioned images of a trained run.

    ray job submit --working-dir . --runtime-env cluster/runtime_env.yaml -- \
        python jobs/sample.py --preset ffhq256 [arguments of `raydino sample`] [key=value ...]

No logic here: the arguments go to `raydino sample` unchanged (see docs/cluster.md).
"""

import sys

from raydino.cli import main

if __name__ == "__main__":
    sys.exit(main(["sample", *sys.argv[1:]]))
