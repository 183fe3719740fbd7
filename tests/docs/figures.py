"""Where a figure in README.md and docs/*.md comes from, and whether its file holds it.

The convention: measured figures stand between two comments that name the
committed results file they come from (one or more, comma-separated)::

    <!-- figures: results/bench-2026-11-26.json -->
    | measure | tiercel | against |
    | L1 hit of a cached function | 0.48 us | 0.57 us cachetools (0.83x) |
    <!-- /figures -->

A block may also open and close inside a sentence, around one clause
(``takes <!-- figures: results/x.json -->1.4 ms<!-- /figures -->, so``); a marker
that starts a line stands alone on it, since Markdown would read the rest of
that line as raw HTML. Fenced code and code spans are not checked.

Inside a block every number outside code spans must be a value the named
files hold, at the precision it is printed with: ``0.48 us`` is any value in
[0.475, 0.485] us, ``2.2 ms`` matches 2,169.71 us, ``40,464`` is 40,464. A file
holds every number in it: numeric fields (in their row's ``unit``: a printed
time matches times, a ratio ratios, a percentage percentages; a bare number
matches any) and the numbers written in its strings (row names, notes, targets),
so a workload parameter named in a row ("10 ms compute", "200 keys") is
supported by that row. Outside the blocks, measured-looking figures are
refused: a ratio (``1.05x``, ``14x``), a decimal microsecond time, a decimal
percentage and a rate (``3,040 req/s``). Workload parameters and settings
("2 nodes x 2 processes", "1 s", "1,800,000 ms") may stand anywhere.

A cited file must be one that ``.gitignore`` keeps (``!results/...``): the rest
of ``results/`` is local, and a figure nobody else can check is not a figure.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: ``<!-- figures: results/a.json, results/b.json -->`` opens a block, ``<!-- /figures -->``
#: closes it (``files`` is None).
MARKER = re.compile(r"<!--\s*(?:figures:\s*(?P<files>[^>]*?)|/figures)\s*-->")
FENCED = re.compile(r"^[ \t]*(```|~~~).*?^[ \t]*\1[^\n]*$", re.MULTILINE | re.DOTALL)
#: A code span, which may wrap onto the next line (not across a blank line).
CODE_SPAN = re.compile(r"`[^`\n]*(?:\n[^`\n]+)?`")
COMMENT = re.compile(r"<!--.*?-->", re.DOTALL)
#: Dates (2026-11-26) and times of day (15:18) name a run; they are not figures.
DATE = re.compile(r"\b\d{4}-\d{2}-\d{2}\b|\b\d{1,2}:\d{2}\b")

#: Scale of each unit to its dimension's base (seconds, bytes).
TIME = {"us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "min": 60.0}
SIZE = {"B": 1, "KB": 1e3, "KiB": 2**10, "MB": 1e6, "MiB": 2**20, "GB": 1e9, "GiB": 2**30}
UNITS = "|".join(sorted((*TIME, *SIZE, "%"), key=len, reverse=True))

#: A number (``40,464``, ``0.48``) not glued to a word (``L1``, ``p99``, ``x86_64``),
#: then an optional unit; ``x`` only when glued to the number (``2 x 2`` is no ratio).
NUMBER = re.compile(
    r"(?<![\w.])(?P<number>\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?)(?![\d,]*\.\d)"
    rf"(?:(?P<ratio>x)\b|(?:\s?(?P<unit>{UNITS}))(?![\w/]))?"
)

#: The fields of a bench row that hold ratios when the row has a peer.
RATIO_FIELDS = ("ratio", "ratio_min", "ratio_max")

#: Measured-looking figures that need a results block around them.
MEASURED = (
    re.compile(r"(?<![\w.,])\d[\d,]*(?:\.\d+)?x\b"),  # a ratio: 1.05x, 14x
    re.compile(r"(?<![\w.,])\d[\d,]*\.\d+\s?(?:us|µs)\b"),  # a decimal microsecond time
    re.compile(r"(?<![\w.,])\d+\.\d+\s?%"),  # a decimal percentage
    re.compile(r"(?<![\w.])\d[\d,]*(?:\.\d+)?\s?(?:req|requests|tasks|calls)/s\b"),  # a rate
)


@dataclass(frozen=True)
class Figure:
    """One printed number: where it stands and what range of values it means."""

    doc: str
    line: int
    text: str
    value: float
    tolerance: float
    dimension: str  # "time" (seconds), "size" (bytes), "ratio", "percent" or "" (any)

    def held_by(self, held: Held) -> bool:
        """True when some value of ``held`` in this figure's dimension rounds to it."""
        values = held.scaled.get(self.dimension, ()) if self.dimension else held.raw
        slack = self.tolerance * (1 + 1e-9) + 1e-12
        return any(abs(value - self.value) <= slack for value in values)


@dataclass
class Held:
    """Every number a set of results files holds: as written, and scaled by dimension."""

    raw: set[float] = field(default_factory=set)
    scaled: dict[str, set[float]] = field(
        default_factory=lambda: {name: set() for name in ("time", "size", "ratio", "percent")}
    )

    def add(self, value: float, unit: str | None) -> None:
        # A printed figure carries no sign of its own ("-0.207 pt" reads as 0.207).
        value = abs(value)
        self.raw.add(value)
        dimension, scale = scale_of(unit)
        if dimension:
            self.scaled[dimension].add(value * scale)


@dataclass(frozen=True)
class Problem:
    """A figure (or citation) the committed results do not support."""

    doc: str
    line: int
    text: str
    why: str

    def __str__(self) -> str:
        return f"{self.doc}:{self.line}: {self.text!r}: {self.why}"


def scale_of(unit: str | None) -> tuple[str, float]:
    """(dimension, factor to its base) of a unit; ("", 1) for counts and rates."""
    if unit in TIME:
        return "time", TIME[unit]
    if unit in SIZE:
        return "size", float(SIZE[unit])
    if unit == "x":
        return "ratio", 1.0
    if unit == "%":
        return "percent", 1.0
    return "", 1.0


def numbers(text: str) -> Iterator[tuple[str, float, int, str | None, int]]:
    """(printed text, value, decimals printed, unit, offset) of each number in ``text``."""
    for match in NUMBER.finditer(text):
        printed = match.group("number")
        digits = printed.replace(",", "")
        decimals = len(digits.split(".")[1]) if "." in digits else 0
        unit = match.group("unit") or match.group("ratio")
        yield " ".join(match.group(0).split()), float(digits), decimals, unit, match.start()


def held_in(paths: Iterable[Path]) -> Held:
    """Every number in the JSON files at ``paths``."""
    held = Held()
    for path in paths:
        _walk(json.loads(path.read_text()), held, None)
    return held


def _walk(node: Any, held: Held, unit: str | None) -> None:
    if isinstance(node, dict):
        own = node.get("unit")
        unit = own if isinstance(own, str) else unit
        # A bench row against a peer keeps its ratio and the ratio's spread beside
        # figures in ``unit``; a row without a peer keeps its own spread there.
        ratios = RATIO_FIELDS if node.get("ratio") is not None else ()
        for key, value in node.items():
            _walk(value, held, "x" if key in ratios else unit)
    elif isinstance(node, list):
        for value in node:
            _walk(value, held, unit)
    elif isinstance(node, bool) or node is None:
        return
    elif isinstance(node, int | float):
        held.add(float(node), unit)
    elif isinstance(node, str):
        for _, value, _, written_unit, _ in numbers(node):
            held.add(value, written_unit)


def kept_results(gitignore: Path) -> set[str]:
    """The ``results/`` files ``.gitignore`` keeps (its ``!results/...`` lines, no globs)."""
    kept = set()
    for line in gitignore.read_text().splitlines():
        line = line.strip()
        if line.startswith("!results/") and not any(ch in line for ch in "*?["):
            kept.add(line[1:])
    return kept


def check(doc: Path, root: Path, kept: set[str]) -> list[Problem]:
    """Every problem with the figures of one Markdown file (``root`` is the repository).

    A marker may stand on a line of its own (around a table or paragraphs) or
    inside a sentence (around one clause; a marker that starts a line would
    end the paragraph): the text is checked in pieces between markers.
    """
    name = str(doc.relative_to(root))
    # Code is no prose: blank it out, keeping offsets (and so line numbers).
    text = CODE_SPAN.sub(_blank, FENCED.sub(_blank, doc.read_text()))
    problems: list[Problem] = []
    held: Held | None = None
    opened_at = 0
    start = 0

    def line_of(offset: int) -> int:
        return text.count("\n", 0, offset) + 1

    for marker in MARKER.finditer(text):
        problems += _piece(name, text, start, marker.start(), held, line_of)
        start = marker.end()
        at = line_of(marker.start())
        if _starts_line(text, marker) and not _ends_line(text, marker):
            # Markdown reads the rest of such a line as raw HTML, not as prose.
            problems.append(Problem(name, at, marker.group(0), "starts a line but not alone"))
        if marker.group("files") is None:  # a close
            if held is None:
                problems.append(Problem(name, at, marker.group(0), "closes no block"))
            held = None
            continue
        if held is not None:
            problems.append(Problem(name, at, marker.group(0), "a block in a block"))
        held, missing = _cited(marker.group("files"), root, kept)
        if missing:
            problems.append(
                Problem(name, at, marker.group(0), f"cites no kept results file: {missing}")
            )
        opened_at = at
    problems += _piece(name, text, start, len(text), held, line_of)
    if held is not None:
        problems.append(Problem(name, opened_at, "<!-- figures: ... -->", "never closed"))
    return problems


def _starts_line(text: str, marker: re.Match[str]) -> bool:
    return not text[text.rfind("\n", 0, marker.start()) + 1 : marker.start()].strip()


def _ends_line(text: str, marker: re.Match[str]) -> bool:
    end = text.find("\n", marker.end())
    return not text[marker.end() : end if end >= 0 else len(text)].strip()


def _blank(match: re.Match[str]) -> str:
    return re.sub(r"[^\n]", " ", match.group(0))


def _cited(files: str, root: Path, kept: set[str]) -> tuple[Held, list[str]]:
    """What the files a marker names hold, and the names that are no kept results file."""
    names = files.split(",")
    names = [part.strip() for part in names if part.strip()]
    missing = [part for part in names if part not in kept or not (root / part).is_file()]
    if not names:
        missing = ["(none named)"]
    return held_in(root / part for part in names if part not in missing), missing


def _piece(
    name: str,
    text: str,
    start: int,
    end: int,
    held: Held | None,
    line_of: Callable[[int], int],
) -> list[Problem]:
    """Problems in ``text[start:end]``, inside a block (``held``) or outside (None)."""
    piece = DATE.sub(_blank, COMMENT.sub(_blank, text[start:end]))
    if held is None:
        found = (match for pattern in MEASURED for match in pattern.finditer(piece))
        return [
            Problem(
                name,
                line_of(start + match.start()),
                " ".join(match.group(0).split()),
                "a measured figure outside a figures block",
            )
            for match in sorted(found, key=lambda match: match.start())
        ]
    problems = []
    for printed, value, decimals, unit, offset in numbers(piece):
        dimension, scale = scale_of(unit)
        line = line_of(start + offset)
        figure = Figure(name, line, printed, value * scale, 0.5 * 10**-decimals * scale, dimension)
        if not figure.held_by(held):
            problems.append(
                Problem(name, line, printed, "no value in the cited files rounds to it")
            )
    return problems
