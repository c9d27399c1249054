"""The documentation: generated pages equal to what their sources give, the site builds without a warning, the
README stays a landing page, and nothing committed carries a path of the machine that made it."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_generated_pages_and_the_readme_status_are_up_to_date():
    result = subprocess.run([sys.executable, "scripts/docs.py", "--check"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_the_site_builds_with_warnings_as_errors(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "site" / "reference" / "cli" / "index.html").is_file()


def test_the_readme_is_a_landing_page_whose_links_resolve():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 250
    for target in re.findall(r"\]\((?!https?:)([^)#]+)", text):
        assert (ROOT / target).exists(), target


def test_committed_results_carry_no_path_of_the_machine_that_made_them():
    for path in (ROOT / "benchmarks" / "results").glob("*.json"):
        text = path.read_text()
        json.loads(text)
        assert not re.search(r'"(/(work|tmp|home|root|Users)/|[A-Za-z]:\\\\)', text), path.name


def test_the_docs_never_advise_a_broad_pkill():
    for path in [ROOT / "README.md", *(ROOT / "docs").rglob("*.md")]:
        assert "pkill" not in path.read_text(), path


@pytest.mark.slow
def test_the_command_outputs_the_docs_show_are_what_the_commands_print():
    """Each output block the docs show is what its command prints today (timings aside): a script made it."""
    result = subprocess.run(
        [sys.executable, "scripts/docs.py", "--outputs", "--check"], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    shown = [p for p in (ROOT / "docs").rglob("*.md") if "--8<--" in p.read_text()]
    assert shown and all((ROOT / "docs" / "snippets").glob("*.txt"))
