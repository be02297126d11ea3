"""The documentation stays true to the repository: its links resolve, the commands the README
shows are accepted by the CLI, and no page or source file carries a developer's machine
folders or development history."""

from __future__ import annotations

import contextlib
import io
import re
import shlex
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "benchmarks" / "README.md"]
PAGES = [p for p in PAGES if p.exists()]

LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.S | re.M)


def _anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    text = FENCE.sub("", page.read_text())
    return {_anchor(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.+?)\s*#*\s*$", text, re.M)}


def _links(page: Path) -> list[str]:
    return LINK.findall(FENCE.sub("", page.read_text()))


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page: Path) -> None:
    broken = []
    for target in _links(page):
        if re.match(r"^[a-z]+:", target):  # http(s), mailto: not checked offline
            continue
        path_part, _, fragment = target.partition("#")
        dest = (page.parent / path_part).resolve() if path_part else page
        if path_part and not dest.exists():
            broken.append(target)
            continue
        if fragment and dest.suffix == ".md" and fragment not in _anchors(dest):
            broken.append(target)
    assert broken == [], f"{page.name}: links that do not resolve: {broken}"


def test_anchor_rule_matches_github() -> None:
    assert _anchor("The paper's configurations") == "the-papers-configurations"
    assert _anchor("`adamml predict`, stage by stage") == "adamml-predict-stage-by-stage"


def _readme_commands() -> list[list[str]]:
    """Every `adamml ...` (or `-m adamml.cli ...`) command line in the README's code blocks,
    as words from the sub-command on, comments and continuations removed."""
    commands = []
    for block in FENCE.findall((ROOT / "README.md").read_text()):
        block = block.replace("\\\n", " ")
        for line in block.splitlines():
            line = line.split(" #", 1)[0].strip()
            for part in re.split(r"&&|;", line):
                words = shlex.split(part)
                for i, word in enumerate(words):
                    if word.endswith("adamml") and not word.startswith("-") and "pip" not in words[:i]:
                        commands.append(words[i + 1 :])
                        break
                    if word == "-m" and i + 1 < len(words) and words[i + 1] == "adamml.cli":
                        commands.append(words[i + 2 :])
                        break
    return [c for c in commands if c]


@cache
def _help(sub: str) -> str:
    from adamml.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        with pytest.raises(SystemExit) as exit_:
            main([sub, "--help"])
    assert exit_.value.code == 0, f"adamml {sub} --help failed:\n{out.getvalue()}"
    return out.getvalue()


def test_readme_shows_commands() -> None:
    subs = {c[0] for c in _readme_commands()}
    assert {"demo", "train", "evaluate", "predict", "extract", "export"} <= subs


@pytest.mark.parametrize("words", _readme_commands(), ids=lambda w: " ".join(w)[:60])
def test_readme_command_is_accepted(words: list[str]) -> None:
    """The sub-command exists and its --help lists every flag the README passes it."""
    help_text = _help(words[0])
    flags = {w.split("=", 1)[0] for w in words[1:] if w.startswith("--")}
    offered = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", help_text))
    assert flags <= offered, f"adamml {words[0]}: --help does not offer {sorted(flags - offered)}"


def _product_files() -> list[Path]:
    files = list(PAGES)
    for folder, patterns in (("src", ("*.py", "*.yaml", "*.txt")), ("benchmarks", ("*.py", "*.sh", "*.md"))):
        for pattern in patterns:
            files += sorted((ROOT / folder).rglob(pattern))
    return sorted(set(files))


MACHINE_PATH = re.compile(r"(?<![\w.])/(tmp|home|root)/")
HISTORY = re.compile(r"\b(session \d+|sessions? \d+|issue \d+|issue #\d+|this session|(?:development )?round \d+)\b", re.I)


def test_no_machine_folders_or_development_history() -> None:
    found = []
    for path in _product_files():
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if MACHINE_PATH.search(line) or HISTORY.search(line):
                found.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()[:100]}")
    assert found == [], "\n".join(found)


def test_the_history_check_catches_what_it_is_for() -> None:
    for bad in ("measured in session 6", "see issue 11", "in this session", "/tmp/demo7", "/home/me/x", "/root/.cache"):
        assert MACHINE_PATH.search(bad) or HISTORY.search(bad), bad
    for fine in ("a session fixture", "rounds of timing", "src/adamml/tmp_helpers", "issues with audio"):
        assert not (MACHINE_PATH.search(fine) or HISTORY.search(fine)), fine
