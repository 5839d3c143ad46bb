"""The retraining pipeline's logic: parameters, steps, gate, registry (the KFP wiring is in pipelines/)."""
