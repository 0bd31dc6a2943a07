"""Ray job entry point for `raydino pyramids`: DINOv2 feature pyramids of an image folder or bucket.

    ray job submit --runtime-env cluster/runtime_env.yaml -- \
        python jobs/pyramids.py --preset ffhq256 --images s3://BUCKET/ffhq --out /mnt/shared/raydino/ffhq256/pyramids

No logic here: the arguments go to `raydino pyramids` unchanged (docs/cluster.md).
"""

import sys

from raydino.cli import main

if __name__ == "__main__":
    sys.exit(main(["pyramids", *sys.argv[1:]]))
