"""Orchestration of the stages for a whole PruneJob: one run (run), the stages as Ray tasks
(remote), a ratio sweep (sweep), a retention target (target) and the offline check of a job
(validate)."""
