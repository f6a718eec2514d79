"""Reading, validating and writing volumes, cohort manifests and checkpoints."""
