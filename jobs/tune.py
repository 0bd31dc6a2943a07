"""Ray job entry point for `raydino tune`: Ray Tune sweep over the loss weights, resumed on a rerun.

    ray job submit --runtime-env cluster/runtime_env.yaml -- \
        python jobs/tune.py --preset ffhq256 --pyramids /mnt/shared/raydino/ffhq256/pyramids --out /mnt/shared/raydino/ffhq256/sweep

No logic here: the arguments go to `raydino tune` unchanged (docs/cluster.md).
"""

import sys

from raydino.cli import main

if __name__ == "__main__":
    sys.exit(main(["tune", *sys.argv[1:]]))
