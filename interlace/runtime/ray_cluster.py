"""Joining or starting the Ray cluster the stages run on."""

from __future__ import annotations

import contextlib
import os

from interlace.settings import settings


def start_ray(*, local: bool = False, attempts: int = 3) -> None:
    """`ray.init()` (the cluster RAY_ADDRESS names, else a new local one), retried.

    On a busy machine a new local Ray node can fail to start: the raylet waits a fixed ~15 s for its
    dashboard agent to write a port file and aborts if the agent is still importing. A failed
    attempt's leftover processes (children of this process) are ended before the next attempt.
    """
    import logging

    import psutil
    import ray

    os.environ.setdefault("RAY_agent_register_timeout_ms", "300000")
    if ray.is_initialized():
        return
    # A RayJob's driver joins the cluster RAY_ADDRESS names and keeps that job's runtime env as it is.
    joining = not local and bool(settings().ray_address)
    me = psutil.Process()
    for attempt in range(1, attempts + 1):
        before = {p.pid for p in me.children(recursive=True)}
        try:
            ray.init(
                address="local" if local else None,
                include_dashboard=False if local else None,
                runtime_env=None if joining else {"worker_process_setup_hook": f"{__name__}.quiet_local_workers"},
            )
            return
        except Exception as err:  # Ray raises plain Exception for a node that did not come up
            if attempt == attempts:
                raise
            logging.getLogger(__name__).warning("ray.init failed (%s); retrying", str(err).splitlines()[0])
            with contextlib.suppress(Exception):
                ray.shutdown()
            leftovers = [p for p in me.children(recursive=True) if p.pid not in before]
            for p in leftovers:
                with contextlib.suppress(psutil.Error):
                    p.kill()
            psutil.wait_procs(leftovers, timeout=10)


def quiet_local_workers() -> None:
    """Ray worker set-up hook when start_ray starts (or finds) a cluster on this machine.

    Ray Train's PlacementGroupCleaner asks the State API every few seconds whether the controller is
    alive and, without a dashboard, logs a warning each time (dozens of lines per run). On a local
    cluster it has nothing to clean up that the end of the driver does not: the whole cluster dies
    with the process. A RayJob's driver (RAY_ADDRESS set) does not install this hook: there the head
    runs the dashboard and the check works.
    """
    import logging

    logging.getLogger("ray.train.v2._internal.execution.controller.placement_group_cleaner").setLevel(
        logging.ERROR
    )
