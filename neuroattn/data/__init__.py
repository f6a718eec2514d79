"""Synthetic data with planted ground truth: multi-site MRI cohorts and fMRI."""
