"""The task generators' labels agree with Python's own arithmetic, sorted, reversed, and the
geometric definitions of the shapes; batches depend on the generator's seed only."""

from __future__ import annotations

import torch

from txblocks.train.tasks import AdditionTask, CopyTask, ReverseTask, ShapesTask, SortedTask
from txblocks.train.tasks.base import IGNORE
from txblocks.train.tasks.shapes import CLASSES


def _text(ids: list[int]) -> str:
    return bytes(ids).decode("ascii")


def _prompt_and_answer(inputs: torch.Tensor, targets: torch.Tensor) -> list[tuple[str, str]]:
    """Split each decoder row at its first counted target: (what is read, what is predicted)."""
    out = []
    for ids, tgt in zip(inputs.tolist(), targets.tolist(), strict=True):
        first = next(i for i, t in enumerate(tgt) if t != IGNORE)
        answer = [t for t in tgt if t != IGNORE]
        assert all(t == IGNORE for t in tgt[first + len(answer):]), "targets after the answer"
        # the model reads the prompt, then the answer shifted by one
        assert ids[first + 1:first + len(answer)] == answer[:-1]
        out.append((_text(ids[:first + 1]), _text(answer)))
    return out


def test_addition_answers_are_sums(gen):
    task = AdditionTask(digits=3)
    batch = task.batch(512, gen)
    pairs = _prompt_and_answer(batch.inputs["input_ids"], batch.targets)
    lengths = set()
    for prompt, answer in pairs:
        a, b = prompt.removesuffix("=").split("+")
        assert prompt.endswith("=") and 1 <= len(a) <= 3 and 1 <= len(b) <= 3
        assert str(int(a)) == a and str(int(b)) == b  # no leading zeros
        assert answer == f"{int(a) + int(b)}\n"
        lengths.add(len(a))
    assert lengths == {1, 2, 3}


def test_copy_answers_repeat_the_word(gen):
    batch = CopyTask(min_length=2, max_length=6).batch(256, gen)
    for prompt, answer in _prompt_and_answer(batch.inputs["input_ids"], batch.targets):
        word = prompt.removesuffix(">")
        assert word.isalpha() and 2 <= len(word) <= 6
        assert answer == word + "\n"


def test_sorted_labels_say_whether_the_digits_are_sorted(gen):
    batch = SortedTask().batch(512, gen)
    ids, mask = batch.inputs["input_ids"], batch.inputs["attention_mask"]
    for row, keep, label in zip(ids.tolist(), mask.tolist(), batch.targets.tolist(), strict=True):
        text = _text([t for t, k in zip(row, keep, strict=True) if k])
        assert text[0] == "^" and text[1:].isdigit() and 2 <= len(text) - 1 <= 10
        digits = list(text[1:])
        assert label == int(digits == sorted(digits))
    share = batch.targets.float().mean().item()
    assert 0.3 < share < 0.7  # both classes, roughly balanced


def test_reverse_targets_are_the_reversed_source(gen):
    batch = ReverseTask().batch(256, gen)
    ids, mask = batch.inputs["input_ids"], batch.inputs["attention_mask"]
    dec = batch.inputs["decoder_input_ids"]
    for src, keep, d, tgt in zip(ids.tolist(), mask.tolist(), dec.tolist(),
                                 batch.targets.tolist(), strict=True):
        word = _text([t for t, k in zip(src, keep, strict=True) if k])
        target = [t for t in tgt if t != IGNORE]
        assert _text(target) == "".join(reversed(word)) + "\n"
        assert d[:len(target)] == [0] + target[:-1]  # start token, then teacher forcing


def _shape_of(mask: torch.Tensor) -> str:
    """Name a binary image's shape from geometry alone, independently of the generator."""
    rows = mask.any(1).nonzero().flatten()
    cols = mask.any(0).nonzero().flatten()
    box = mask[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
    widths = box.sum(1).tolist()
    assert box.shape[0] == box.shape[1] and box.shape[0] % 2 == 1, "not an odd square bounding box"
    if box.all():
        return "square"
    mid = box.shape[0] // 2
    symmetric = torch.equal(box, box.flip(0)) and torch.equal(box, box.flip(1))
    if symmetric and box[mid].all() and box[:, mid].all() and len(set(widths)) == 2:
        return "cross"  # a full middle row and column, and bars of one width elsewhere
    if symmetric and widths == sorted(widths[:mid + 1]) + sorted(widths[mid:], reverse=True)[1:]:
        return "circle"  # widest in the middle, narrowing symmetrically
    if widths == sorted(widths) and widths[0] < widths[-1] and torch.equal(box, box.flip(1)):
        return "triangle"  # widening from the apex at the top to the base
    return "unknown"


def test_shapes_match_their_geometric_definitions(gen):
    task = ShapesTask(image_size=(12, 16), channels=3, noise=0.0)
    pixels, labels = task.draw(400, gen)
    assert pixels.shape == (400, 3, 12, 16)
    assert torch.equal(pixels[:, 0], pixels[:, 2])
    for image, label in zip(pixels[:, 0], labels.tolist(), strict=True):
        assert _shape_of(image > 0) == CLASSES[label]
    assert set(labels.tolist()) == {0, 1, 2, 3}


def test_batches_depend_on_the_seed_only():
    for task in (AdditionTask(), SortedTask(), ReverseTask(), ShapesTask()):
        first = task.batch(16, torch.Generator().manual_seed(3))
        again = task.batch(16, torch.Generator().manual_seed(3))
        other = task.batch(16, torch.Generator().manual_seed(4))
        for key, value in first.inputs.items():
            assert torch.equal(value, again.inputs[key]), (task.name, key)
        assert torch.equal(first.targets, again.targets)
        assert not all(torch.equal(v, other.inputs[k]) if v.shape == other.inputs[k].shape
                       else False for k, v in first.inputs.items())
