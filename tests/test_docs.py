"""The docs name the tests that back each rule: every test they name exists."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_every_test_the_docs_name_exists():
    defined = set()
    for f in (ROOT / "tests").glob("*.py"):
        defined |= set(re.findall(r"^def (test_\w+)", f.read_text(), re.M))
    named = {}
    for doc in [*(ROOT / "docs").glob("*.md"), ROOT / "README.md"]:
        for name, star in re.findall(r"(?:::|`)(test_\w+)(\*?)(?![\w.])", doc.read_text()):
            named.setdefault(name + star, doc.name)  # test_tiled_*: a prefix
    assert named, "the docs name no test"
    def found(name: str) -> bool:
        return any(d.startswith(name[:-1]) for d in defined) if name.endswith("*") else name in defined

    missing = {name: doc for name, doc in named.items() if not found(name)}
    assert not missing, f"tests named in the docs but not defined: {missing}"
