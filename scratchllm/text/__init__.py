"""Text: tokenizers (char and byte-level BPE, ``tokenizer.py``), BPE training (``bpe_train.py``), GPT-2's byte
alphabet and vocabulary files (``gpt2_vocab.py``), and the corpus and its batches (``data.py``).
``scratchllm.tokenizer`` and ``scratchllm.data`` are kept as public aliases of the modules here."""
