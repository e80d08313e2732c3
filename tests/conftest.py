"""Shared pytest configuration.

The real control plane (kube-apiserver, etcd, controller-manager, scheduler, kwok, KubeRay) comes
from the plugin in tests/cluster/fixtures.py; it is started once per session, lazily, by the first
test that asks for it.
"""

pytest_plugins = ["tests.cluster.fixtures", "tests.budget"]
