"""Ray job entry point for `raydino sample`: images from a trained run (no Ray inside).

    ray job submit --runtime-env cluster/runtime_env.yaml -- \
        python jobs/sample.py --run /mnt/shared/raydino/ffhq256/runs/train --prior --out /mnt/shared/raydino/ffhq256/samples/prior.png

No logic here: the arguments go to `raydino sample` unchanged (docs/cluster.md).
"""

import sys

from raydino.cli import main

if __name__ == "__main__":
    sys.exit(main(["sample", *sys.argv[1:]]))
