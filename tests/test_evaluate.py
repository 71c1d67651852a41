"""The evaluation harness: real decoding equals teacher forcing, cells resume, --quick runs end to end."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass

import pytest
import torch

from core.budget import Budget
from core.decode import decode_forced, forward_teacher
from core.eval.cache import CellCache, code_digest, policy_digest
from core.eval.cli import main
from core.eval.intervals import ratio_interval, resample_indices, share_interval
from core.eval.measure import task_cells
from core.eval.report import figure_panels
from core.models import LoadedModel
from core.policies import UnknownPolicyError, make_policy
from tests.conftest import tiny_llama


@pytest.fixture(scope="module")
def lm() -> LoadedModel:
    return tiny_llama(seed=0, layers=3)  # 3 layers: Quest (dense layers 0-1) is sparse in layer 2


CASES = [("streaming", "50%"), ("oracle", "12"), ("random", "30%"), ("h2o", "40%"), ("snapkv", "50%"),
         ("quest", "50%")]


@pytest.mark.parametrize(("name", "budget"), CASES)
def test_teacher_row_equals_real_decode_step(lm: LoadedModel, name: str, budget: str) -> None:
    ids, prompt_len = torch.randint(0, 128, (56,), generator=torch.Generator().manual_seed(3)), 10
    teacher, teacher_stats = forward_teacher(lm, ids, make_policy(name), Budget.parse(budget), prompt_len)
    decoded, decode_stats = decode_forced(lm, ids, make_policy(name), Budget.parse(budget), prompt_len)
    assert decoded.shape == (56 - prompt_len + 1, 128)
    assert torch.allclose(teacher[0, prompt_len - 1 :], decoded, atol=1e-4)
    assert teacher_stats.read == decode_stats.read and teacher_stats.total == decode_stats.total
    assert teacher_stats.side == pytest.approx(decode_stats.side)
    assert 0.0 < decode_stats.sparsity < 1.0


@pytest.mark.parametrize(("name", "per_token"), [("oracle", 0.5), ("quest", None), ("streaming", 0.0)])
def test_bytes_read_count_what_a_method_reads_beside_its_rows(lm: LoadedModel, name: str, per_token) -> None:
    """The oracle reads all of K (half a K/V row per past token), Quest one page's bounds (min and max, one
    K/V row) per page, streaming nothing beside its rows."""
    ids, prompt_len = torch.randint(0, 128, (60,), generator=torch.Generator().manual_seed(4)), 12
    policy = make_policy(name)
    _, stats = forward_teacher(lm, ids, policy, Budget.parse("25%"), prompt_len)
    past = torch.arange(prompt_len, 60) + 1
    per_row = past / 2 if per_token == 0.5 else (past + 15) // 16 if per_token is None else past * 0.0
    layers = sum(policy.is_sparse_layer(i) for i in range(lm.model.config.num_hidden_layers))
    expected = float(per_row.sum()) * layers * lm.model.config.num_key_value_heads
    assert stats.side == pytest.approx(expected)
    assert stats.byte_sparsity == pytest.approx(1 - (stats.read + expected) / stats.total)


@dataclass
class Sample:
    input_ids: torch.Tensor
    answer_positions: list[int]
    prompt_len: int


def test_task_cells_share_the_prefill_and_match_teacher_forcing(lm: LoadedModel) -> None:
    ids = torch.randint(0, 128, (40,), generator=torch.Generator().manual_seed(5))
    sample = Sample(ids, [30, 31, 32, 33, 34], 30)
    names = ["dense", "oracle", "h2o", "snapkv", "streaming", "random"]
    policies = {n: make_policy(n) for n in names}
    budgets = {n: [Budget.dense()] if n == "dense" else [Budget(ratio=0.3), Budget(tokens=6)] for n in names}
    cells = task_cells(lm, sample, policies, budgets)
    assert len(cells) == 11
    answer = torch.tensor(sample.answer_positions)
    for (name, label), cell in cells.items():
        budget = next(b for b in budgets[name] if b.label == label)
        logits, _ = forward_teacher(lm, ids[:35], make_policy(name), budget, sample.prompt_len)
        wrong = int((logits[0, answer - 1].argmax(-1) != ids[answer]).sum())
        assert cell == {"wrong": wrong, "tokens": 5}, (name, label)


def test_cell_cache_resumes_from_disk(tmp_path) -> None:
    cache = CellCache(tmp_path / "cells.jsonl")
    cache.put(("ppl", "oracle", "50%", "abc"), {"nll": 1.5})
    cache.put(("ppl", "oracle", "50%", "abc"), {"nll": 2.5})  # the last write wins
    again = CellCache(tmp_path / "cells.jsonl")
    assert again.get(("ppl", "oracle", "50%", "abc")) == {"nll": 2.5}
    assert again.get(("ppl", "h2o", "50%", "abc")) is None


def test_cell_identity_follows_the_code_that_measures_it(tmp_path, monkeypatch) -> None:
    from core.eval import cache

    assert code_digest(make_policy("h2o")) == code_digest(make_policy("h2o"))
    assert code_digest(make_policy("h2o")) != code_digest(make_policy("quest"))  # each policy's own module
    for pattern in cache.MEASURING_CODE:
        for file in cache.PACKAGE.glob(pattern):
            (tmp_path / file.relative_to(cache.PACKAGE)).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / file.relative_to(cache.PACKAGE)).write_bytes(file.read_bytes())
    monkeypatch.setattr(cache, "PACKAGE", tmp_path)
    before = code_digest(make_policy("h2o"))
    driver = tmp_path / "policies" / "driver.py"
    source = driver.read_text()
    first_docstring = source.index('"""', source.index("def ")) + 3
    driver.write_text(source[:first_docstring] + "Reworded. " + source[first_docstring:] + "# a comment\n")
    assert code_digest(make_policy("h2o")) == before  # documentation is not code: the cells stand
    driver.write_text(source + "CHANGED = 1\n")
    assert code_digest(make_policy("h2o")) != before


def test_paired_intervals_hold_the_point_and_shrink_to_it_for_equal_chunks() -> None:
    draws = resample_indices(8, 500, seed=0)
    nll, tokens = [10.0, 30.0, 12.0, 50.0, 20.0, 11.0, 40.0, 25.0], [10] * 8
    assert ratio_interval(nll, nll, tokens, draws) == pytest.approx([1.0, 1.0])  # the spread of text cancels
    shifted = [v + 1.0 for v in nll]  # 0.1 nat per token worse on every chunk
    assert ratio_interval(shifted, nll, tokens, draws) == pytest.approx([math.exp(0.1)] * 2)
    lo, hi = share_interval([0, 1, 0, 0, 1, 0, 1, 0], [1] * 8, draws)
    assert lo < 37.5 < hi and lo >= 0 and hi <= 100


def test_policy_identity_ignores_per_sequence_state() -> None:
    policy = make_policy("h2o")
    before = policy_digest(policy)
    policy.reset()
    assert policy_digest(policy) == before
    assert policy_digest(make_policy("h2o", recent_share=0.25)) != before


def test_quick_run_writes_json_and_markdown_and_resumes(tmp_path) -> None:
    pytest.importorskip("core.data")
    pytest.importorskip("core.tasks")
    out, cache = tmp_path / "results", tmp_path / "cache"
    args = ["--quick", "--out", str(out), "--cache-dir", str(cache), "--policies", "dense,oracle,h2o,streaming"]
    assert main(args) == 0
    doc = json.loads((out / "eval_tiny-random-llama.json").read_text())
    results = doc["results"]
    task_stages = {f"{t}{where}" for t in ("coref", "entities") for where in ("", "/question-in-prompt")}
    assert set(results) == {"attention", "perplexity", "perplexity_long_prompt", "decode"} | task_stages
    assert results["attention"]["oracle"]["50%"]["ranking_hit_accuracy"] == pytest.approx(1.0)
    assert results["attention"]["oracle"]["50%"]["ranking_hit_accuracy_last"] == pytest.approx(1.0)
    assert results["decode"]["streaming"]["50%"]["max_logprob_gap"] < 1e-3
    assert results["coref"]["h2o"]["50%"]["samples"] == 2 and "32 tok" not in results["coref"]["h2o"]
    for stage in ("perplexity", "perplexity_long_prompt"):
        h2o = results[stage]["h2o"]["50%"]
        assert len(h2o["chunk_nll"]) == doc["data"]["chunks"] == 2
        assert h2o["ppl_vs_dense_ci"][0] <= h2o["ppl_vs_dense"] <= h2o["ppl_vs_dense_ci"][1]
        assert h2o["byte_sparsity"] < h2o["achieved_sparsity"]  # its accumulated attention is read too
    assert results["perplexity_long_prompt"]["h2o"]["50%"]["tokens"] == 2 * (96 - 64 - 1)
    table = (out / "eval_tiny-random-llama.md").read_text()
    assert "| oracle |" in table and "Task coref/question-in-prompt" in table and "protocol 2" in table
    assert re.search(r"\| layer \| oracle \(50%\) \| (h2o|streaming) \(50%\) \|\n", table)  # best baseline by layer
    assert (out / "eval_tiny-random-llama.html").is_file()
    panels = {p.title: p for p in figure_panels(doc)}
    ratio = panels["Perplexity / dense, protocol 1"]
    assert ratio.log_y and ratio.kind == "line" and "dense" not in ratio.series  # dense is the reference, 1
    assert ratio.series["h2o"].lo[0] <= ratio.series["h2o"].y[0] <= ratio.series["h2o"].hi[0]
    tokens = panels["Perplexity / dense at fixed token budgets, protocol 1"]
    assert tokens.kind == "bar" and tokens.series["h2o"].x == ["32 tok"]  # token budgets in their own panel
    tasks = next(p for title, p in panels.items() if title.startswith("Retrieval tasks"))
    assert tasks.kind == "bar" and tasks.series["streaming"].x == sorted(task_stages)
    assert doc["cells"]["cached"] == 0 and "read from the cell cache" not in table
    cells = (cache / "eval_tiny-random-llama.jsonl").read_text().count("\n")
    assert main(args) == 0  # everything cached: nothing is measured again
    assert (cache / "eval_tiny-random-llama.jsonl").read_text().count("\n") == cells
    again = json.loads((out / "eval_tiny-random-llama.json").read_text())
    assert again["cells"] == {"measured": 0, "cached": doc["cells"]["measured"]}
    reused = f"0 cells measured in this run, {doc['cells']['measured']} read from the cell cache"
    assert reused in (out / "eval_tiny-random-llama.md").read_text()


def test_a_dense_only_run_writes_its_tables_without_a_figure(tmp_path) -> None:
    out = tmp_path / "results"
    args = ["--quick", "--out", str(out), "--cache-dir", str(tmp_path / "cache"), "--policies", "dense",
            "--long-prompt", "0", "--tasks", "", "--decode-chunks", "0"]
    assert main(args) == 0
    doc = json.loads((out / "eval_tiny-random-llama.json").read_text())
    assert len(doc["results"]["perplexity"]["dense"]["100%"]["chunk_nll"]) == doc["data"]["chunks"]
    assert doc["png"].startswith("skipped: nothing to draw") and not (out / "eval_tiny-random-llama.html").exists()
    assert "| dense |" in (out / "eval_tiny-random-llama.md").read_text()


def test_gap_closure_and_its_interval_on_a_known_case() -> None:
    """Every chunk has the same per-token NLL, so every resample closes 1 - (11 - 10) / (14 - 10) = 0.75."""
    from core.eval.intervals import closure_interval
    from core.eval.report import _with_interval, gap_closed
    from core.eval.stages import against_rivals, gap_closure

    tokens = [100, 300, 50, 200]
    per = {"oracle": 10.0, "tokenbutler": 11.0, "h2o": 14.0, "random": 40.0, "dense": 9.0}
    by_policy = {n: {"25%" if n != "dense" else "100%": {"ppl": p, "chunk_nll": [math.log(p) * t for t in tokens],
                                                         "chunk_tokens": tokens, "byte_sparsity": 0.7}}
                 for n, p in per.items()}
    by_policy["snapkv"] = {"25%": {**by_policy["h2o"]["25%"], "ppl": 10.5, "byte_sparsity": 0.05}}  # reads more
    draws = resample_indices(len(tokens), 300, 0)
    nll = {n: by_policy[n]["25%"]["chunk_nll"] for n in ("tokenbutler", "oracle", "h2o")}
    assert closure_interval(nll["tokenbutler"], nll["oracle"], nll["h2o"], tokens, draws) == pytest.approx([0.75, 0.75])
    tied = [math.log(10.0) * t for t in tokens]  # a rival that equals the ceiling on every draw: no interval
    no_interval = closure_interval(nll["tokenbutler"], nll["oracle"], tied, tokens, draws)
    assert all(math.isnan(v) for v in no_interval)
    assert "nan" not in _with_interval(0.5, no_interval, "{:.2f}")  # the report says why, not [nan, nan]
    gap_closure(by_policy, 300, 0)
    closed = gap_closed(by_policy, "25%")
    assert closed["rival"] == "h2o" and closed["value"] == pytest.approx(0.75)
    against = by_policy["tokenbutler"]["25%"]["gap_closed_by_rival"]
    assert set(against) == {"h2o", "random"}, "snapkv reads more bytes: not a rival"
    assert against["random"]["value"] == pytest.approx(1 - 1 / 30)
    assert closed["ci"] == pytest.approx([0.75, 0.75])
    against_rivals(by_policy, 300, 0)
    over = by_policy["tokenbutler"]["25%"]["ppl_over_rival"]
    assert set(over) == {"oracle", "h2o", "random", "snapkv"}  # every method, whatever it reads
    assert over["h2o"]["value"] == pytest.approx(11 / 14) and over["h2o"]["ci"] == pytest.approx([11 / 14] * 2)
    by_policy["h2o"]["25%"]["ppl"] = 9.5  # the one rival left is under the oracle: no gap to close, no claim
    del by_policy["random"], by_policy["tokenbutler"]["25%"]["gap_closed"]
    gap_closure(by_policy, 300, 0)
    assert gap_closed(by_policy, "25%") is None


def test_rekey_moves_only_cells_measured_by_the_same_code(tmp_path, monkeypatch) -> None:
    """Cells keyed by the raw-bytes digest of code whose syntax tree equals today's move to today's key;
    a policy whose code differed at that revision keeps its old key (so it is measured again)."""
    from core.eval import rekey
    from core.eval.cache import digest, measuring_files

    quest_module = measuring_files(make_policy("quest"))[-1]

    def at(rev: str, file) -> bytes:
        return file.read_bytes() + (b"CHANGED = 1\n" if file == quest_module else b"# a comment\n")

    monkeypatch.setattr(rekey, "_at", at)
    old_id = {n: digest(policy_digest(make_policy(n)), digest(*(at("rev", f) for f in measuring_files(make_policy(n)))))
              for n in ("h2o", "quest")}
    path = tmp_path / "cells.jsonl"
    cache = CellCache(path)
    for name in ("h2o", "quest"):
        cache.put(("perplexity", name, old_id[name], "50%", "abc"), {"nll": 1.0})
    renames = rekey.policy_renames("rev")
    assert "h2o" in renames and "quest" not in renames
    assert rekey.rekey_file(path, {(n, o): new for n, (o, new) in renames.items()}, {}) == 1
    reread = CellCache(path)
    today = digest(policy_digest(make_policy("h2o")), code_digest(make_policy("h2o")))
    assert reread.get(("perplexity", "h2o", today, "50%", "abc")) == {"nll": 1.0}
    assert reread.get(("perplexity", "quest", old_id["quest"], "50%", "abc")) == {"nll": 1.0}


def test_methods_with_options_are_measured_as_methods_of_their_own(tmp_path) -> None:
    """A knob sweep: quest at two page sizes is two methods, each reading its own bytes beside its rows."""
    out = tmp_path / "results"
    args = ["--quick", "--out", str(out), "--cache-dir", str(tmp_path / "cache"), "--policies",
            "dense,quest:page_size=4,quest:page_size=16", "--long-prompt", "0", "--tasks", "", "--decode-chunks", "0"]
    assert main(args) == 0
    perplexity = json.loads((out / "eval_tiny-random-llama.json").read_text())["results"]["perplexity"]
    small, large = perplexity["quest:page_size=4"]["50%"], perplexity["quest:page_size=16"]["50%"]
    side = {name: cell["achieved_sparsity"] - cell["byte_sparsity"] for name, cell in (("4", small), ("16", large))}
    assert 3 * side["16"] < side["4"] < 4 * side["16"]  # page bounds, one pair a page (partial pages aside)
    for bad, message in (("quest:size=4", "has no option"), ("quest:page_size", "option=value"), ("nope", "Unknown")):
        with pytest.raises(UnknownPolicyError, match=message):
            main(["--quick", "--out", str(out), "--policies", f"dense,{bad}"])
