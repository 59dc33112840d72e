"""The commands that read and write models: ``generate``, ``convert`` and ``inspect`` (``cli.py`` parses the command
line and hands them its arguments), and the errors every command ends with."""

from __future__ import annotations

import sys

EXIT_FAIL, EXIT_USAGE = 1, 2
USAGE_ERRORS = (ValueError, TypeError, OSError)  # with BackendError: one line and exit 2 (bad input, a bad path)


class UsageError(Exception):
    """A bad command line: printed as one line, exit status 2."""


def cmd_generate(args) -> int:
    from .io.checkpoint import load_checkpoint
    from .generate import check_sampling, generate_text
    from .io.pretrained import is_hf_dir, load_pretrained

    check_sampling(args.max_new_tokens, args.temperature, args.top_k or None, args.top_p)  # before anything prints
    if args.hf:  # prompts are read as Hugging Face's GPT-2 tokenizer reads them: <|endoftext|> is special
        model, tokenizer = load_pretrained(_hf_dir(args.hf, "generate --hf"), backend=args.backend)
        special = "all" if getattr(tokenizer, "eot_id", None) is not None else None
    else:
        if is_hf_dir(args.ckpt):
            raise UsageError(f"scratchllm generate: {args.ckpt} is a Hugging Face directory: use --hf")
        (model, tokenizer, _), special = load_checkpoint(args.ckpt, backend=args.backend), None
    prompt = args.prompt.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    tokenizer.encode(prompt)  # a prompt the tokenizer cannot encode fails here, before anything is printed
    print(prompt, end="", flush=True)
    generate_text(model, tokenizer, prompt, args.max_new_tokens, args.temperature, args.top_k or None, args.top_p,
                  args.seed, stream=lambda piece: print(piece, end="", flush=True), allowed_special=special)
    print(flush=True)
    return 0


def _hf_dir(path, what):
    from .io.checkpoint import resolve_checkpoint
    from .io.hf import is_hf_dir

    if not is_hf_dir(path):
        try:
            resolve_checkpoint(path)
            hint = ": it is a scratchllm checkpoint, use --ckpt"
        except ValueError:
            hint = " (config.json with model_type 'gpt2' or 'llama', and model.safetensors)"
        raise UsageError(f"scratchllm {what}: {path} is not a Hugging Face directory{hint}")
    return path


def cmd_convert(args) -> int:
    from .io.checkpoint import check_output_dir, load_checkpoint, save_checkpoint
    from .io.gpt2_files import load_tokenizer_dir
    from .io.pretrained import load_hf_model, save_hf_model
    from .text.tokenizer import ByteBPETokenizer

    if bool(args.from_hf) == bool(args.ckpt):
        raise UsageError("scratchllm convert: give either --from_hf=DIR --out=CKPT_DIR or --ckpt=DIR --to_hf=OUT_DIR")
    if args.from_hf:
        if not args.out or args.to_hf:
            raise UsageError("scratchllm convert: --from_hf needs --out=CKPT_DIR (and no --to_hf)")
        check_output_dir(args.out, "--out", source=_hf_dir(args.from_hf, "convert --from_hf"), checkpoint_ok=True)
        model = load_hf_model(args.from_hf, dtype=args.dtype or "float32", backend="numpy")
        try:
            tokenizer = load_tokenizer_dir(args.tokenizer or args.from_hf)
        except FileNotFoundError as e:
            raise UsageError(f"scratchllm convert: {e}; name one with --tokenizer=PATH") from None
        if tokenizer.vocab_size > model.cfg.vocab_size:
            raise ValueError(f"the tokenizer has {tokenizer.vocab_size} tokens but the model only {model.cfg.vocab_size}")
        path = save_checkpoint(args.out, model, tokenizer)
        print(f"wrote scratchllm checkpoint {path} ({model.num_params():,} parameters, {tokenizer!r})", file=sys.stderr)
        return 0
    if not args.to_hf or args.out or args.tokenizer:
        raise UsageError("scratchllm convert: --ckpt needs --to_hf=OUT_DIR (and no --out or --tokenizer)")
    check_output_dir(args.to_hf, "--to_hf", source=args.ckpt)
    model, tokenizer, _ = load_checkpoint(args.ckpt, backend="numpy", dtype=args.dtype)
    bpe = isinstance(tokenizer, ByteBPETokenizer)
    path = save_hf_model(model, args.to_hf, tokenizer if bpe else None)
    note = "with vocab.json + merges.txt" if bpe else f"without tokenizer files ({type(tokenizer).__name__})"
    print(f"wrote Hugging Face {type(model).__name__} directory {path} {note}", file=sys.stderr)
    return 0


def cmd_chat(args) -> int:
    from . import chat
    from .generate import check_sampling
    from .io.pretrained import load_pretrained

    check_sampling(args.max_new_tokens, args.temperature, args.top_k or None, args.top_p)  # not once per line
    source = _hf_dir(args.hf, "chat --hf") if args.hf else args.ckpt
    model, tokenizer = load_pretrained(source, backend=args.backend)
    interactive = sys.stdin.isatty()
    if interactive:
        print("chat with the model: a line is your turn; /exit or Ctrl-D ends", file=sys.stderr)

    def write(text):
        print(text, end="", flush=True)

    return chat.run(model, tokenizer, iter(sys.stdin), write,
                    ask=(lambda: print("you> ", end="", file=sys.stderr, flush=True)) if interactive else None,
                    max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k or None,
                    top_p=args.top_p, seed=args.seed)


def cmd_inspect(args) -> int:
    from .inspect.report import write_report
    from .io.pretrained import load_pretrained

    if args.hf:
        model, tokenizer = load_pretrained(_hf_dir(args.hf, "inspect --hf"), backend="numpy")
    else:
        from .io.checkpoint import load_checkpoint

        model, tokenizer, _ = load_checkpoint(args.ckpt, backend="numpy")
    paths = write_report(model, tokenizer, args.prompt, args.out, target=args.target)
    print(f"wrote {', '.join(str(p) for p in paths)}", file=sys.stderr)
    return 0
