"""Shared fixtures: tiny data and models made once per session, one Ray instance."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def faces_dir(tmp_path_factory):
    from raydino.data.synth_faces import write_faces

    return write_faces(tmp_path_factory.mktemp("faces"), count=48, seed=0, size=128)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """Tiny DINOv2 (+ FD twin) and an untrained tiny CLIP."""
    from raydino.models.tiny import write_tiny_models

    return write_tiny_models(tmp_path_factory.mktemp("models"), seed=0)


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray instance for the whole session (starting Ray costs seconds)."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
