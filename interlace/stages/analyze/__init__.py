"""The analyze stage: calibration batches (calibration), the pack-k similarities in one process
(similarity) or data-parallel on Ray workers (sharded), the LayerScores they produce (scores) and the
heatmap of scores with a plan drawn on (heatmap)."""
