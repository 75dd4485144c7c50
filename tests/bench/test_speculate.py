"""`sc2 bench --speculate`: its workloads are what they claim, and it reports the figures (measurements,
not assertions about speed)."""

from __future__ import annotations

import pytest

from sc2cli.bench import BenchOptions, run_bench
from sc2cli.bench.speculate import asked_before, deleted_lines, nothing_to_copy, repeated_pattern

from ..checkpoints import write_tiny_model

DOCUMENT = "".join(
    f"def function_{i}(value):\n    return compute(value, {i}) + offset_{i}\n\n" for i in range(12)
)


def test_a_deleted_line_is_missing_from_prefix_and_suffix_alike():
    requests = deleted_lines(DOCUMENT, 3, 16)
    assert len(requests) == 3 and len({r.prefix for r in requests}) == 3
    for r in requests:
        gone = DOCUMENT[len(r.prefix) : len(DOCUMENT) - len(r.suffix)]
        assert gone.count("\n") == 1 and len(gone.strip()) >= 24
        assert r.prefix + gone + r.suffix == DOCUMENT and r.max_tokens == 16 and r.raw


def test_the_repeated_pattern_and_the_random_prose():
    table = repeated_pattern(8)
    assert table.prefix.endswith('"option_20": Setting(') and '"option_21"' in table.suffix
    prose = nothing_to_copy(2, 8, seed=1)
    assert prose[0].prefix != prose[1].prefix and prose[0].suffix == ""
    assert nothing_to_copy(2, 8, seed=1) == prose


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_tiny_model(tmp_path_factory.mktemp("specmodel"), seed=3)


def test_the_report_has_every_workload_with_and_without_drafts(folder):
    options = BenchOptions(model=str(folder), prompt_lengths=(8,), decode_tokens=6, runs=1, speculate=True)
    results = run_bench(options).to_json()["results"]
    assert results["speculate_asked_again_drafted_per_run"]["sc2"] > 0  # the first answers, recalled
    for name in ("overlap", "no_overlap", "asked_again"):
        rates = results[f"decode_{name}_tok_s"]
        assert rates["sc2"] > 0 and rates["sc2-no-speculate"] > 0
        assert results[f"speculate_{name}_speedup"]["sc2"] == pytest.approx(
            rates["sc2"] / rates["sc2-no-speculate"], rel=0.02
        )
        assert 0 <= results[f"speculate_{name}_acceptance"]["sc2"] <= 1


def test_asked_before_leaves_the_prompt_cached_and_the_answer_recalled(folder):
    import sc2cli
    from sc2cli.completion.generate import generate
    from sc2cli.completion.speculate import AGREEMENT, SEPARATOR

    model = sc2cli.load_model(folder, dtype="fp32", device="cpu")
    ids = tuple(range(40, 80))
    answer = [step.token for step in generate(model, ids, max_new_tokens=6)]
    cache, recall = asked_before(model, ids, 6, ())
    assert cache.tokens[: len(ids)] == list(ids)
    assert recall.ids == [*ids[-AGREEMENT:], *answer, SEPARATOR]
