"""Ray job entry point for `raydino train-prior`: the flow prior over coarse codes with Ray Train.

    ray job submit --runtime-env cluster/runtime_env.yaml -- \
        python jobs/train_prior.py --run /mnt/shared/raydino/ffhq256/runs/train --pyramids /mnt/shared/raydino/ffhq256/pyramids [--resume]

No logic here: the arguments go to `raydino train-prior` unchanged (docs/cluster.md).
"""

import sys

from raydino.cli import main

if __name__ == "__main__":
    sys.exit(main(["train-prior", *sys.argv[1:]]))
