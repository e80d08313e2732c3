"""`interlace-operator` / `python -m interlace_operator`: run the kopf operator.

kopf runs standalone (no kopf peering objects). One replica, or several with
INTERLACE_LEADER_ELECTION=true: every replica watches, only the holder of a coordination.k8s.io Lease
reconciles (`interlace_operator.leader`); a replica that loses the Lease exits with status 1 so its
pod restarts as a standby. Configuration is by environment, see `interlace_operator.config`.
"""

from __future__ import annotations

import logging
import sys

import kopf

from interlace_operator.config import OperatorConfig


def main() -> int:
    config = OperatorConfig.from_env()
    logging.basicConfig(
        level=config.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # The kubernetes client logs every retry of a dropped connection at WARNING; keep them at DEBUG.
    logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)
    # kopf logs every handler call at INFO ("Handler 'prunejob_event' succeeded"): noise at scale.
    if logging.getLogger().level > logging.DEBUG:
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    from interlace_operator import handlers  # registers the handlers

    liveness = f"http://0.0.0.0:{config.health_port}/healthz" if config.health_port else None
    kopf.run(
        standalone=True,
        clusterwide=config.clusterwide,
        namespaces=list(config.namespaces),
        liveness_endpoint=liveness,
        # kopf's default identity asks the passwd database for the user name, which fails for a uid
        # without an entry (OpenShift's random uids; any image without a passwd line for it).
        # kopf's Identity is a NewType of str that kopf does not export.
        identity=config.identity,  # type: ignore[arg-type]
    )
    if handlers.LOST_LEADERSHIP.is_set():
        logging.getLogger("interlace_operator").error("exiting: this replica lost the leader Lease")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
