"""`txblocks generate`: a saved model continues a prompt, with bytes or a tokenizer file."""

from __future__ import annotations

import pytest
import torch

import txblocks
from txblocks import cli
from txblocks.tokenizer import ByteTokenizer


@pytest.fixture
def checkpoint(registry, tmp_path):
    torch.manual_seed(5)
    spec = {"arch": "decoder", "vocab_size": 256, "d_model": 32, "n_layers": 2, "n_heads": 4,
            "position": "rope", "init_std": 0.3}
    model = txblocks.build(txblocks.load_spec(spec, registry=registry))
    path = tmp_path / "tiny.safetensors"
    txblocks.save(model, path)
    return model.eval(), path


def test_byte_tokenizer_round_trip():
    tok = ByteTokenizer()
    text = "héllo, wörld ✓"
    assert tok.decode(tok.encode(text)) == text
    assert tok.decode([104, 300, 105]) == "hi"


def test_generate_prints_the_greedy_continuation(checkpoint, capsys):
    model, path = checkpoint
    assert cli.main(["generate", str(path), "--prompt", "abc", "--max-new-tokens", "12"]) == 0
    ids = torch.tensor([list(b"abc")])
    expected = ByteTokenizer().decode(model.generate(ids, max_new_tokens=12)[0, 3:].tolist())
    assert capsys.readouterr().out == "abc" + expected + "\n"


def test_generate_with_a_tokenizer_file(checkpoint, tmp_path, capsys):
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace

    vocab = {f"w{i}": i for i in range(200)}
    tok = tokenizers.Tokenizer(WordLevel(vocab, unk_token="w0"))
    tok.pre_tokenizer = Whitespace()
    tok_path = tmp_path / "tokenizer.json"
    tok.save(str(tok_path))
    model, path = checkpoint
    assert cli.main(["generate", str(path), "--prompt", "w1 w2", "--max-new-tokens", "5",
                     "--tokenizer", str(tok_path)]) == 0
    out = model.generate(torch.tensor([[1, 2]]), max_new_tokens=5)[0, 2:].tolist()
    assert capsys.readouterr().out.endswith(tok.decode(out) + "\n")


def test_generate_reports_a_missing_file(tmp_path, capsys):
    assert cli.main(["generate", str(tmp_path / "nope.safetensors"), "--prompt", "x"]) == 1
    assert "file not found" in capsys.readouterr().out
