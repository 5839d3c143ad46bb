"""Kubeflow Pipelines wiring of the retraining pipeline; the logic it calls lives in ``musicrl.pipeline``."""
