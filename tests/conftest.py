"""Shared test setup: this folder is on ``sys.path`` so test files can import its support modules."""
