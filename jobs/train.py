"""Ray job entry point for `raydino train`: progressive generator training with Ray Train.

    ray job submit --runtime-env cluster/runtime_env.yaml -- \
        python jobs/train.py --preset ffhq256 --pyramids /mnt/shared/raydino/ffhq256/pyramids --out /mnt/shared/raydino/ffhq256/runs/train [--resume]

No logic here: the arguments go to `raydino train` unchanged (docs/cluster.md).
"""

import sys

from raydino.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
