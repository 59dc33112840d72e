"""Fine-tuning a pre-trained model on pairs: a character vocabulary extended with new embedding rows, the
"split" key, the docstring task's pairs (scratchllm/text/docstrings.py), and the measures of evaluate.py."""

import ast
import json
import math
import sysconfig
import textwrap
from pathlib import Path

import numpy as np
import pytest

from scratchllm.models import GPT, GPTConfig, Llama, LlamaConfig
from scratchllm.text.pairs import END_CHAR, read_pairs, render, split_examples
from scratchllm.tokenizer import CharTokenizer


def llama(tied, V=11):
    cfg = LlamaConfig(vocab_size=V, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=16, tie_word_embeddings=tied)
    return Llama(cfg, seed=1, dtype="float64")


@pytest.mark.parametrize("make", [lambda: GPT(GPTConfig(11, 16, 1, 2, 8), seed=1, dtype="float64"),
                                  lambda: llama(True), lambda: llama(False)], ids=["gpt", "llama-tied", "llama"])
def test_resize_token_embeddings_keeps_every_old_row_and_adds_the_mean(make):
    model = make()
    before = {k: np.array(v) for k, v in model.params.items()}
    idx = np.random.default_rng(0).integers(0, 11, (2, 7))
    old_logits, _, _ = model.forward(idx)
    model.resize_token_embeddings(14)
    assert model.cfg.vocab_size == 14
    for k, v in model.params.items():
        if k in model.vocab_params:
            assert v.shape == (14, before[k].shape[1])
            np.testing.assert_array_equal(v[:11], before[k])
            np.testing.assert_allclose(v[11:], np.repeat(before[k].mean(0, keepdims=True), 3, 0), rtol=1e-14)
        else:
            np.testing.assert_array_equal(v, before[k])
    logits, _, cache = model.forward(idx, np.where(idx > 5, idx + 3, -1))
    np.testing.assert_allclose(logits[..., :11], old_logits, rtol=1e-12, atol=1e-14)  # old tokens: as before
    np.testing.assert_allclose(logits[..., 11], logits[..., :11].mean(-1), rtol=1e-10)  # the head's mean row
    grads = model.backward(cache)
    assert {k: g.shape for k, g in grads.items()} == {k: p.shape for k, p in model.params.items()}
    model.resize_token_embeddings(5)  # shrinking keeps the first rows
    np.testing.assert_array_equal(model.params[model.vocab_params[0]], before[model.vocab_params[0]][:5])
    for bad in (0, 2.5, True):
        with pytest.raises(ValueError, match="new_num_tokens must be an int >= 1"):
            model.resize_token_embeddings(bad)


def test_char_tokenizer_extended_appends_new_characters_and_keeps_every_id():
    tok = CharTokenizer.train("hello world")
    grown = tok.extended("hi\x04 wörld")
    assert grown.chars == tok.chars + sorted("i\x04ö") and grown.encode("hello") == tok.encode("hello")
    assert tok.extended("low") is tok


def write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_the_split_key_decides_the_split_and_is_checked(tmp_path):
    rows = [{"prompt": f"p{i}", "response": f"r{i}", "split": "val" if i in (0, 5) else "train"} for i in range(8)]
    train, val, how = split_examples(write(tmp_path / "a.jsonl", rows))
    assert [t[0][1] for t in val] == ["p0", "p5"] and len(train) == 6 and "lines say" in how
    train, val, how = split_examples(write(tmp_path / "b.jsonl", [{k: v for k, v in r.items() if k != "split"}
                                                                  for r in rows]))
    assert [t[0][1] for t in val] == ["p7"] and len(train) == 7 and "last tenth" in how
    with pytest.raises(ValueError, match="c.jsonl line 4: missing key 'split' \\(other lines have one\\)"):
        split_examples(write(tmp_path / "c.jsonl", rows[:3] + [{"prompt": "x", "response": "y"}]))
    with pytest.raises(ValueError, match="both splits need examples; its lines say 1 train, 0 val"):
        split_examples(write(tmp_path / "d.jsonl", rows[1:2]))
    for bad in ("test", None):
        with pytest.raises(ValueError, match="line 1: 'split' must be"):
            split_examples(write(tmp_path / "e.jsonl", [{**rows[0], "split": bad}]))
    with pytest.raises(ValueError, match="holds one example; it needs two or more"):
        split_examples(write(tmp_path / "f.jsonl", [{"prompt": "x", "response": "y"}]))
    with pytest.raises(ValueError, match="line 1: has both 'messages' and 'prompt'"):
        split_examples(write(tmp_path / "g.jsonl", [{"prompt": "x", "response": "y", "messages": []}]))
    with pytest.raises(ValueError, match="no such file"):
        split_examples(tmp_path / "missing.jsonl")


SOURCE = textwrap.dedent('''
    import functools

    def plain(a, b):
        """Add two numbers.

        More text.
        """
        return a + b

    @functools.cache
    def decorated(x):
        """Square it."""  # a comment after
        y = x * x
        return y

    def stub():
        """Only a docstring: left out."""

    def wrapped(a):
        """Return a summary that
        wraps onto a second line.

        Details.
        """
        return a

    def one_line(): "shares the line"; return 1

    def no_doc(x):
        return x

    class Box:
        def get(self):
            """Return the content."""
            def inner():
                """Nested: part of get's source."""
                return 1
            return inner()

        def page(self):
            """A string at column 0 inside."""
            return f"""<html>
    <body>{self}</body>"""
''')


def test_function_pairs_strip_the_docstring_and_keep_the_code():
    from scratchllm.text.docstrings import function_pairs

    pairs = function_pairs(SOURCE)
    assert [(n, first) for n, _, first in pairs] == [("plain", "Add two numbers."), ("decorated", "Square it."),
                                                     ("wrapped", "Return a summary that"),  # the first line
                                                     ("Box.get", "Return the content."),
                                                     ("Box.page", "A string at column 0 inside.")]
    code = dict((n, c) for n, c, _ in pairs)
    assert code["plain"] == "def plain(a, b):\n    return a + b"
    assert code["decorated"].startswith("@functools.cache\ndef decorated(x):\n    y = x * x")
    assert code["Box.get"].startswith("def get(self):\n    def inner():") and "Nested" in code["Box.get"]
    assert code["Box.page"] == 'def page(self):\n    return f"""<html>\n<body>{self}</body>"""'  # dedented, still Python
    for c in code.values():
        ast.parse(c)
    feed = 'x = 1\n\x0c\ndef f(a):\n    """Return the answer."""\n    y = a\n    return y\n'  # \f: not a line for ast
    assert function_pairs(feed) == [("f", "def f(a):\n    y = a\n    return y", "Return the answer.")]


def test_data_docstrings_writes_pairs_split_by_module_and_held_out_of_the_pretraining_corpus(tmp_path, capsys):
    from scratchllm import cli
    from scratchllm.text.data import stdlib_files
    from scratchllm.text.docstrings import _module, _summary

    out = tmp_path / "pairs.jsonl"
    assert cli.main(["data", "docstrings", f"--out={out}"]) == 0
    assert "val from" in capsys.readouterr().err
    examples = [json.loads(line) for line in out.read_text().splitlines()]
    assert all(set(e) == {"prompt", "response", "module", "function", "split"} and len(e["prompt"]) <= 1000
               for e in examples)
    val = [e for e in examples if e["split"] == "val"]
    assert len(examples) > 1000 and 0.03 < len(val) / len(examples) < 0.3
    train = [e for e in examples if e["split"] == "train"]
    assert not {e["module"] for e in val} & {e["module"] for e in train}
    assert not {e["prompt"] for e in val} & {e["prompt"] for e in train}  # no function, no summary in both
    assert not {e["response"] for e in val} & {e["response"] for e in train}
    root = Path(sysconfig.get_paths()["stdlib"])
    corpus = {_module(p, root) for p in stdlib_files()}  # the default corpus's modules
    assert corpus and not {e["module"] for e in val} & corpus
    text = "".join(p.read_text(encoding="utf-8", errors="replace") for p in stdlib_files())
    assert not any(e["response"] in text for e in val)  # no held-out summary was in the pre-training text
    for e in examples:
        tree = ast.parse(e["prompt"])
        assert ast.get_docstring(tree.body[0]) is None and _summary(e["response"])  # no docstring left
    for args in ([f"--out={tmp_path}"], [f"--out={tmp_path / 'no' / 'p.jsonl'}"], [f"--out={out}", "--max_source_chars=0"]):
        assert cli.main(["data", "docstrings", *args]) == 2
        assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_data_docstrings_refuses_an_empty_split(tmp_path, monkeypatch, capsys):
    from scratchllm import cli
    from scratchllm.text import docstrings

    monkeypatch.setattr(docstrings, "docstring_examples", lambda *a: [{"prompt": "p", "response": "r", "split": "train"}])
    assert cli.main(["data", "docstrings", f"--out={tmp_path / 'p.jsonl'}", "--max_source_chars=10"]) == 2
    assert "leaves 1 train and 0 val pairs" in capsys.readouterr().err and not (tmp_path / "p.jsonl").exists()


@pytest.mark.parametrize("stride", [1, 3, 8])
def test_response_loss_scores_each_response_token_once_with_its_window(stride):
    from scratchllm.evaluate import response_loss

    T = 8
    model = GPT(GPTConfig(13, T, 1, 2, 8), seed=2, dtype="float64")
    rng = np.random.default_rng(3)
    tokens, mask = rng.integers(0, 13, 30), rng.random(30) < 0.5
    n, want = len(tokens) - 1, []
    for j in np.flatnonzero(mask):
        if j == 0:
            continue  # the first token is never a target
        start = min(max(0, math.ceil((j - T) / stride) * stride), n - T)  # the first window reaching j
        logits, _, _ = model.forward(tokens[None, start:j])
        z = logits[0, -1]
        want.append(np.log(np.exp(z - z.max()).sum()) + z.max() - z[tokens[j]])
    assert response_loss(model, tokens, mask, T, stride=stride, batch=3) == pytest.approx(np.mean(want), rel=1e-12)
    for bad in (dict(stride=T + 1), dict(stride=0), dict(batch=0)):
        with pytest.raises(ValueError, match="stride must be in"):
            response_loss(model, tokens, mask, T, **bad)
    with pytest.raises(ValueError, match="block_size must be in"):
        response_loss(model, tokens, mask, T + 1)


def test_rouge_l():
    pytest.importorskip("rouge_score")
    from scratchllm.evaluate import rouge_l

    assert rouge_l(["Return the items."], ["return the items"]) == pytest.approx(1.0)
    assert rouge_l(["x y", "Return items"], ["a b", "Return the items"]) == pytest.approx((0 + 0.8) / 2)
    with pytest.raises(ValueError, match="one length"):
        rouge_l(["a"], ["a", "b"])


def test_fine_tuning_a_char_model_extends_its_vocabulary(tmp_path, capsys):
    """--init_from a char checkpoint without the end character: the vocabulary grows by the pairs' new characters,
    the fine-tuned checkpoint keeps them, and chat talks to it."""
    from scratchllm import cli
    from scratchllm.chat import run
    from scratchllm.io.pretrained import load_pretrained

    text = tmp_path / "text.txt"
    text.write_text("def add(a, b):\n    return a + b\n" * 200)
    small = ["--n_layer=1", "--n_embd=16", "--n_head=2", "--block_size=32", "--batch_size=8", "--eval_iters=2",
             "--sample_tokens=0", "--progress=false", "--nproc=1"]
    assert cli.main(["train", f"--data={text}", "--max_iters=10", f"--out_dir={tmp_path / 'pre'}", *small]) == 0
    rows = [{"prompt": f"def f{i}(): return {i}", "response": f"Return {i} é.", "split": "val" if i < 4 else "train"}
            for i in range(40)]
    pairs = write(tmp_path / "pairs.jsonl", rows)
    assert cli.main(["train", f"--init_from={tmp_path / 'pre'}", f"--data={pairs}", "--format=pairs", "--max_iters=40",
                     "--eval_interval=40", "--learning_rate=1e-2", f"--out_dir={tmp_path / 'ft'}", *small]) == 0
    err = capsys.readouterr().err
    pre, pre_tok = load_pretrained(str(tmp_path / "pre"))
    model, tok = load_pretrained(str(tmp_path / "ft"))
    rendered = "".join(t for turns in read_pairs(pairs) for t, _ in render(turns, END_CHAR))
    new = sorted(set(rendered) - set(pre_tok.chars))
    assert END_CHAR in new and "é" in new and "#" in new  # the end, the data's own, the template's characters
    assert f"vocabulary extended from {pre.cfg.vocab_size} to {pre.cfg.vocab_size + len(new)}" in err
    assert tok.chars == pre_tok.chars + new and model.cfg.vocab_size == tok.vocab_size
    for k, v in pre.params.items():  # the pre-trained rows are where fine-tuning started: they moved, but are there
        assert model.params[k].shape == (tok.vocab_size, 16) if k == "wte.weight" else model.params[k].shape == v.shape
    metrics = [json.loads(line) for line in (tmp_path / "ft" / "metrics.jsonl").read_text().splitlines()]
    vals = [r["val_loss"] for r in metrics if "val_loss" in r]
    assert vals[-1] < vals[0] - 0.5  # the held-out responses are being learnt
    out = []
    assert run(model, tok, iter(["def f7(): return 7"]), out.append, max_new_tokens=10) == 0 and out[-1] == "\n"


def test_batched_greedy_replies_equal_chat_replies_one_by_one():
    from scratchllm.chat import reply
    from scratchllm.evaluate import replies

    tok = CharTokenizer.train("### User:\nAssistant" + "abcdefgh xyz" + END_CHAR + "\n")
    model = GPT(GPTConfig(tok.vocab_size, 24, 1, 2, 16), seed=2, dtype="float64")
    for w in model.params.values():
        w *= 100 if w.ndim == 2 else 1  # far from the initialisation: replies of 1, 10 and 30 (the limit) tokens
    prompts = ["abc", "hgf edcba" * 3, "x", "zzz yy", "a" * 40]
    want = [reply(model, tok, [("user", p)], 30, temperature=0.0, room=1) for p in prompts]
    assert replies(model, tok, prompts, 30, batch=2) == want
    assert {len(w) for w in want} != {30} and max(len(w) for w in want) == 30
    with pytest.raises(ValueError, match="no end token"):
        replies(model, CharTokenizer.train("### User:\nAssistant" + "abcdefgh xyz\n" + "\x05"), prompts)


def test_the_recipe_from_a_hugging_face_gpt2_directory(tmp_path, capsys):
    """docs/finetune.md's recipe from a GPT-2 directory written by transformers: its <|endoftext|> ends each
    response (no vocabulary change), the response loss falls, and chat stops at it."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from scratchllm import cli
    from scratchllm.chat import run
    from scratchllm.io.gpt2_files import write_gpt2_files
    from scratchllm.io.pretrained import load_pretrained
    from scratchllm.tokenizer import ByteBPETokenizer

    rows = [{"prompt": f"def f{i}(x): return x + {i}", "response": f"Add {i}."} for i in range(60)]
    tok = ByteBPETokenizer.train("".join(r["prompt"] + r["response"] for r in rows) * 4, vocab_size=300)
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=tok.vocab_size, n_positions=64, n_embd=32, n_layer=1, n_head=2,
                                     bos_token_id=tok.eot_id, eos_token_id=tok.eot_id)
    hf = tmp_path / "gpt2"
    transformers.GPT2LMHeadModel(config).save_pretrained(str(hf))
    write_gpt2_files(tok, hf)
    pairs = write(tmp_path / "pairs.jsonl", rows)
    assert cli.main(["train", f"--init_from={hf}", f"--data={pairs}", "--format=pairs", "--max_iters=60",
                     "--eval_interval=30", "--eval_iters=4", "--batch_size=8", "--learning_rate=3e-3",
                     "--sample_tokens=0", "--progress=false", "--nproc=1", f"--out_dir={tmp_path / 'ft'}"]) == 0
    assert "vocabulary extended" not in capsys.readouterr().err
    metrics = [json.loads(line) for line in (tmp_path / "ft" / "metrics.jsonl").read_text().splitlines()]
    vals = [r["val_loss"] for r in metrics if "val_loss" in r]
    assert vals[-1] < vals[0] - 1.0
    model, tuned = load_pretrained(str(tmp_path / "ft"))
    assert tuned.vocab_size == tok.vocab_size and model.cfg.vocab_size == tok.vocab_size
    out = []
    assert run(model, tuned, iter(["def f3(x): return x + 3"]), out.append, max_new_tokens=20) == 0


def test_the_worked_task_script_runs_end_to_end_on_small_data(tmp_path):
    """benchmarks/docstrings_task.py as the docs run it, small: a tiny pre-trained model, 20 steps, 6 replies."""
    pytest.importorskip("rouge_score")
    import subprocess
    import sys

    from scratchllm import cli

    root = Path(__file__).resolve().parents[1]
    small = ["--n_layer=1", "--n_embd=16", "--n_head=2", "--block_size=32", "--batch_size=8", "--eval_iters=2",
             "--sample_tokens=0", "--progress=false", "--nproc=1"]
    text = tmp_path / "text.txt"
    text.write_text(textwrap.dedent(SOURCE) * 20)
    assert cli.main(["train", f"--data={text}", "--max_iters=5", f"--out_dir={tmp_path / 'pre'}", *small]) == 0
    done = subprocess.run([sys.executable, str(root / "benchmarks" / "docstrings_task.py"), f"--work={tmp_path / 'w'}",
                           f"--pretrained={tmp_path / 'pre'}", "--iters=20", "--limit=6", "--max_new_tokens=8",
                           "--max_source_chars=120", "--extra=--nproc=1 --eval_iters=2",
                           f"--markdown={tmp_path / 'r.md'}"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads((tmp_path / "w" / "results.json").read_text())
    assert result["replied"] == 6 and result["val"] > 6 and result["context"] == 32
    assert result["after"]["loss"] < result["before"]["loss"]  # 20 steps on the pairs already help
    assert all(0 <= result[k]["rouge_l"] <= 1 and 0 <= result[k]["stopped"] <= 1 and len(result[k]["replies"]) == 6
               for k in ("before", "after"))
    assert "| fine-tuned on the pairs |" in (tmp_path / "r.md").read_text()
