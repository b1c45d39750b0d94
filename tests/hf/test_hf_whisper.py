"""Whisper: log-mel features through audio_conv, an encoder–decoder, greedy transcription.

Tiny random models (d_model 32, 4 heads, 8 mel bins, 20 frames -> 10 encoder positions,
16 decoder positions), every parameter perturbed (the stored sinusoid of the encoder too),
fp32, eval mode: the encoder output, the decoder's hidden states and the logits within 1e-4;
``to_hf(from_hf(m))`` gives the same tensors; greedy decoding from
``decoder_start_token_id`` (no forced or suppressed tokens) gives HF's tokens.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

transformers = pytest.importorskip("transformers")

from txblocks.hf import from_hf, spec_from_hf, to_hf

from .conftest import perturbed, scaled

TOL = 1e-4
IDS = {"pad_token_id": 1, "bos_token_id": 0, "eos_token_id": 2, "decoder_start_token_id": 3}


def whisper(cls: str, **kw: Any) -> Callable[[], Any]:
    base = {"vocab_size": 60, "num_mel_bins": 8, "d_model": 32, "encoder_layers": 2,
            "decoder_layers": 2, "encoder_attention_heads": 4, "decoder_attention_heads": 4,
            "encoder_ffn_dim": 40, "decoder_ffn_dim": 40, "max_source_positions": 10,
            "max_target_positions": 16, **IDS}  # fmt: skip
    return lambda: getattr(transformers, cls)(transformers.WhisperConfig(**{**base, **kw}))


CASES = {
    "generation": whisper("WhisperForConditionalGeneration"),
    "base-gelu-new-ffn-sizes": whisper("WhisperModel", activation_function="gelu_new",
                                       decoder_ffn_dim=48, decoder_layers=1),
}  # fmt: skip


def features(config: Any) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.randn(2, config.num_mel_bins, 2 * config.max_source_positions, generator=g)


def targets(config: Any) -> torch.Tensor:
    g = torch.Generator().manual_seed(2)
    return torch.randint(3, config.vocab_size, (2, 7), generator=g)


@pytest.mark.parametrize("case", list(CASES))
def test_from_hf_same_numbers(case: str) -> None:
    hf = perturbed(CASES[case])
    model = from_hf(hf)
    assert model.spec.front_end.type == "audio_conv"
    x, ids = features(hf.config), targets(hf.config)
    with torch.no_grad():
        base = hf.base_model(input_features=x, decoder_input_ids=ids)
        logits = hf(input_features=x, decoder_input_ids=ids).logits if hf.base_model is not hf else None
        out = model(input_features=x, decoder_input_ids=ids)
    assert base.last_hidden_state.abs().max() > 0.1
    assert (base.encoder_last_hidden_state - out.encoder_last_hidden_state).abs().max() <= TOL
    assert (base.last_hidden_state - out.last_hidden_state).abs().max() <= TOL
    assert (logits is None) == (out.logits is None)
    if logits is not None:
        assert (logits - out.logits).abs().max() <= TOL


@pytest.mark.parametrize("case", list(CASES))
def test_round_trip(case: str) -> None:
    hf = perturbed(CASES[case])
    model = from_hf(hf)
    back = to_hf(model)
    assert type(back) is type(hf)
    source = hf.state_dict()
    for name, tensor in back.state_dict().items():
        torch.testing.assert_close(tensor, source[name], rtol=0, atol=0, msg=name)
    assert spec_from_hf(back).model_dump(exclude={"name"}) == model.spec.model_dump(
        exclude={"name"})


def test_greedy_transcription_matches_hf() -> None:
    # sharper decoder layers: tied embeddings alone would repeat the start token
    hf = scaled(perturbed(CASES["generation"]), ("decoder.layers",), 4.0)
    model = from_hf(hf)
    x = features(hf.config)
    tokens = torch.full((2, 1), IDS["decoder_start_token_id"])
    with torch.no_grad():
        encoded = hf.get_encoder()(x).last_hidden_state
        for _ in range(10):  # HF's forward, greedy, no forced or suppressed tokens
            logits = hf(encoder_outputs=(encoded,), decoder_input_ids=tokens).logits[:, -1]
            tokens = torch.cat([tokens, logits.argmax(-1, keepdim=True)], dim=1)
    ours = model.generate(input_features=x, max_new_tokens=10,
                          decoder_start_token_id=IDS["decoder_start_token_id"])
    assert torch.equal(ours, tokens)
    assert len(set(tokens[:, 1:].flatten().tolist())) > 3  # a transcription, not one token


def test_features_of_the_wrong_shape_are_refused() -> None:
    model = from_hf(perturbed(CASES["generation"]))
    with pytest.raises(ValueError, match="input_features must be"):
        model(input_features=torch.randn(2, 5, 20), decoder_input_ids=torch.ones(2, 1, dtype=torch.long))
    with pytest.raises(ValueError, match="max_seq_len 10"):
        model(input_features=torch.randn(1, 8, 24), decoder_input_ids=torch.ones(1, 1, dtype=torch.long))
    with pytest.raises(ValueError, match="reads input_features"):
        model(torch.ones(1, 4, dtype=torch.long), decoder_input_ids=torch.ones(1, 1, dtype=torch.long))


def test_summary_measures_a_forward_on_audio_features() -> None:
    from txblocks.summary import summarize

    spec = from_hf(CASES[next(iter(CASES))]()).spec
    summary = summarize(spec, seq_len=8)
    assert summary.forward_flops > 0 and summary.parameters > 0
