"""The finetune stage: the Ray Train driver and worker loop (train) and which parameters learn (freeze)."""
