"""The SFT loop's pieces: resumable data order, step counts, batches, progress."""

from __future__ import annotations

import itertools

import pytest

from welip.training import FinetuneConfig, micro_batch_indices, total_steps
from welip.training._sft import collate, progress_bar

BASE = {"name": "t", "model": "smollm2-135m-instruct", "base_model_id": "m", "dataset": "x.jsonl"}


def _take(n_examples: int, rank: int, world: int, start: int, count: int) -> list[list[int]]:
    return list(itertools.islice(micro_batch_indices(n_examples, rank, world, 4, 7, start), count))


def test_a_resumed_run_replays_exactly_the_batches_it_had_not_finished() -> None:
    whole = _take(37, 0, 1, 0, 40)
    for start in (1, 9, 10, 23):
        assert _take(37, 0, 1, start, 40 - start) == whole[start:]


def test_every_epoch_is_a_new_permutation_of_all_examples() -> None:
    per_epoch = 10  # ceil(37 / 4)
    batches = _take(37, 0, 1, 0, 2 * per_epoch)
    first, second = batches[:per_epoch], batches[per_epoch:]
    assert sorted(i for b in first for i in b) == list(range(37))
    assert sorted(i for b in second for i in b) == list(range(37))
    assert first != second


def test_workers_take_disjoint_equal_shares() -> None:
    shares = [[i for b in _take(37, rank, 3, 0, 3) for i in b] for rank in range(3)]
    assert all(len(s) == 12 for s in shares)  # 37 // 3, same count so the collectives line up
    assert not set(shares[0]) & set(shares[1]) and not set(shares[1]) & set(shares[2])


@pytest.mark.parametrize(
    ("overrides", "steps"),
    [
        ({"epochs": 1}, 10),
        ({"epochs": 3}, 30),
        ({"epochs": 1, "grad_accum_steps": 3}, 4),
        ({"max_steps": 7}, 7),
    ],
)
def test_total_steps(overrides: dict[str, float], steps: int) -> None:
    cfg = FinetuneConfig.model_validate({**BASE, "batch_size": 4, **overrides})
    assert total_steps(cfg, 37, 1) == steps


def test_collate_pads_inputs_and_ignores_padding_in_the_loss() -> None:
    batch = collate([([1, 2, 3], [-100, 2, 3]), ([4], [4])], pad_id=0)
    assert batch["input_ids"].tolist() == [[1, 2, 3], [4, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 2, 3], [4, -100, -100]]


def test_progress_bar_reads_in_a_log() -> None:
    assert progress_bar(5, 20) == "[#####...............]  5/20  25%"
    assert progress_bar(20, 20).startswith("[####################] 20/20 100%")
