"""Reporter sinks that need optional dependencies.

`interlace.reporter.kube` pushes stage, progress, plan and results into the PruneJob's status from
inside the Ray job (optional `kubernetes` dependency, imported only when the job runs in Kubernetes).
The dependency-free sinks live in `interlace.progress`.
"""
