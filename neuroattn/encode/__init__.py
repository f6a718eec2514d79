"""Encoding models of visual cortex: ridge, BraInCoRL (in-context voxel encoders) and LaVCa (voxel captions)."""
