"""``txblocks convert`` both ways, ``generate`` on a Hugging Face folder, ``summary --device``."""

from __future__ import annotations

import pytest
import torch

import txblocks
from txblocks import cli
from txblocks.plugins import default_registry

transformers = pytest.importorskip("transformers")


@pytest.fixture(autouse=True)
def fresh_default_registry():
    default_registry.cache_clear()
    yield
    default_registry.cache_clear()


@pytest.fixture
def hf_folder(tmp_path):
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=300,
                                     n_positions=64, bos_token_id=0, eos_token_id=0)
    model = transformers.GPT2LMHeadModel(config).eval()
    folder = tmp_path / "hf"
    model.save_pretrained(folder, max_shard_size="100KB")  # several shards
    return folder, model


def test_convert_a_folder_to_a_file_and_back(hf_folder, tmp_path, capsys):
    folder, hf = hf_folder
    file = tmp_path / "m.safetensors"
    assert cli.main(["convert", str(folder), str(file)]) == 0
    ids = torch.randint(0, 300, (2, 9))
    with torch.no_grad():
        torch.testing.assert_close(txblocks.load(file)(ids).logits, hf(ids).logits,
                                   atol=1e-4, rtol=0)  # fmt: skip
        back = tmp_path / "back"
        assert cli.main(["convert", str(file), str(back)]) == 0
        again = transformers.GPT2LMHeadModel.from_pretrained(back).eval()
        torch.testing.assert_close(again(ids).logits, hf(ids).logits, atol=1e-4, rtol=0)
    assert str(back) in capsys.readouterr().out


def test_convert_refuses_a_folder_without_weights(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert cli.main(["convert", str(tmp_path / "empty"), str(tmp_path / "x.safetensors")]) == 1
    assert "config.json" in capsys.readouterr().out
    assert not (tmp_path / "x.safetensors").exists()


def test_generate_reads_a_hugging_face_folder(hf_folder, capsys):
    folder, _ = hf_folder
    assert cli.main(["generate", str(folder), "--prompt", "ab", "--max-new-tokens", "3"]) == 0
    assert capsys.readouterr().out.startswith("ab")


def test_summary_names_the_kernel_of_each_layer_on_a_device(tmp_path, capsys):
    spec = tmp_path / "s.yaml"
    spec.write_text("extends: gpt2\nn_layers: 2\nd_model: 32\nn_heads: 4\nvocab_size: 64\n")
    assert cli.main(["summary", str(spec), "--seq-len", "8", "--device", "cpu"]) == 0
    assert capsys.readouterr().out.count("auto → sdpa") == 2
    if not torch.cuda.is_available():
        assert cli.main(["summary", str(spec), "--device", "cuda"]) == 1
