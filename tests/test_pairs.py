"""Prompt/response pairs (scratchllm/text/pairs.py): the template, the response-only mask, malformed lines named
with their line number, and the proof that masked positions contribute nothing (float64)."""

import json
import subprocess
import sys

import numpy as np
import pytest

from scratchllm.models import GPT, GPTConfig
from scratchllm.ops import cross_entropy_backward, cross_entropy_forward
from scratchllm.text.data import get_batch
from scratchllm.text.pairs import END_CHAR, encode_pairs, read_pairs, render
from scratchllm.tokenizer import ByteBPETokenizer, CharTokenizer


def write(tmp_path, lines, name="pairs.jsonl"):
    path = tmp_path / name
    path.write_text("\n".join(json.dumps(x) if not isinstance(x, str) else x for x in lines) + "\n")
    return path


def test_both_formats_render_through_one_template(tmp_path):
    path = write(tmp_path, [{"prompt": "2+2?", "response": "4"},
                            {"messages": [{"role": "system", "content": "be brief"},
                                          {"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}])
    first, second = read_pairs(path)
    assert first == [("user", "2+2?"), ("assistant", "4")] and second[0] == ("system", "be brief")
    assert "".join(t for t, _ in render(first, "<e>")) == "### User:\n2+2?\n### Assistant:\n4<e>\n"
    assert [t for t, r in render(second, "<e>") if r] == ["yo<e>"]


def test_the_mask_is_true_on_the_response_and_its_end_only(tmp_path):
    examples = read_pairs(write(tmp_path, [{"prompt": "ab", "response": "ba"}, {"prompt": "b", "response": "a"}]))
    text = "".join(t for ex in examples for t, _ in render(ex, END_CHAR))
    char = CharTokenizer.train(text)
    tokens, mask = encode_pairs(examples, char)
    assert char.decode(tokens.tolist()) == text
    assert char.decode(tokens[mask].tolist()) == "ba" + END_CHAR + "a" + END_CHAR
    bpe = ByteBPETokenizer.train(text * 20, vocab_size=300)
    tokens, mask = encode_pairs(examples, bpe)
    assert tokens[mask][-1] == bpe.eot_id and bpe.decode(tokens[mask].tolist()).count("<|endoftext|>") == 2


@pytest.mark.parametrize("line, match", [
    ('{"prompt": "x"}', "line 2: missing key 'response'"),
    ('{"response": "x"}', "line 2: missing key 'prompt'"),
    ('{"prompt": 1, "response": "x"}', "line 2: 'prompt' must be a string"),
    ("not json", "line 2: not valid JSON"),
    ('{"messages": [{"role": "user", "content": "x"}]}', "line 2: 'messages' has no assistant turn"),
    ('{"messages": [{"role": "bot", "content": "x"}]}', "line 2: each message needs 'role'"),
    ("[1, 2]", "line 2: expected a JSON object"),
])
def test_a_malformed_line_is_named_with_its_number(tmp_path, line, match):
    with pytest.raises(ValueError, match=match):
        read_pairs(write(tmp_path, [{"prompt": "a", "response": "b"}, line]))


def test_masked_positions_contribute_nothing():
    """The loss and every gradient with the prompt's targets set to -1 equal those of the cross-entropy taken over
    the response positions alone, while a prompt token in the input still matters (through the context)."""
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 11, 200).astype(np.int32)
    mask = rng.random(200) < 0.4
    x, y = get_batch(tokens, 3, 12, np.random.default_rng(1), mask)
    assert (y == -1).any() and (y != -1).any()
    model = GPT(GPTConfig(vocab_size=11, block_size=12, n_layer=2, n_head=2, n_embd=8), seed=0, dtype="float64",
                backend="numpy")
    _, loss, cache = model.forward(x, y)
    grads = model.backward(cache)
    logits, _, caches = model.forward(x)
    keep = y != -1
    only_loss, ce = cross_entropy_forward(logits[keep], y[keep])  # the response positions alone
    dsub, _ = cross_entropy_backward(np.asarray(1.0), ce)
    dlogits = np.zeros_like(logits)
    dlogits[keep] = dsub
    only = model.backward_rows(dlogits, caches)
    assert float(loss) == pytest.approx(float(only_loss), rel=1e-13)
    for name, g in grads.items():
        np.testing.assert_allclose(g, only[name], rtol=1e-12, atol=1e-15, err_msg=name)
    x2 = x.copy()
    masked_input = np.argwhere(~keep)[0]  # an input position whose next token is a prompt token
    x2[tuple(masked_input)] = (x2[tuple(masked_input)] + 1) % 11
    assert float(model.forward(x2, y)[1]) != float(loss)  # the prompt still conditions the response


def test_get_batch_masks_by_the_target_token():
    tokens = np.arange(10, dtype=np.int32)
    mask = np.array([0, 0, 1, 1, 0, 1, 0, 0, 1, 1], dtype=bool)
    x, y = get_batch(tokens, 4, 5, np.random.default_rng(0), mask)
    for xr, yr in zip(x, y):
        i = xr[0]
        np.testing.assert_array_equal(xr, np.arange(i, i + 5))
        np.testing.assert_array_equal(yr, np.where(mask[i + 1:i + 6], np.arange(i + 1, i + 6), -1))


def pairs_file(tmp_path):
    rng = np.random.default_rng(0)
    lines = []
    for _ in range(60):  # responses that follow from the prompt: reverse a short word
        word = "".join(rng.choice(list("abcdef"), 4))
        lines.append({"prompt": word, "response": word[::-1]})
    return write(tmp_path, lines)


def test_train_on_pairs_learns_the_responses_and_resumes_exactly(tmp_path):
    from scratchllm.train import make_config, parse_overrides, train

    data = pairs_file(tmp_path)
    args = [f"--data={data}", "--format=pairs", "--n_layer=1", "--n_embd=32", "--n_head=2", "--block_size=32",
            "--batch_size=8", "--eval_interval=20", "--eval_iters=4", "--sample_tokens=0", "--progress=false",
            "--learning_rate=1e-2", "--nproc=1"]
    straight, _ = parse_overrides([*args, f"--out_dir={tmp_path / 'a'}", "--max_iters=40"])
    summary = train(make_config(straight))
    rows = [json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    vals = [r["val_loss"] for r in rows if "val_loss" in r]
    assert vals[-1] < vals[0] - 0.5 and summary["step"] == 40  # the responses are being learnt
    first, _ = parse_overrides([*args, f"--out_dir={tmp_path / 'b'}", "--max_iters=20"])
    train(make_config(first))
    train(make_config({**first, "max_iters": 40}), resume=True, overrides={"max_iters": 40})
    again = [json.loads(line) for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in rows if "loss" in r] == [r["loss"] for r in again if "loss" in r]


def test_a_malformed_pairs_file_is_one_line_and_exit_2(tmp_path, capsys):
    from scratchllm import cli

    bad = write(tmp_path, [{"prompt": "a", "response": "b"}, {"prompt": "c"}])
    assert cli.main(["train", f"--data={bad}", "--format=pairs", f"--out_dir={tmp_path / 'o'}", "--nproc=1"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "line 2: missing key 'response'" in err
    assert not (tmp_path / "o").exists()  # nothing half-prepared


def test_chat_crops_the_oldest_turns_and_stops_at_the_end_token(tmp_path):
    import subprocess
    import sys

    from scratchllm.chat import ASSISTANT, conversation_ids
    from scratchllm.generate import generate_ids
    from scratchllm.train import make_config, parse_overrides, train

    tok = CharTokenizer.train("### User:\nAssistant" + "abcdef" + END_CHAR + "\n")
    history = [("user", "abc"), ("assistant", "cba"), ("user", "fed")]
    full = conversation_ids(tok, history, context=1000, room=10)
    assert tok.decode(full).endswith("### User:\nfed\n" + ASSISTANT) and tok.decode(full).startswith("### User:\nabc")
    cropped = conversation_ids(tok, history, context=len(full) + 9, room=10)  # one token short: the oldest goes
    assert tok.decode(cropped) == "### Assistant:\ncba" + END_CHAR + "\n### User:\nfed\n" + ASSISTANT
    alone = conversation_ids(tok, history, context=20, room=10)  # only the newest turn's last tokens fit
    assert len(alone) == 10 and tok.decode(alone).endswith(ASSISTANT[-5:])
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=64, n_layer=1, n_head=2, n_embd=8), seed=0)
    first = generate_ids(model, full[-20:], 12, seed=4)  # sampled: the same draws with or without a stop set
    k = next(i for i, t in enumerate(first) if i and t not in first[:i])
    assert generate_ids(model, full[-20:], 12, seed=4, stop={first[k]}) == first[:k]  # ends before the stop id
    data = pairs_file(tmp_path)
    overrides, _ = parse_overrides([f"--data={data}", "--format=pairs", "--n_layer=1", "--n_embd=16", "--n_head=2",
                                    "--block_size=32", "--batch_size=8", "--max_iters=30", "--eval_interval=30",
                                    "--eval_iters=1", "--sample_tokens=0", "--progress=false", "--learning_rate=1e-2",
                                    f"--out_dir={tmp_path / 'run'}", "--nproc=1"])
    train(make_config(overrides))
    done = subprocess.run([sys.executable, "-m", "scratchllm", "chat", f"--ckpt={tmp_path / 'run'}",
                           "--max_new_tokens=12", "--seed=1"], input="abcd\ncafe\n", capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    replies = done.stdout.split("\n")
    assert len(replies) == 3 and replies[2] == "" and END_CHAR not in done.stdout  # two replies, then EOF
    assert all(len(r) <= 12 for r in replies[:2])


def test_what_a_users_try_found(tmp_path, capsys):
    """Non-UTF-8 lines and the reserved end character are named by line; chat skips a line with an unknown
    character and goes on, refuses a checkpoint without an end token up front; non-finite temperatures refused."""
    from scratchllm.chat import run
    from scratchllm.generate import generate_ids

    latin = tmp_path / "latin.jsonl"
    latin.write_bytes(b'{"prompt": "a", "response": "b"}\n{"prompt": "caf\xe9", "response": "b"}\n')
    with pytest.raises(ValueError, match="latin.jsonl line 2: not valid UTF-8"):
        read_pairs(latin)
    with pytest.raises(ValueError, match="line 1: holds the reserved end character"):
        read_pairs(write(tmp_path, [{"prompt": "x", "response": "X\u0004"}]))
    with pytest.raises(ValueError, match="is a directory"):
        read_pairs(tmp_path)
    tok = CharTokenizer.train("### User:\nAssistant" + "abc" + END_CHAR + "\n")
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=64, n_layer=1, n_head=2, n_embd=8), seed=0)
    out = []
    assert run(model, tok, iter(["abc\n", "xyz\r\n", "cab\r\n"]), out.append, max_new_tokens=3) == 0
    assert len([piece for piece in out if piece == "\n"]) == 2  # two replies: the unknown line was skipped
    assert "'x' (U+0078) in that line" in capsys.readouterr().err
    plain = CharTokenizer.train("### User:\nAssistant abc\n")
    with pytest.raises(ValueError, match="has no end token"):
        run(model, plain, iter(["abc"]), out.append)
    for bad in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match="temperature must be a finite number"):
            generate_ids(model, [1, 2], 2, temperature=bad)


def test_what_a_second_users_try_found(tmp_path, capsys):
    """A literal <|endoftext|> in pairs or chat text stays text (only the template ends a response); chat checks its
    sampling options before reading a line; --format=pairs needs --data; a resumed run names the line whose
    character its vocabulary lacks; the summary counts the steps this call ran."""
    from scratchllm import cli
    from scratchllm.chat import conversation_ids

    examples = read_pairs(write(tmp_path, [{"prompt": "a <|endoftext|> b", "response": "c <|endoftext|>"}]))
    bpe = ByteBPETokenizer.train("a b c <|endoftext|> " * 20, vocab_size=280)
    tokens, mask = encode_pairs(examples, bpe)
    assert tokens.tolist().count(bpe.eot_id) == 1 and tokens[-2] == bpe.eot_id and mask[-2]  # the template's only
    ids = conversation_ids(bpe, [("user", "x <|endoftext|>")], 100, 1)
    assert bpe.eot_id not in ids and "<|endoftext|>" in bpe.decode(ids)
    run = tmp_path / "run"
    small = ["--n_layer=1", "--n_embd=16", "--n_head=2", "--block_size=16", "--batch_size=4", "--eval_iters=1",
             "--sample_tokens=0", "--progress=false", "--nproc=1", f"--out_dir={run}"]
    data = write(tmp_path, [{"prompt": "abc" * 5, "response": "cba" * 5}] * 10, "ok.jsonl")
    assert cli.main(["train", f"--data={data}", "--format=pairs", "--max_iters=4", "--eval_interval=2", *small]) == 0
    assert "trained 4 steps in" in capsys.readouterr().err
    assert cli.main(["train", f"--data={data}", "--format=pairs", "--max_iters=6", "--resume", *small]) == 0
    assert "trained 2 steps (to step 6) in" in capsys.readouterr().err
    new = write(tmp_path, [{"prompt": "abc", "response": "cba"}] * 3 + [{"prompt": "abé", "response": "b"}], "new.jsonl")
    assert cli.main(["train", f"--data={new}", "--format=pairs", "--max_iters=8", "--resume", *small]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "new.jsonl line 4: in the user's text, character 'é'" in err and "--init_from extends" in err
    assert cli.main(["train", "--format=pairs", "--nproc=1", f"--out_dir={tmp_path / 'o'}"]) == 2
    assert "--format=pairs needs --data=FILE.jsonl" in capsys.readouterr().err
    for bad in ("--temperature=-1", "--top_p=2", "--top_k=-3", "--max_new_tokens=-1"):
        done = subprocess.run([sys.executable, "-m", "scratchllm", "chat", f"--ckpt={run}", bad], input="a\nb\n",
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1 and not done.stdout, bad
