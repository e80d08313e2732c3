"""The pipeline's stages, one package or module per verb, in the order a PruneJob runs them:

    analyze/    calibration batches -> pack-k similarity scores (LayerScores, scores.json, heatmap)
    plan.py     scores -> LayerPlan (drop / finetune / anchor / frozen) by a strategy
    prune.py    model + plan -> pruned checkpoint (layer surgery)
    finetune/   interleaved finetuning on Ray Train (train.py) of the plan's finetune layers (freeze.py)
    evaluate/   perplexity, benchmarks, speed -> Results
    publish/    the model and artifacts to a directory, a PVC, S3 or the Hub

A stage imports the stages before it at most for their outputs' types, never the ones after it.
The orchestration of stages (what runs where, in which order) is interlace.pipeline.
"""
