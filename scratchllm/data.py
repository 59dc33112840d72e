"""``scratchllm.data`` is ``scratchllm.text.data``, its home since the packages by concern (docs/architecture.md):
the same module object, so every name, and a test's monkeypatch of one, reaches the real module."""

import sys

from .text import data

sys.modules[__name__] = data
