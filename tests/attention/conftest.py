"""Attention tests run FlexAttention eager: compiling takes ~15 s per shape on a CPU."""

from __future__ import annotations

import pytest

from neuroattn.attention.flex_backend import set_flex_compile


@pytest.fixture(autouse=True)
def _eager_flex():
    set_flex_compile(False)
    yield
    set_flex_compile(None)
