"""``scratchllm.hf`` is ``scratchllm.io.hf``, its home since the packages by concern (docs/architecture.md):
the same module object, so every name, and a test's monkeypatch of one, reaches the real module."""

import sys

from .io import hf

sys.modules[__name__] = hf
