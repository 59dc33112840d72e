"""``scratchllm.checkpoint`` is ``scratchllm.io.checkpoint``, its home since the packages by concern (docs/architecture.md):
the same module object, so every name, and a test's monkeypatch of one, reaches the real module."""

import sys

from .io import checkpoint

sys.modules[__name__] = checkpoint
