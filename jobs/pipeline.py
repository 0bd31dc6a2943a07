"""Ray job entry point for `raydino run`: the whole pipeline, finished steps skipped on a rerun.

    ray job submit --runtime-env cluster/runtime_env.yaml -- \
        python jobs/pipeline.py --preset ffhq256 --out /mnt/shared/raydino/ffhq256

No logic here: the arguments go to `raydino run` unchanged (docs/cluster.md).
"""

import sys

from raydino.cli import main

if __name__ == "__main__":
    sys.exit(main(["run", *sys.argv[1:]]))
