"""neuroattn: attention-based brain models for neuroimaging."""
__version__ = "0.1.0"
