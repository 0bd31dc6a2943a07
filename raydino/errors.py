"""Checks of what a user names on the command line, before any work starts.

Each failure is a :class:`UserError` whose text is one sentence: which flag
or file, what is wrong with it, what to do. The CLI prints it and exits 2,
and since nothing has been written yet, nothing is left half-written.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from raydino.config import MODEL_PATHS, Config, is_local, lookup


class UserError(ValueError):
    """Something the user named that cannot be used; the message says what to do."""


def _local(path: str) -> Path | None:
    """``path`` as a local Path, or None for a URI (checked when it is read)."""
    if "://" in path and not path.startswith("file://"):
        return None
    return Path(path.removeprefix("file://")).expanduser()


def require_run(path: str | Path, flag: str = "--run", finished: bool = True, prior: bool = False) -> Path:
    """A training run folder: ``config.yaml``, when ``finished`` ``generator.safetensors``, when ``prior`` its prior."""
    from raydino.layout import Run

    run = Path(path)
    hint = "pass the folder `raydino train --out` wrote (OUT/runs/train after `raydino run`)"
    if not run.is_dir():
        raise UserError(f"{flag} {run}: no such folder: {hint}")
    missing = [p.name for p in (Run(run).config, Run(run).generator if finished else None) if p and not p.is_file()]
    if missing:
        raise UserError(f"{flag} {run} is not a {'finished ' if finished else ''}training run (no "
                        f"{' or '.join(missing)} in it): {hint}" + (", and let the training finish" if finished else ""))
    if prior and not Run(run).prior.is_file():
        raise UserError(f"{flag} {run} has no flow prior ({Run(run).prior.name} missing): train one with "
                        f"`raydino train-prior --run {run} --pyramids PYRAMIDS` (`raydino run` does)")
    return run


def require_port(host: str, port: int) -> None:
    """A port this machine can listen on at ``host``: probed by binding it, then let go."""
    import socket

    if not 1 <= port <= 65535:
        raise UserError(f"--port {port}: a port is a number from 1 to 65535")
    try:
        with socket.socket() as probe:
            probe.bind((host, port))
    except OSError as exc:
        raise UserError(f"--port {port}: cannot listen on {host}:{port} ({exc.strerror or exc}): pick another port, "
                        "or stop what holds it") from None


def require_writable(path: str | Path, flag: str = "--out") -> Path:
    """A folder this process can create or write in: probed with a temporary file that is removed at once."""
    folder = Path(path).expanduser().absolute()
    probe = folder
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise UserError(f"{flag} {path}: {probe} is a file, not a folder: choose another {flag}")
    try:
        fd, name = tempfile.mkstemp(prefix=".raydino-probe-", dir=probe)
        os.close(fd)
        os.unlink(name)
    except OSError as exc:
        raise UserError(f"{flag} {path}: cannot write in {probe} ({exc.strerror}): choose a folder you can "
                        "write to") from None
    return folder


def require_pyramid(path: str | Path, flag: str = "--pyramids") -> dict:
    """A finished feature pyramid (:func:`raydino.pyramids.schema.finished_manifest`) whose shards open; its manifest.

    Each shard's parquet footer is read (a few ms each): a truncated or
    overwritten shard is named here, before Ray starts, rather than by a
    reader on a worker. Bytes corrupted inside a shard's pages are found
    while training reads them (:func:`raydino.train.runtime.check_inputs`).
    """
    import pyarrow.parquet as pq

    from raydino.pyramids import schema

    pyramid = Path(path)
    hint = "pass a folder `raydino pyramids --out` wrote (OUT/pyramids or OUT/pyramids-val after `raydino run`)"
    if not pyramid.is_dir():
        raise UserError(f"{flag} {pyramid}: no such folder: {hint}")
    manifest = schema.manifest_path(pyramid)
    if not manifest.is_file():
        raise UserError(f"{flag} {pyramid} is not a feature pyramid (no {manifest.name} in it): {hint}")
    try:
        readable = isinstance(schema.read_manifest(pyramid), dict)
    except ValueError:
        readable = False
    if not readable:
        raise UserError(f"{flag} {pyramid}: its {manifest.name} is not a pyramid manifest (not a JSON object): "
                        f"{hint}, or recompute it with `raydino pyramids --overwrite`")
    if schema.finished_manifest(pyramid) is None:
        raise UserError(f"{flag} {pyramid} is a pyramid whose extraction failed (see the failures in {manifest}): "
                        "fix or remove the bad images and run `raydino pyramids` again")
    done = schema.read_manifest(pyramid)
    rows = 0
    for shard in schema.shard_files(pyramid):
        try:
            rows += pq.read_metadata(shard).num_rows
        except (OSError, ValueError) as exc:
            raise UserError(f"{flag} {pyramid}: shard {shard} cannot be read ({str(exc).splitlines()[0]}): recompute "
                            "the pyramid with `raydino pyramids --overwrite`") from None
    if rows != done["rows"]:
        raise UserError(f"{flag} {pyramid}: its shards hold {rows} rows, its {manifest.name} says {done['rows']}: "
                        "recompute the pyramid with `raydino pyramids --overwrite`")
    return done


def require_images(src: str, flag: str = "--images", min_side: int = 1, max_pixels: int = 89_478_485) -> int:
    """An image source with at least one image that decodes; returns how many image files it lists.

    Local folders are checked fully here (the first file that decodes ends
    the check, so a good folder costs one decode); a URI is listed, and its
    files are judged by the extraction.
    """
    from raydino.data.images import UnreadableImage, read_image
    from raydino.data.sources import list_images

    hint = "point it at a folder of JPEG, PNG, WebP, BMP, GIF or TIFF images"
    local = _local(src)
    if local is not None and not local.exists() and not any(c in src for c in "*?["):
        raise UserError(f"{flag} {src}: no such folder: check the path ({hint})")
    try:
        listing = list_images(src)
    except (FileNotFoundError, NotADirectoryError, OSError) as exc:
        raise UserError(f"{flag} {src} cannot be listed ({exc}): {hint}") from None
    if not listing.images:
        ignored = sum(listing.ignored.values()) + len(listing.failures)
        what = f"only {ignored} other {'entry' if ignored == 1 else 'entries'}" if ignored else "nothing"
        raise UserError(f"{flag} {src} holds no image file ({what}): {hint}")
    if local is None:
        return len(listing.images)
    reasons: dict[str, int] = {}
    for path in listing.images:
        try:
            read_image(path, 16, min_side=min_side, max_pixels=max_pixels)
            return len(listing.images)
        except UnreadableImage as exc:
            reasons[exc.kind] = reasons.get(exc.kind, 0) + 1
    counts = ", ".join(f"{k} {v}" for k, v in sorted(reasons.items()))
    raise UserError(f"{flag} {src}: none of its {len(listing.images)} image files can be read ({counts}): {hint}")


def require_models(cfg: Config) -> None:
    """Every local model directory the run loads is there, or is one the demo's tiny-models step writes."""
    from raydino.layout import Output

    written = Output(cfg.out).models if cfg.tiny.build else None
    for key in MODEL_PATHS:
        spec = lookup(cfg, key)
        local = spec.removeprefix("local-dir:").removeprefix("file://")
        if not is_local(local):
            require_cached(key, spec)
            continue
        path = Path(local).expanduser()
        if written is not None and path.resolve().is_relative_to(written.resolve()):
            continue
        if not path.is_dir():
            raise UserError(f"{key}={spec}: no model directory there: download the weights into it "
                            "(docs/offline.md), or name a hub id or another directory with "
                            f"`raydino run ... {key}=...`")


def require_cached(key: str, spec: str) -> None:
    """With ``HF_HUB_OFFLINE=1``, a hub id (DINOv2 ``org/name``, CLIP ``hf-hub:org/name``) must be in the cache.

    Checked through ``huggingface_hub``'s own cache lookup, so ``HF_HOME`` and
    ``HF_HUB_CACHE`` mean what they mean to the loaders. open_clip's
    ``NAME:TAG`` ids are resolved by open_clip itself and not checked here.
    """
    from huggingface_hub import constants, try_to_load_from_cache

    if not constants.HF_HUB_OFFLINE or ":" in spec.removeprefix("hf-hub:") or spec.count("/") != 1:
        return
    clip = spec.startswith("hf-hub:")
    repo, config = spec.removeprefix("hf-hub:"), "open_clip_config.json" if clip else "config.json"
    if not isinstance(try_to_load_from_cache(repo, config), str):
        raise UserError(f"{key}={spec} is not in the Hugging Face cache {constants.HF_HUB_CACHE} and HF_HUB_OFFLINE=1 "
                        "forbids downloading it: download it there first on a machine with network "
                        "(docs/offline.md), or name a local directory")
