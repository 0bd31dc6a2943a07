"""What every training loop here shares around its step: the data position, the NaN guard, fault injection.

The generator's loop (``loop.py``) and the prior's (``prior_loop.py``) both
read batches from a :class:`~raydino.train.session.Session` from a
checkpointed position, skip and count non-finite steps, and can kill a
worker once on purpose to prove that a restart resumes bit for bit.
"""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.distributed as dist

from raydino.train.checkpoint import Progress
from raydino.train.session import Session

log = logging.getLogger(__name__)
FAULT_MARKER = ".fault_injected"


def all_finite(*values: torch.Tensor) -> bool:
    """True when every value is finite on every rank (one tiny all-reduce under DDP)."""
    ok = torch.stack([torch.isfinite(v.detach().float()).all() for v in values]).all().float()
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(ok, op=dist.ReduceOp.MIN)
    return bool(ok.item())


def optimizer_step(loss: torch.Tensor, params, opt: torch.optim.Optimizer,
                   grad_clip: float) -> tuple[bool, torch.Tensor]:
    """Backprop ``loss``, clip, and step unless the loss or the gradient is non-finite on any rank.

    Returns ``(ok, grad_norm)``; a skipped step is the caller's to count
    (:func:`check_bad_steps`). Under DDP the gradients are already averaged
    when ``clip_grad_norm_`` reads them, so every rank takes the same decision.
    """
    opt.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(params, grad_clip)
    ok = all_finite(loss, grad_norm)
    if ok:
        opt.step()
    return ok, grad_norm


def inputs_finite(values: list[torch.Tensor]) -> bool:
    """Whether this step's pyramid rows are finite on every rank (one tiny all-reduce).

    Rows with NaN/inf can only come from a shard damaged after extraction;
    every rank learns it at the same step, so all of them stop together and
    the driver names the shard (:func:`raydino.pyramids.schema.nonfinite_shards`)
    instead of the failure policy retrying a run that would meet the same rows.
    """
    return all_finite(*values)


class NonFiniteLossError(RuntimeError):
    """Too many steps in a row with a non-finite loss or gradient."""


def data_stream(session: Session, progress: Progress, batch_size: int) -> Iterator[dict[str, torch.Tensor]]:
    """Batches from ``progress``'s position on, epoch after epoch; the caller advances ``epoch_batch``."""
    while True:
        batches = session.batches(progress.epoch, batch_size)
        yielded = False
        for batch in itertools.islice(batches, progress.epoch_batch, None):
            yielded = True
            yield batch
        if not yielded and progress.epoch_batch == 0:
            raise ValueError(f"worker {session.rank} has fewer than {batch_size} rows: "
                             "lower the batch size or use fewer workers")
        progress.epoch, progress.epoch_batch = progress.epoch + 1, 0


def check_bad_steps(progress: Progress, max_bad_steps: int, where: str, section: str) -> None:
    """A skipped step is logged; ``max_bad_steps`` of them in a row stop the run (``section``: whose limit it is)."""
    log.warning("step %d: non-finite loss or gradient, update skipped (%d in a row)", progress.step,
                progress.bad_in_row)
    if progress.bad_in_row >= max_bad_steps:
        raise NonFiniteLossError(
            f"{progress.bad_in_row} steps in a row had a non-finite loss or gradient (up to step {progress.step}, "
            f"{where}, {section}.max_bad_steps={max_bad_steps}): check the pyramid for NaN/inf values "
            "or lower the learning rate")


def inject_fault(run_dir: Path, step: int, fail_at_step: int, session: Session) -> None:
    """Kill the last worker once at ``fail_at_step`` (env ``RAYDINO_FAIL_AT_STEP``), to test recovery.

    It first waits until the checkpoints already reported are committed: a
    real crash within ~2 s of a report can also lose that checkpoint (Ray
    commits it when its controller next polls), which would make a drill's
    outcome depend on timing.
    """
    marker = run_dir / FAULT_MARKER
    if fail_at_step and step == fail_at_step and session.rank == session.world_size - 1 and not marker.exists():
        session.wait_for_checkpoints()
        marker.write_text(f"worker {session.rank} killed at step {step}\n")
        log.warning("fault injection: killing worker %d at step %d", session.rank, step)
        os._exit(1)
