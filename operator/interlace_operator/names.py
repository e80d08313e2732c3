"""Deterministic names and labels of a PruneJob's children.

Deterministic names are what make the operator restart-safe: the RayJob of attempt n is always
`<prunejob>-<n>`, so a restarted operator that lost track of what it did finds (and adopts) it with a
GET instead of creating a second one. Names too long for a Kubernetes (or KubeRay) limit are cut and
made unique again with a short hash of the full name.
"""

from __future__ import annotations

import hashlib
import re

from interlace.schema.spec import API_GROUP

LABEL_PRUNEJOB = f"{API_GROUP}/prunejob"
LABEL_ATTEMPT = f"{API_GROUP}/attempt"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_NAME = "app.kubernetes.io/name"
LABEL_COMPONENT = "app.kubernetes.io/component"
MANAGED_BY = "interlace-operator"
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"

# KubeRay derives the RayCluster, its services and pods from the RayJob name and refuses RayJob names
# longer than this.
RAYJOB_NAME_MAX = 47
DNS_SUBDOMAIN_MAX = 253
LABEL_VALUE_MAX = 63


def _short_hash(text: str, n: int = 6) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:n]


def fit(base: str, suffix: str, limit: int) -> str:
    """`base + suffix`, or a cut base plus a hash of the full base when that exceeds `limit`."""
    if len(base) + len(suffix) <= limit:
        return base + suffix
    keep = limit - len(suffix) - 7
    cut = re.sub(r"[-.]+$", "", base[:keep])
    return f"{cut}-{_short_hash(base)}{suffix}"


def rayjob_name(prunejob: str, attempt: int) -> str:
    return fit(prunejob, f"-{attempt}", RAYJOB_NAME_MAX)


def job_account_name(prunejob: str) -> str:
    """Name of the ServiceAccount, Role and RoleBinding of the job."""
    return fit(prunejob, "-job", DNS_SUBDOMAIN_MAX)


def status_token_name(prunejob: str) -> str:
    """Name of the Secret holding the per-job ServiceAccount's token when the pods run as a shared one."""
    return fit(prunejob, "-job-token", DNS_SUBDOMAIN_MAX)


def network_policy_name(prunejob: str) -> str:
    """Name of the NetworkPolicy that admits to the job's Ray pods only the job's own pods and KubeRay."""
    return fit(prunejob, "-ray", DNS_SUBDOMAIN_MAX)


def label_value(prunejob: str) -> str:
    """A PruneJob name as a label value (label values are at most 63 characters)."""
    return fit(prunejob, "", LABEL_VALUE_MAX)


def labels(prunejob: str, component: str) -> dict[str, str]:
    return {
        LABEL_NAME: "interlace",
        LABEL_MANAGED_BY: MANAGED_BY,
        LABEL_COMPONENT: component,
        LABEL_PRUNEJOB: label_value(prunejob),
    }
