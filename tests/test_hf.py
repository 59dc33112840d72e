"""Hugging Face GPT-2 interop: transformers and tokenizers as oracles, all offline (tiny random models, tokenizers
trained here on standard-library source)."""

import copy
import inspect
import json
import re
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

from safetensors.numpy import load_file, save_file  # noqa: E402

from scratchllm import cli  # noqa: E402
from scratchllm.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from scratchllm.io.gpt2_files import load_tokenizer_dir, read_gpt2_files  # noqa: E402
from scratchllm.hf import HFError, load_hf_gpt2, load_hf_tokenizer, save_hf_gpt2  # noqa: E402
from scratchllm.model import GPT, GPTConfig  # noqa: E402
from scratchllm.tokenizer import ENDOFTEXT, ByteBPETokenizer, CharTokenizer, load_tokenizer  # noqa: E402
from scratchllm.train import ConfigError, make_config, parse_overrides, train  # noqa: E402

CORPUS = inspect.getsource(textwrap) + inspect.getsource(json.decoder) + (
    "Le café déjà vu — naïve façade. 東京は日本の首都です。 Ωμέγα 😀 don't we'll I'm it's 1999 3.14159\n\t\t  x  \n")
TEXTS = ["Hello world", "a  b\n\n  c   ", "\t\t x\r\n", "I'm he'll they'd you've we're it's don't 'S 'LL",
         "12345 3.14 ٣٤ ½ x2 2024-01-01", "héllo 世界 😀 Ωμέγα naïve", "\u00a0 nbsp\u2028\x85", "e\u0301 ",
         "  leading", "trailing  ", "", " ", "    \n\n\n    ", f"one{ENDOFTEXT}two {ENDOFTEXT} three{ENDOFTEXT}",
         "<|endo", "def f(x):\n    return x**2  # ok\n", CORPUS[:4000]]
V, T, C, L, H = 320, 32, 16, 2, 4


def hf_gpt2_tokenizer(directory):
    """transformers' GPT-2 tokenizer from vocab.json + merges.txt (from_pretrained reads them in v4 and v5)."""
    return transformers.GPT2TokenizerFast.from_pretrained(str(directory))


@pytest.fixture(scope="module")
def hf_trained(tmp_path_factory):
    """A byte-level BPE trained by Hugging Face `tokenizers` (<|endoftext|> gets id 0), its vocab.json + merges.txt."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator([CORPUS], trainers.BpeTrainer(
        vocab_size=V, special_tokens=[ENDOFTEXT], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    directory = tmp_path_factory.mktemp("hf_tok")
    tok.model.save(str(directory))
    assert tok.get_vocab_size() == V and tok.token_to_id(ENDOFTEXT) == 0
    return tok, directory


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory, hf_trained):
    """A tiny random GPT-2 saved by save_pretrained, with the tokenizer's files, and its float64 eager twin."""
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=V, n_positions=T, n_embd=C, n_layer=L, n_head=H, bos_token_id=0,
                                     eos_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    ref = transformers.GPT2LMHeadModel(config)
    with torch.no_grad():  # far from the initialisation (unit LayerNorms, zero biases) so every parameter matters
        for p in ref.parameters():
            p.add_(0.3 * torch.randn_like(p))
    directory = tmp_path_factory.mktemp("hf") / "tiny-gpt2"
    ref.save_pretrained(str(directory))
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(hf_trained[1] / name, directory / name)
    ref = transformers.GPT2LMHeadModel.from_pretrained(str(directory), attn_implementation="eager").double().eval()
    return directory, ref


def batch(seed=0, B=3):
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, V, (B, T))
    targets = rng.integers(0, V, (B, T))
    targets[0, :5] = -1  # ignored positions
    return idx, targets


def rel_err(a, b):
    return float(np.abs(np.asarray(a) - np.asarray(b)).max() / max(np.abs(np.asarray(b)).max(), 1e-300))


def torch_logits(ref, idx):
    with torch.no_grad():
        return ref(torch.tensor(idx)).logits.numpy()


# ---- weights: Hugging Face -> ours ----

def test_logits_match_transformers_in_float64(hf_dir):
    directory, ref = hf_dir
    model = load_hf_gpt2(directory, dtype="float64", backend="numpy").eval()
    assert model.cfg == GPTConfig(V, T, L, H, C, 0.0) and model.dtype == np.float64
    idx, _ = batch()
    logits, _, _ = model.forward(idx)
    assert rel_err(logits, torch_logits(ref, idx)) <= 1e-9
    assert model.training is False


def test_gradients_match_torch_autograd(hf_dir):
    directory, ref = hf_dir
    model = load_hf_gpt2(directory, dtype="float64", backend="numpy")
    idx, targets = batch(1)
    _, loss, cache = model.forward(idx, targets)
    grads = model.backward(cache)
    ref.zero_grad()
    logits = ref(torch.tensor(idx)).logits
    t_loss = torch.nn.functional.cross_entropy(logits.reshape(-1, V), torch.tensor(targets).reshape(-1),
                                               ignore_index=-1)
    t_loss.backward()
    assert abs(float(loss) - t_loss.item()) <= 1e-12 * abs(t_loss.item())
    t_grads = {name.removeprefix("transformer."): p.grad.numpy() for name, p in ref.named_parameters()}
    assert set(t_grads) == set(grads)  # lm_head is wte (tied): its gradient is accumulated into wte's
    for name, g in grads.items():
        assert rel_err(g, t_grads[name]) <= 1e-8, name


def rewrite_tensors(src, dst, edit):
    shutil.copytree(src, dst)
    tensors = load_file(str(dst / "model.safetensors"))
    save_file(edit(tensors), str(dst / "model.safetensors"), metadata={"format": "pt"})
    return dst


def test_keys_without_prefix_old_buffers_and_an_equal_lm_head_load(hf_dir, tmp_path):
    directory, _ = hf_dir
    want = load_hf_gpt2(directory, dtype="float64", backend="numpy").state_dict()

    def old_format(t):
        t = {k.removeprefix("transformer."): v for k, v in t.items()}
        for i in range(L):
            t[f"h.{i}.attn.bias"] = np.tril(np.ones((T, T), np.float32))[None, None]
            t[f"h.{i}.attn.masked_bias"] = np.asarray(-1e4, np.float32)
        t["lm_head.weight"] = t["wte.weight"].copy()
        return t

    def equal_head(t):
        return {**t, "lm_head.weight": t["transformer.wte.weight"].copy()}

    for d in (rewrite_tensors(directory, tmp_path / "old", old_format),
              rewrite_tensors(directory, tmp_path / "head", equal_head)):
        got = load_hf_gpt2(d, dtype="float64", backend="numpy").state_dict()
        assert all(np.array_equal(got[k], want[k]) for k in want)


def test_bfloat16_weights_load_without_torch_reading_them(hf_dir, tmp_path):
    directory, ref = hf_dir
    copy.deepcopy(ref).to(torch.bfloat16).save_pretrained(str(tmp_path / "bf16"))
    model = load_hf_gpt2(tmp_path / "bf16", backend="numpy")
    want = ref.transformer.h[1].mlp.c_fc.weight.detach().to(torch.bfloat16).float().numpy()
    assert np.array_equal(model.params["h.1.mlp.c_fc.weight"], want)


@pytest.mark.parametrize("change, match", [
    ({"activation_function": "relu"}, "activation_function 'relu'"),
    ({"activation_function": "gelu"}, "activation_function 'gelu'"),
    ({"layer_norm_epsilon": 1e-6}, "layer_norm_epsilon"),
    ({"n_inner": 3 * C}, "n_inner"),
    ({"scale_attn_weights": False}, "scale_attn_weights"),
    ({"scale_attn_by_inverse_layer_idx": True}, "scale_attn_by_inverse_layer_idx"),
    ({"reorder_and_upcast_attn": True}, "reorder_and_upcast_attn"),
    ({"add_cross_attention": True}, "add_cross_attention"),
    ({"model_type": "gpt_neo"}, "model_type 'gpt_neo'"),
    ({"n_head": 3}, "divisible"),
    ({"n_layer": 3}, "missing \\['h.2"),
    ({"vocab_size": V + 1}, "wte.weight has shape"),
    ({"tie_word_embeddings": False}, "tie_word_embeddings is false"),
])
def test_unsupported_configs_are_refused_with_one_line(hf_dir, tmp_path, change, match):
    directory, _ = hf_dir
    bad = shutil.copytree(directory, tmp_path / "bad")
    config = json.loads((bad / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps({**config, **change}))
    with pytest.raises(HFError, match=match) as e:
        load_hf_gpt2(bad, backend="numpy")
    assert "\n" not in str(e.value)


def test_other_refusals_and_accepted_variants(hf_dir, tmp_path):
    directory, _ = hf_dir
    differs = rewrite_tensors(directory, tmp_path / "differs",
                              lambda t: {**t, "lm_head.weight": t["transformer.wte.weight"] + 1})
    with pytest.raises(HFError, match="lm_head.weight differs from wte.weight"):
        load_hf_gpt2(differs, backend="numpy")
    pickle_only = tmp_path / "pickle"
    pickle_only.mkdir()
    shutil.copy(directory / "config.json", pickle_only)
    (pickle_only / "pytorch_model.bin").write_bytes(b"not read")
    with pytest.raises(HFError, match="never unpickles"):
        load_hf_gpt2(pickle_only, backend="numpy")
    with pytest.raises(HFError, match="config.json is missing"):
        load_hf_gpt2(tmp_path, backend="numpy")
    tanh = shutil.copytree(directory, tmp_path / "tanh")  # the same function under transformers' other name
    config = json.loads((tanh / "config.json").read_text())
    for key in ("n_inner", "layer_norm_epsilon", "scale_attn_weights"):  # absent keys take GPT2Config's defaults
        config.pop(key)
    (tanh / "config.json").write_text(json.dumps({**config, "activation_function": "gelu_pytorch_tanh"}))
    assert load_hf_gpt2(tanh, backend="numpy").cfg == GPTConfig(V, T, L, H, C, 0.0)


# ---- weights: ours -> Hugging Face ----

def test_export_loads_in_transformers_with_the_same_logits(tmp_path):
    tok = ByteBPETokenizer.train(CORPUS, 300)
    model = GPT(GPTConfig(V, T, L, H, C, dropout=0.1), seed=3, dtype="float64", backend="numpy").eval()
    rng = np.random.default_rng(0)
    for p in model.params.values():
        p += 0.3 * rng.standard_normal(p.shape)
    save_hf_gpt2(model, tmp_path, tok)
    assert load_file(str(tmp_path / "model.safetensors")).keys() == {f"transformer.{k}" for k in model.params}
    ref, info = transformers.GPT2LMHeadModel.from_pretrained(str(tmp_path), attn_implementation="eager",
                                                             output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    ref = ref.double().eval()
    assert ref.lm_head.weight.data_ptr() == ref.transformer.wte.weight.data_ptr()  # tied
    assert ref.config.resid_pdrop == 0.1 and ref.config.eos_token_id == tok.eot_id
    idx, _ = batch(2)
    assert rel_err(model.forward(idx)[0], torch_logits(ref, idx)) <= 1e-9
    assert hf_gpt2_tokenizer(tmp_path).encode(TEXTS[3]) == tok.encode(TEXTS[3])
    again = load_hf_gpt2(tmp_path, dtype="float64", backend="numpy")  # and back
    assert all(np.array_equal(again.params[k], model.params[k]) for k in model.params)
    with pytest.raises(ValueError, match="only a byte-level BPE"):
        save_hf_gpt2(model, tmp_path / "char", CharTokenizer.train("abc"))


# ---- tokenizer files ----

def test_tokenizer_from_hf_files_encodes_exactly_as_tokenizers_and_transformers(hf_trained):
    hf, directory = hf_trained
    ours = ByteBPETokenizer.from_gpt2_files(directory / "vocab.json", directory / "merges.txt")
    fast = hf_gpt2_tokenizer(directory)
    assert ours.vocab_size == V and ours.eot_id == 0 and ours.ids is not None  # HF put <|endoftext|> first
    for s in TEXTS:
        ids = ours.encode(s, allowed_special="all")
        assert ids == hf.encode(s).ids == fast.encode(s), s
        assert ours.decode(ids) == s == fast.decode(ids)
        if ENDOFTEXT not in s:
            assert ours.encode(s) == ids
    assert ours.encode(ENDOFTEXT) != [0]  # plain text unless allowed, as before


def test_tokenizer_json_of_transformers_and_ours_keep_the_ids(hf_trained, tmp_path):
    hf, directory = hf_trained
    ours = read_gpt2_files(directory / "vocab.json", directory / "merges.txt")
    hf_gpt2_tokenizer(directory).save_pretrained(str(tmp_path / "hf"))  # v5 writes only tokenizer.json
    assert load_tokenizer_dir(tmp_path / "hf").to_dict() == ours.to_dict()
    loaded = load_tokenizer(ours.save(tmp_path / "ours.json"))  # the id table persists in our tokenizer.json
    assert loaded.to_dict() == ours.to_dict() and loaded.encode(TEXTS[-1]) == hf.encode(TEXTS[-1]).ids
    ours.save_gpt2_files(tmp_path / "again")
    assert json.loads((tmp_path / "again" / "vocab.json").read_text()) == hf.get_vocab()
    assert (tmp_path / "again" / "merges.txt").read_text() == (directory / "merges.txt").read_text()


def test_our_trained_tokenizer_round_trips_through_gpt2_files(tmp_path):
    tok = ByteBPETokenizer.train(CORPUS, 500)
    vocab, merges = tok.save_gpt2_files(tmp_path)
    assert json.loads(vocab.read_text())[ENDOFTEXT] == tok.eot_id == 499
    again = ByteBPETokenizer.from_gpt2_files(vocab, merges)
    assert again.to_dict() == tok.to_dict() and again.ids is None  # GPT-2's layout: no id table needed
    fast = hf_gpt2_tokenizer(tmp_path)
    for s in TEXTS:
        assert fast.encode(s) == tok.encode(s, allowed_special="all"), s


@pytest.mark.parametrize("edit, match", [
    (lambda v: {**v, "<|pad|>": len(v)}, "'<|pad|>' .* neither a byte"),
    (lambda v: {k: i for k, i in v.items() if k != ENDOFTEXT}, "end-of-text token"),
    (lambda v: {k: i for k, i in v.items() if k != "!"}, "token '!' is not in the vocabulary"),
    (lambda v: {**v, ENDOFTEXT: len(v) + 5}, "ids must be 0.."),
])
def test_malformed_gpt2_files_fail_clearly(hf_trained, tmp_path, edit, match):
    directory = hf_trained[1]
    vocab = json.loads((directory / "vocab.json").read_text())
    (tmp_path / "vocab.json").write_text(json.dumps(edit(vocab)))
    shutil.copy(directory / "merges.txt", tmp_path)
    with pytest.raises(ValueError, match=match):
        load_hf_tokenizer(tmp_path)
    (tmp_path / "merges.txt").write_text("#version: 0.2\nĠ Ġ\nx ĠĠĠ\n")
    with pytest.raises(ValueError, match="merge 2 .* neither a byte nor the result of an earlier merge"):
        load_hf_tokenizer(tmp_path)


# ---- command line ----

def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "scratchllm", *args], capture_output=True, text=True, timeout=120)


def test_cli_convert_both_ways_and_generate_from_either(hf_dir, tmp_path):
    directory, _ = hf_dir
    ckpt, back = tmp_path / "ckpt", tmp_path / "back"
    p = run_cli("convert", f"--from_hf={directory}", f"--out={ckpt}")
    assert p.returncode == 0 and "wrote scratchllm checkpoint" in p.stderr, p.stderr
    model, tok, _ = load_checkpoint(ckpt, backend="numpy")
    assert tok.to_dict() == load_hf_tokenizer(directory).to_dict()
    prompt = f"def wrap(text):{ENDOFTEXT}"
    gen = ["--prompt=" + prompt, "--max_new_tokens=12", "--temperature=0"]
    from_hf = run_cli("generate", f"--hf={directory}", *gen)
    assert from_hf.returncode == 0 and from_hf.stdout.startswith(prompt), from_hf.stderr
    assert run_cli("generate", f"--hf={directory}", *gen).stdout == from_hf.stdout  # deterministic
    # our checkpoint reads <|endoftext|> in a prompt as text, so compare on a prompt without it
    plain = ["--prompt=def wrap(text):", "--max_new_tokens=12", "--temperature=0"]
    from_ckpt = run_cli("generate", f"--ckpt={ckpt}", *plain)
    assert from_ckpt.returncode == 0 and from_ckpt.stdout == run_cli("generate", f"--hf={directory}", *plain).stdout
    p = run_cli("convert", f"--ckpt={ckpt}", f"--to_hf={back}")
    assert p.returncode == 0 and "vocab.json + merges.txt" in p.stderr, p.stderr
    original = {k.removeprefix("transformer."): v for k, v in load_file(str(directory / "model.safetensors")).items()}
    exported = {k.removeprefix("transformer."): v for k, v in load_file(str(back / "model.safetensors")).items()}
    assert original.keys() == exported.keys() and all(np.array_equal(original[k], exported[k]) for k in original)
    assert json.loads((back / "vocab.json").read_text()) == json.loads((directory / "vocab.json").read_text())


def test_cli_convert_of_a_char_checkpoint_writes_no_tokenizer_files(tmp_path, capsys):
    model = GPT(GPTConfig(20, 8, 1, 2, 8), backend="numpy")
    save_checkpoint(tmp_path / "ck", model, CharTokenizer.train("abcdefghijklmnopqrst"))
    assert cli.main(["convert", f"--ckpt={tmp_path / 'ck'}", f"--to_hf={tmp_path / 'hf'}"]) == 0
    assert "without tokenizer files" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "hf").iterdir()) == ["config.json", "model.safetensors"]
    assert load_hf_gpt2(tmp_path / "hf", backend="numpy").cfg == model.cfg


@pytest.mark.parametrize("args, match", [
    (["convert"], "either --from_hf"),
    (["convert", "--from_hf=X", "--ckpt=Y"], "either --from_hf"),
    (["convert", "--from_hf={hf}"], "needs --out"),
    (["convert", "--ckpt={hf}", "--out=Z"], "needs --to_hf"),
    (["convert", "--from_hf={bare}", "--out={tmp}/o"], "holds no tokenizer.*--tokenizer=PATH"),
    (["convert", "--from_hf={tmp}", "--out={tmp}/o"], "not a Hugging Face directory"),
    (["generate"], "one of the arguments --ckpt --hf is required"),
    (["generate", "--ckpt={hf}", "--hf={hf}"], "not allowed with"),
    (["generate", "--hf=/no/such/dir"], "not a Hugging Face directory"),
    (["train", "--init_from={hf}", "--n_layer=5", "--out_dir={tmp}/o"], "conflicts with --init_from"),
])
def test_bad_arguments_exit_2_with_one_line(hf_dir, tmp_path, capsys, args, match):
    directory, _ = hf_dir
    bare = tmp_path / "bare"
    shutil.copytree(directory, bare, ignore=shutil.ignore_patterns("*.json", "*.txt"))
    shutil.copy(directory / "config.json", bare)
    args = [a.format(hf=directory, bare=bare, tmp=tmp_path) for a in args]
    assert cli.main(args) == 2
    captured = capsys.readouterr()
    assert len(captured.err.strip().splitlines()) == 1 and captured.out == "", captured.err
    assert re.search(match, captured.err), captured.err


# ---- fine-tuning ----

def test_train_init_from_fine_tunes_the_weights_with_their_tokenizer(hf_dir, tmp_path):
    directory, _ = hf_dir
    data = tmp_path / "data.txt"
    data.write_text(CORPUS, encoding="utf-8")
    base = [f"--init_from={directory}", f"--data={data}", "--batch_size=2", "--eval_iters=1", "--log_interval=1",
            "--sample_tokens=0", "--progress=false", "--warmup_iters=1", "--dtype=float64", "--backend=numpy"]

    def run(out, *extra):
        overrides, resume = parse_overrides([*base, f"--out_dir={tmp_path / out}", *extra])
        return train(make_config(overrides), resume=resume, overrides=overrides)

    run("zero", "--max_iters=0")  # step 0's checkpoint holds the Hugging Face weights and tokenizer as they are
    model, tok, info = load_checkpoint(tmp_path / "zero", backend="numpy")
    want = load_hf_gpt2(directory, dtype="float64", backend="numpy")
    assert all(np.array_equal(model.params[k], want.params[k]) for k in want.params)
    assert tok.to_dict() == load_hf_tokenizer(directory).to_dict()
    assert (info["config"]["train"]["n_layer"], info["config"]["train"]["block_size"]) == (L, T)
    summary = run("ft", "--max_iters=3", "--eval_interval=3", "--block_size=16", "--n_embd=16")
    assert summary["step"] == 3 and np.isfinite(summary["val_loss"])
    model, _, info = load_checkpoint(tmp_path / "ft", backend="numpy")
    assert model.cfg.block_size == T and info["config"]["train"]["block_size"] == 16  # a shorter window
    assert not np.array_equal(model.params["wte.weight"], want.params["wte.weight"])
    assert run("ft", "--max_iters=5", "--eval_interval=3", "--block_size=16", "--resume")["step"] == 5
    for extra, match in [("--n_layer=3", "n_layer=3 conflicts"), ("--tokenizer=char", "tokenizer=char conflicts"),
                         ("--block_size=64", "longer than the context")]:
        with pytest.raises(ConfigError, match=match):
            run("bad", "--max_iters=1", extra)
