"""Every figure README.md and docs/*.md quote is one a committed results file holds.

See ``tests/docs/figures.py`` for the convention (``<!-- figures: results/... -->``
blocks). When a results file is replaced by a new run, this test names each
figure the documents still quote from the old one.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.docs.figures import check, kept_results, numbers

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
KEPT = kept_results(ROOT / ".gitignore")


@pytest.mark.parametrize("doc", DOCS, ids=lambda path: str(path.relative_to(ROOT)))
def test_every_figure_comes_from_a_committed_results_file(doc: Path) -> None:
    problems = check(doc, ROOT, KEPT)
    assert not problems, "\n".join(str(problem) for problem in problems)


def test_the_benchmarks_page_is_what_bench_report_makes_of_the_file_it_cites() -> None:
    import json
    import re

    from bench.report import markdown

    page = (ROOT / "docs" / "benchmarks.md").read_text()
    cited = re.search(r"<!-- figures: (\S+) -->", page)
    assert cited is not None
    record = json.loads((ROOT / cited.group(1)).read_text())
    assert page.rstrip("\n") == markdown(record, source=cited.group(1))


def test_the_readme_cites_the_files_its_headline_figures_come_from() -> None:
    text = (ROOT / "README.md").read_text()
    assert "<!-- figures: results/bench-2026-11-26.json -->" in text
    assert "<!-- figures: results/reliability-faults.json -->" in text


def _problems(tmp_path: Path, body: str, results: str = '{"rows": []}') -> list[str]:
    (tmp_path / "results").mkdir(exist_ok=True)
    (tmp_path / "results" / "run.json").write_text(results)
    (tmp_path / ".gitignore").write_text("results/*\n!results/run.json\n")
    doc = tmp_path / "README.md"
    doc.write_text(body)
    return [p.text for p in check(doc, tmp_path, kept_results(tmp_path / ".gitignore"))]


ROW = (
    '{"rows": [{"benchmark": "2000 requests / 200 keys, 10 ms compute", "unit": "us",'
    ' "tiercel": 85.87, "peer_value": 2169.71, "ratio": 1.1359, "note": "p50 11.5 ms"}]}'
)


def test_a_figure_the_file_holds_at_its_printed_precision_passes(tmp_path: Path) -> None:
    body = (
        "<!-- figures: results/run.json -->\n"
        "| 2,000 requests / 200 keys, 10 ms compute | 85.9 us | 2.2 ms (1.14x), p50 11.5 ms |\n"
        "<!-- /figures -->\n"
    )
    assert _problems(tmp_path, body, ROW) == []


def test_a_figure_the_file_does_not_hold_fails(tmp_path: Path) -> None:
    body = (
        "<!-- figures: results/run.json -->\n"
        "| hit | 85.7 us | 2.3 ms (1.2x) | 40,464 requests |\n"
        "<!-- /figures -->\n"
    )
    assert _problems(tmp_path, body, ROW) == ["85.7 us", "2.3 ms", "1.2x", "40,464"]


def test_measured_looking_figures_outside_a_block_fail(tmp_path: Path) -> None:
    body = (
        "On 2 nodes x 2 processes, 200 keys and 10 ms compute, 1 s bound: fine.\n"
        "It ran 14x faster, a hit took 0.48 us, 76.8 % hits, 3,040 req/s.\n"
        "`python -m bench --ratio 2x` and <!-- 1.5x --> are code and comment.\n"
        "```\nprinted 14x\n```\n"
    )
    assert _problems(tmp_path, body) == ["14x", "0.48 us", "76.8 %", "3,040 req/s"]


def test_a_block_must_cite_a_kept_file_and_be_closed(tmp_path: Path) -> None:
    opened = "<!-- figures: results/bench-latest.json -->"
    assert _problems(tmp_path, f"{opened}\na row\n") == [opened, "<!-- figures: ... -->"]
    assert _problems(tmp_path, "text <!-- /figures -->\n") == ["<!-- /figures -->"]


def test_a_block_may_open_and_close_inside_a_sentence(tmp_path: Path) -> None:
    body = (
        "With the 16 KiB default, a hit takes <!-- figures: results/run.json -->85.9 us "
        "(1.14x)<!-- /figures --> at 3600 s TTL,\nnot 1.5x.\n"
    )
    assert _problems(tmp_path, body, ROW) == ["1.5x"]
    wrong = body.replace("85.9 us", "95.9 us")
    assert _problems(tmp_path, wrong, ROW) == ["95.9 us", "1.5x"]
    wrapped = "a hit takes <!-- figures:\nresults/run.json -->85.9\nus<!-- /figures -->, not 1.5x\n"
    assert _problems(tmp_path, wrapped, ROW) == ["1.5x"]
    assert _problems(tmp_path, wrapped.replace("85.9", "95.9"), ROW) == ["95.9 us", "1.5x"]
    assert _problems(tmp_path, "<!-- figures: results/run.json -->85.9 us\n", ROW) == [
        "<!-- figures: results/run.json -->",
        "<!-- figures: ... -->",
    ]


def test_numbers_skip_names_versions_and_dates_glued_to_words() -> None:
    found = [printed for printed, *_ in numbers("L1 p99 x86_64 Python 3.11.7, 2 x 2, 1,800,000 ms")]
    assert found == ["2", "2", "1,800,000 ms"]
