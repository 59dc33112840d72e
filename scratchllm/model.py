"""``scratchllm.model`` is ``scratchllm.models.gpt``, its home since the packages by concern (docs/architecture.md):
the same module object, so every name, and a test's monkeypatch of one, reaches the real module."""

import sys

from .models import gpt

sys.modules[__name__] = gpt
