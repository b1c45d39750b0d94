"""Beam search (e.g. Wu et al. 2016's length penalty: score / length^α)."""

from __future__ import annotations

import torch
from torch import Tensor

from txblocks.generation.config import GenerationConfig, process_logits
from txblocks.generation.sessions import DecoderSession, Seq2SeqSession


def _score(logprob: float, length: int, penalty: float) -> float:
    return logprob / max(length, 1) ** penalty


def beam_search(session: DecoderSession | Seq2SeqSession, config: GenerationConfig) -> Tensor:
    """The best hypothesis per row: (B, prompt + new), padded with ``pad_token_id``.

    ``session`` holds B·K rows (each prompt repeated K = ``num_beams`` times). A
    hypothesis ends at an end-of-sequence id; a row is done when it has K finished
    hypotheses and no running beam can beat the worst of them.
    """
    k = config.num_beams
    tokens = session.prompt  # (B·K, t)
    batch = tokens.shape[0] // k
    device = tokens.device
    scores = torch.full((batch, k), float("-inf"), device=device)
    scores[:, 0] = 0.0  # all beams start equal: keep one so the first step picks distinct tokens
    finished: list[list[tuple[float, Tensor]]] = [[] for _ in range(batch)]
    done = [False] * batch
    eos = set(config.eos_token_id)
    logits = session.prefill()
    for step in range(config.max_new_tokens):
        logp = process_logits(logits, tokens, config, step).log_softmax(-1)  # (B·K, V)
        vocab = logp.shape[-1]
        candidates = (scores.view(-1, 1) + logp).view(batch, k * vocab)
        top, index = candidates.topk(2 * k, dim=1)
        beam_rows, beam_tokens, beam_scores = [], [], []
        for b in range(batch):
            chosen: list[tuple[int, int, float]] = []
            for score, flat in zip(top[b].tolist(), index[b].tolist(), strict=True):
                beam, token = divmod(flat, vocab)
                row = b * k + beam
                if done[b]:
                    chosen.append((row, config.pad_token_id, float("-inf")))
                elif token in eos:
                    hyp = torch.cat([tokens[row], tokens.new_tensor([token])])
                    finished[b].append((_score(score, step + 1, config.length_penalty), hyp))
                else:
                    chosen.append((row, token, score))
                if len(chosen) == k:
                    break
            while len(chosen) < k:  # only when every candidate ended: pad the beam
                chosen.append((b * k, config.pad_token_id, float("-inf")))
            finished[b] = sorted(finished[b], key=lambda h: -h[0])[:k]
            best_running = max(s for _, _, s in chosen)
            if len(finished[b]) == k and (
                best_running == float("-inf")
                or _score(best_running, step + 1, config.length_penalty) <= finished[b][-1][0]
            ):
                done[b] = True
            for row, token, score in chosen:
                beam_rows.append(row)
                beam_tokens.append(token)
                beam_scores.append(score)
        rows = torch.tensor(beam_rows, device=device)
        new = torch.tensor(beam_tokens, device=device)
        scores = torch.tensor(beam_scores, device=device).view(batch, k)
        tokens = torch.cat([tokens.index_select(0, rows), new[:, None]], dim=1)
        if all(done) or step + 1 == config.max_new_tokens:
            break
        session.reorder(rows)
        logits = session.step(new)
    results = []
    for b in range(batch):
        pool = list(finished[b])
        if not done[b]:
            pool += [
                (_score(scores[b, j].item(), tokens.shape[1] - session.prompt.shape[1],
                        config.length_penalty), tokens[b * k + j])
                for j in range(k) if scores[b, j] > float("-inf")
            ]
        results.append(max(pool, key=lambda h: h[0])[1])
    width = max(r.shape[0] for r in results)
    out = torch.full((batch, width), config.pad_token_id, dtype=torch.long, device=device)
    for b, r in enumerate(results):
        out[b, : r.shape[0]] = r
    return out
