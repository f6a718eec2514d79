"""Typer sub-apps, one per area (kept outside the area packages so `neuroattn --help` stays fast)."""
