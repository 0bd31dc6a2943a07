"""Placement groups a dead actor left behind, given back without the dashboard.

When ASHA stops a trial, Tune terminates the trial's actor, and with it the
Ray Train controller that actor owns. The controller's placement group (the
trial's training workers' CPUs) belongs to the job, not to the controller, so
Ray keeps it until the driver exits. Ray Train starts a PlacementGroupCleaner
for this, but the cleaner learns that the controller died by polling the state
API, which the dashboard serves: a busy head (or one without a dashboard) can
leave the group, and its CPUs, held for minutes while later trials wait.

The GCS itself records each group's creating actor, so the sweep asks it
directly. Ray keeps that record only in its internal protobuf
(``ray._private.state``, pinned by pyproject's ``ray<2.61``).
"""

from __future__ import annotations

import logging
import time

import ray
from ray import tune
from ray._private.state import state
from ray.core.generated import gcs_pb2
from ray.util.placement_group import PlacementGroup, remove_placement_group

log = logging.getLogger(__name__)


def live_groups() -> dict[str, bool]:
    """This job's live placement groups made by an actor: id (hex) -> is its creating actor dead.

    Groups the driver made (Tune's per-trial groups) and detached ones are
    left out: the GCS marks a driver's groups "creator dead" from the start.
    The group's own flag is not enough: a Train controller that is already
    exiting can still restart its worker group, and the group it makes then
    was registered after the GCS buried its creator, so the flag never turns.
    The actor table knows.
    """
    job = ray.get_runtime_context().get_job_id()
    groups = {}
    for raw in state._connect_and_get_accessor().get_placement_group_table():
        pg = gcs_pb2.PlacementGroupTableData.FromString(raw)
        creator = ray.ActorID(pg.creator_actor_id)
        if (pg.state == gcs_pb2.PlacementGroupTableData.REMOVED or pg.is_detached or pg.creator_job_id.hex() != job
                or creator.is_nil()):
            continue
        # an actor the table no longer holds is long dead: the GCS keeps only so many dead ones
        groups[pg.placement_group_id.hex()] = (pg.creator_actor_dead
                                               or state.actor_table(creator.hex()).get("State", "DEAD") == "DEAD")
    return groups


def release_orphans() -> list[str]:
    """Remove this job's placement groups whose creating actor is dead; return their ids."""
    orphans = [pg for pg, creator_dead in live_groups().items() if creator_dead]
    for pg in orphans:
        remove_placement_group(PlacementGroup(ray.PlacementGroupID.from_hex(pg)))
        log.info("gave back placement group %s: the actor that made it is gone", pg)
    return orphans


def wait_released(before: set[str], timeout_s: float = 30.0, quiet_s: float = 5.0) -> set[str]:
    """Release orphans until no group made since ``before`` has been live for ``quiet_s``.

    Returns the groups still held at ``timeout_s``. A stopped trial's
    controller dies a moment after its trial actor, and one that is exiting
    can still make a new group (see :func:`live_groups`) after the sweep has
    returned: seen 0.1 s after, hence the quiet time rather than one look.
    """
    start = quiet_since = time.monotonic()
    while True:
        release_orphans()
        left = set(live_groups()) - before
        now = time.monotonic()
        if left:
            quiet_since = now
        elif now - quiet_since >= quiet_s:
            return set()
        if now - start > timeout_s:
            return left
        time.sleep(0.5)


class GiveBack(tune.Callback):
    """Releases orphans every few seconds of a sweep, so later trials get the CPUs of stopped ones."""

    def __init__(self, every_s: float = 2.0):
        self.every_s, self.last = every_s, 0.0

    def setup(self, **info) -> None:
        self.last = 0.0  # a restored sweep brings its old clock reading, from another process or machine

    def on_step_end(self, iteration: int, trials: list, **info) -> None:
        if time.monotonic() - self.last > self.every_s:
            self.last = time.monotonic()
            release_orphans()
