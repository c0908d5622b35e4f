"""The docs hold together: every ``algorithms.md §n`` cited in code, configs or docs names a section of
docs/algorithms.md, the README stays a short first page, and its links point at files that exist."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CITED = re.compile(r"algorithms\.md(?:\]\([^)]*\))? §(\d+(?:\.\d+)?)(?:–(\d+(?:\.\d+)?))?")


def sections() -> set[str]:
    text = (REPO / "docs" / "algorithms.md").read_text()
    found = set(re.findall(r"^#{2,3} (\d+(?:\.\d+)?)[. ]", text, re.M))
    for major, first, last in re.findall(r"^### (\d+)\.(\d+)–\d+\.(\d+)", text, re.M):
        found |= {f"{major}.{i}" for i in range(int(first), int(last) + 1)}
    return found


def test_every_cited_section_exists():
    known = sections()
    files = [*REPO.glob("lit_mcmc/**/*.py"), *REPO.glob("callbacks/*.py"), *REPO.glob("configs/**/*.yaml"),
             *REPO.glob("tests/**/*.py"), REPO / "README.md", *REPO.glob("docs/*.md")]
    cited = {(number, str(path.relative_to(REPO))) for path in files for match in CITED.finditer(path.read_text())
             for number in match.groups() if number}
    assert len(cited) > 20  # the pattern does find the citations
    assert sorted((n, f) for n, f in cited if n not in known) == []


def test_readme_is_a_short_first_page_with_working_links():
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) <= 300
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", readme):
        if not target.startswith("http"):
            assert (REPO / target).exists(), target
