"""The worked fine-tuning task of docs/finetune.md: summarise a function in its docstring's first line.

Pre-trains the ``cpu`` preset on the default corpus (or reuses ``--pretrained``), writes the pairs with
``scratchllm data docstrings``, fine-tunes on them with ``--format=pairs``, and reports on the held-out modules:
the loss on response tokens before and after (``evaluate.response_loss``), ROUGE-L of greedy replies against the
real first lines, two baselines, sample docstrings, and every wall time.

    python benchmarks/docstrings_task.py [--work runs/docstrings] [--pretrained DIR] [--finetuned DIR]
                                         [--iters 3000] [--limit N] [--markdown benchmarks/results/docstrings.md]
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from scratchllm.evaluate import replies, response_loss, rouge_l
from scratchllm.io.checkpoint import resolve_checkpoint
from scratchllm.io.pretrained import fit_vocabulary, load_pretrained
from scratchllm.text.pairs import END_CHAR, encode_pairs, render, split_examples


def scratchllm(*args) -> float:
    """Run ``scratchllm ARGS`` as a user would (its default data parallelism); the wall time in seconds. A failure
    ends the script with one line (the command's own error is above it)."""
    t = time.perf_counter()
    if subprocess.run([sys.executable, "-m", "scratchllm", *args]).returncode:
        sys.exit(f"docstrings_task.py: `scratchllm {' '.join(args[:2])} ...` failed: its error is above")
    return time.perf_counter() - t


def name_words(function: str) -> str:
    """A baseline reply: the function's name as words (``Foo._get_item_count`` -> "get item count")."""
    name = function.rsplit(".", 1)[-1].strip("_")
    return " ".join(re.sub(r"([a-z])([A-Z])", r"\1 \2", name).replace("_", " ").split())


def measure(model, tokenizer, train, val, prompts, refs, max_new_tokens):
    """Response loss on val (all of it) and the replies' ROUGE-L, for one model."""
    text = "".join(t for ex in train + val for t, _ in render(ex, END_CHAR))
    tokenizer, _ = fit_vocabulary(model, tokenizer, text)  # as train --init_from does: the vocabulary it starts from
    tokens, mask = encode_pairs(val, tokenizer)
    t = time.perf_counter()
    loss = response_loss(model, tokens, mask, model.context)
    t_loss = time.perf_counter() - t
    t = time.perf_counter()
    raw = replies(model, tokenizer, prompts, max_new_tokens)
    outs = [o.strip() for o in raw]
    stopped = sum(len(tokenizer.encode(o)) < max_new_tokens for o in raw) / len(raw)  # ended by the end token
    # (a reply's tokens counted by encoding it again: exact for characters, near for BPE)
    return {"loss": loss, "rouge_l": rouge_l(outs, refs), "stopped": stopped, "replies": outs, "loss_s": t_loss,
            "reply_s": time.perf_counter() - t}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default="runs/docstrings", help="where the pairs, the runs and results.json go")
    ap.add_argument("--pretrained", help="a run or Hugging Face directory to start from (default: pre-train the "
                                         "cpu preset in WORK/pre)")
    ap.add_argument("--finetuned", help="a fine-tuned run to evaluate (default: fine-tune one in WORK/ft)")
    ap.add_argument("--block_size", type=int, default=64, help="the pre-training window (the cpu preset's: 64)")
    ap.add_argument("--iters", type=int, default=3000, help="fine-tuning steps")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--max_new_tokens", type=int, default=100)
    ap.add_argument("--max_source_chars", type=int, default=1000, help="scratchllm data's (default: %(default)s)")
    ap.add_argument("--extra", default="", help="more --key=value for both training runs, e.g. '--nproc=1'")
    ap.add_argument("--limit", type=int, default=0, help="reply to only this many held-out functions (0: all)")
    ap.add_argument("--markdown", help="write the report here")
    a = ap.parse_args()
    for name in ("pretrained", "finetuned"):
        if getattr(a, name) and not Path(getattr(a, name)).is_dir():
            ap.error(f"--{name}={getattr(a, name)} is not a directory")
    if a.limit < 0 or a.iters < 1 or a.max_new_tokens < 1 or a.block_size < 1:
        ap.error("--limit must be >= 0, --iters, --max_new_tokens and --block_size >= 1")
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    times = {}
    pairs = work / "pairs.jsonl"
    times["data"] = scratchllm("data", "docstrings", f"--out={pairs}", f"--max_source_chars={a.max_source_chars}")
    pre = Path(a.pretrained) if a.pretrained else work / "pre"
    if not a.pretrained:
        times["pre-training (the cpu preset)"] = scratchllm(
            "train", "--preset=cpu", f"--block_size={a.block_size}", f"--out_dir={pre}", "--progress=false",
            *a.extra.split())
    ft = Path(a.finetuned) if a.finetuned else work / "ft"
    if not a.finetuned:
        times["fine-tuning"] = scratchllm(
            "train", f"--init_from={pre}", f"--data={pairs}", "--format=pairs", f"--out_dir={ft}",
            f"--max_iters={a.iters}", f"--lr_decay_iters={a.iters}", f"--learning_rate={a.lr}", f"--min_lr={a.lr / 10}",
            f"--warmup_iters={min(100, a.iters // 10)}", f"--eval_interval={max(1, a.iters // 6)}", "--progress=false",
            *a.extra.split())
    run = json.loads((resolve_checkpoint(ft) / "config.json").read_text())["train"]  # what was actually run
    train, val, _ = split_examples(pairs)
    rows = [json.loads(line) for line in pairs.read_text(encoding="utf-8").splitlines()]
    val_rows = [r for r in rows if r["split"] == "val"]
    held = val_rows[:a.limit or None]
    prompts, refs = [r["prompt"] for r in held], [r["response"] for r in held]
    before = measure(*load_pretrained(str(pre)), train, val, prompts, refs, a.max_new_tokens)
    model, tokenizer = load_pretrained(str(ft))
    unit = "char" if hasattr(tokenizer, "extended") else "token"
    after = measure(model, tokenizer, train, val, prompts, refs, a.max_new_tokens)
    common = Counter(r["response"] for r in rows if r["split"] == "train").most_common(1)[0][0]
    baselines = {"the function's name as words": rouge_l([name_words(r["function"]) for r in held], refs),
                 f"always {common!r} (the most common train line)": rouge_l([common] * len(refs), refs)}
    picks = list({i * len(held) // 8: held[i * len(held) // 8] for i in range(8)}.values())
    result = {"pairs": len(rows), "val": len(val), "replied": len(held),
              "val_modules": len({r["module"] for r in val_rows}), "pretrained": "the cpu preset" if not a.pretrained
              else str(pre), "unit": unit, "context": model.context, "iters": run["max_iters"],
              "lr": run["learning_rate"], "batch_size": run["batch_size"], "python": platform.python_version(),
              "before": before, "after": after, "baselines": baselines, "times_s": times,
              "references": refs, "functions": [f"{r['module']}.{r['function']}" for r in held],
              "samples": [{"function": f"{p['module']}.{p['function']}", "real": p["response"],
                           "before": before["replies"][held.index(p)], "after": after["replies"][held.index(p)]}
                          for p in picks]}
    (work / "results.json").write_text(json.dumps(result, indent=1))
    md = report(result)
    print(md)
    if a.markdown:
        Path(a.markdown).write_text(md, encoding="utf-8")


def report(r: dict) -> str:
    b, f, t, u = r["before"], r["after"], r["times_s"], r["unit"]
    lines = [f"# The docstring task (Python {r['python']}'s standard library)", "",
             f"{r['pairs']} pairs; held out: {r['val']} functions of {r['val_modules']} modules the pre-training "
             f"corpus does not read (ROUGE-L over {r['replied']} of them). Started from {r['pretrained']}, a context "
             f"of {r['context']} {u}s; fine-tuned {r['iters']} steps at lr {r['lr']:g}, batch {r['batch_size']}.",
             "", f"| model | response val loss (nats/{u}) | ROUGE-L F1 (greedy) | replies that stopped |",
             "|---|---|---|---|",
             f"| pre-trained only ({r['pretrained']}) | {b['loss']:.3f} | {b['rouge_l']:.3f} | {b['stopped']:.0%} |",
             f"| fine-tuned on the pairs | {f['loss']:.3f} | {f['rouge_l']:.3f} | {f['stopped']:.0%} |"]
    lines += [f"| baseline: {name} | | {v:.3f} | |" for name, v in r["baselines"].items()]
    lines += ["", "| step | wall time |", "|---|---|"]
    lines += [f"| {k} | {v:.1f} s |" for k, v in t.items()]
    lines += [f"| evaluation of the {w} model: the response loss, {r['replied']} greedy replies | "
              f"{m['loss_s']:.1f} s + {m['reply_s']:.1f} s |" for w, m in (("pre-trained", b), ("fine-tuned", f))]
    lines += ["", "| held-out function | real first line | fine-tuned model's |", "|---|---|---|"]
    lines += [f"| `{s['function']}` | {s['real']} | {s['after']} |".replace("\n", " ") for s in r["samples"]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
