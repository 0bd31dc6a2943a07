"""DINOv2 feature pyramids: decoding, the Ray Data extraction, the on-disk schema."""
