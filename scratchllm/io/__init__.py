"""Files in and out: scratchllm checkpoints (``checkpoint.py``), Hugging Face GPT-2 directories (``hf.py``) and
GPT-2's tokenizer files (``gpt2_files.py``). Nothing is ever unpickled. ``scratchllm.checkpoint`` and
``scratchllm.hf`` are kept as public aliases of the modules here."""
