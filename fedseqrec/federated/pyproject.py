"""The ``[tool.flwr.app.config]`` table of ``pyproject.toml``, generated from the option declarations.

    python -m fedseqrec.federated.pyproject           rewrite the table in ./pyproject.toml
    python -m fedseqrec.federated.pyproject --check   exit 1 if it differs from the declarations

Run it after adding or changing an option; a test fails until the table matches.
"""

from __future__ import annotations

import sys
from pathlib import Path

from fedseqrec.federated.config import RunConfig
from fedseqrec.options import toml_table

HEADER = "[tool.flwr.app.config]"


def generated_table() -> str:
    return "\n".join([HEADER, *toml_table(RunConfig().to_run_config())]) + "\n"


def current_table(text: str) -> tuple[int, int]:
    """Where the table is in ``text``: from its header to the next table (or the end)."""
    start = text.index(HEADER)
    following = text.find("\n[", start + len(HEADER))
    return start, len(text) if following < 0 else following + 1


def synced(text: str) -> str:
    start, end = current_table(text)
    tail = text[end:]
    return text[:start] + generated_table() + ("\n" + tail if tail else "")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    path = Path("pyproject.toml")
    text = path.read_text()
    new = synced(text)
    if "--check" in argv:
        if new != text:
            print(
                f"{path}: [tool.flwr.app.config] differs from the option declarations; run "
                "python -m fedseqrec.federated.pyproject",
                file=sys.stderr,
            )
            return 1
        return 0
    path.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
