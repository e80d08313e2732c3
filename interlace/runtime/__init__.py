"""Where and how the stages run, and how they report: the Ray cluster (ray_cluster), placement and
memory checks (placement, costs), progress reporters (progress), the terminal view (console) and
the PruneJob status reporter inside Kubernetes (kube, the one module that imports `kubernetes`)."""
