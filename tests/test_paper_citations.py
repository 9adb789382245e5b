"""Paper numbers cite docs/PAPER.md, a file every clone has, by a section that exists."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# `docs/PAPER.md, "Section"` or `docs/PAPER.md ("Section")`, possibly wrapped over comment lines
CITATION = re.compile(r"docs/PAPER\.md(?:, | \()[\"']([^\"']+)[\"']")


def test_every_cited_section_exists():
    headings = [
        line.lstrip("#").strip()
        for line in (ROOT / "docs" / "PAPER.md").read_text().splitlines()
        if line.startswith("## ")
    ]
    sources = [*ROOT.glob("src/**/*.py"), *ROOT.glob("params/**/*.yaml"), *ROOT.glob("tests/*.py")]
    files = [p for p in sources if p.name != Path(__file__).name]
    cited = {
        (path.relative_to(ROOT), section)
        for path in files
        for section in map(_unwrap, CITATION.findall(path.read_text()))
    }
    assert cited, "no citations found: the pattern is out of date"
    missing = [(str(p), s) for p, s in cited if not any(h.startswith(s) for h in headings)]
    assert not missing, f"citations of sections docs/PAPER.md lacks: {missing}"


def _unwrap(text: str) -> str:
    return re.sub(r"\s*\n\s*(#\s*)?", " ", text)


def test_nothing_cites_a_file_outside_the_repository():
    files = [*ROOT.glob("src/**/*.py"), *ROOT.glob("params/**/*.yaml"), *ROOT.glob("notebooks/*")]
    assert not [p for p in files if "TINYLLAMA.md" in p.read_text()]
