"""Decoding images from fMRI: stimulus features, MindEye, Brain-IT, retrieval, reconstruction and metrics."""
