"""Giving back the worker placement groups of a sweep's stopped trials, through Ray's public API.

When ASHA stops a trial, Tune ends the trial's actor and with it the Ray Train
controller that actor owns. The controller's placement group belongs to the
job, so Ray keeps it, and its CPUs, until the driver exits
(ray-project/ray#54305). Ray Train's ``PlacementGroupCleaner``
(ray-project/ray#58515) frees it once the state API reports the controller
dead, but the dashboard serves that API: on a busy head it takes minutes,
without a dashboard it never happens, and later trials wait for CPUs nobody
uses. So each trial's rank 0 records its group in the trial's folder
(:func:`raydino.train.trainer.record_placement_group`) and the sweep removes
the recorded groups of the trials that have ended.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

import ray
from ray import tune
from ray.util import placement_group_table
from ray.util.placement_group import PlacementGroup, remove_placement_group

from raydino.layout import Run, Sweep

log = logging.getLogger(__name__)


def held(runs: Iterable[Run]) -> set[str]:
    """The placement groups the runs recorded that Ray still holds (ids in hex)."""
    recorded = {pg for run in runs if run.placement_groups.is_file()
                for pg in run.placement_groups.read_text().split()}
    if not recorded:
        return set()
    table = placement_group_table()
    return {pg for pg in recorded if pg in table and table[pg]["state"] != "REMOVED"}


def give_back(runs: Iterable[Run]) -> set[str]:
    """Remove the groups the (ended) runs recorded that Ray still holds; return their ids."""
    groups = held(runs)
    for pg in groups:
        remove_placement_group(PlacementGroup(ray.PlacementGroupID.from_hex(pg)))
        log.info("gave back placement group %s of an ended trial", pg)
    return groups


def wait_released(runs: list[Run], grace_s: float = 5.0, quiet_s: float = 2.0, timeout_s: float = 60.0) -> set[str]:
    """Give back the runs' groups once their trials have had ``grace_s`` to end; return those held at ``timeout_s``.

    Tune ends the trials' actors a moment after the sweep returns. A group
    removed before its controller is gone costs the controller its workers,
    and it answers by starting a new worker group; so nothing is removed
    before ``grace_s``, and the wait ends only when nothing recorded has been
    held for ``quiet_s``.
    """
    start = quiet_since = time.monotonic()
    while True:
        now = time.monotonic()
        if (left := held(runs)) and now - start >= grace_s:
            give_back(runs)
            left = held(runs)
        if left:
            quiet_since = now
        elif now - quiet_since >= quiet_s:
            return set()
        if now - start > timeout_s:
            return left
        time.sleep(0.5)


class GiveBack(tune.Callback):
    """Gives back the groups of trials that ended at least ``grace_s`` ago, every ``every_s`` of a sweep.

    The grace lets Tune end the trial's actor first, so its controller is
    gone and cannot answer the removal by starting a new worker group
    (:func:`wait_released`).
    """

    def __init__(self, sweep_dir: str, grace_s: float = 5.0, every_s: float = 2.0):
        self.sweep_dir, self.grace_s, self.every_s = sweep_dir, grace_s, every_s
        self.ended: dict[str, float] = {}  # trial id -> when it ended (time.monotonic)
        self.last = 0.0

    def setup(self, **info) -> None:
        # a restored sweep brings clock readings from another process (or machine): its ended trials are past grace
        self.last, self.ended = 0.0, dict.fromkeys(self.ended, float("-inf"))

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        self.ended[trial.trial_id] = time.monotonic()

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        self.ended[trial.trial_id] = time.monotonic()

    def on_step_end(self, iteration: int, trials: list, **info) -> None:
        now = time.monotonic()
        if now - self.last > self.every_s:
            self.last = now
            sweep = Sweep(self.sweep_dir)
            give_back([sweep.trial(t) for t, at in self.ended.items() if now - at >= self.grace_s])
