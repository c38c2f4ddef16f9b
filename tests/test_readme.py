"""Every ``from binface ... import ...`` / ``import binface...`` line of the README's
Python examples works: the README is the first thing a new user copies from."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
_BLOCK = re.compile(r"^```(?:python|py|pycon)[^\n]*\n(.*?)^```", re.M | re.S)


def readme_imports(text: str) -> list[str]:
    """The import statements of the python code blocks, continuation lines joined."""
    out: list[str] = []
    for block in _BLOCK.findall(text):
        lines = block.splitlines()
        i = 0
        while i < len(lines):
            line = lines[i].strip()
            if line.startswith(">>> "):
                line = line[4:]
            if line.startswith(("from binface", "import binface")):
                stmt = line.split("#", 1)[0].rstrip()
                while (stmt.count("(") > stmt.count(")") or stmt.endswith("\\")) and \
                        i + 1 < len(lines):
                    i += 1
                    nxt = lines[i].strip()
                    nxt = nxt[4:] if nxt.startswith(("... ", ">>> ")) else nxt
                    stmt = stmt.rstrip("\\") + " " + nxt.split("#", 1)[0].strip()
                out.append(stmt)
            i += 1
    return out


def test_readme_imports_are_found():
    found = readme_imports("```python\nfrom binface.eval import (\n    verification,\n)\n"
                           "x = 1\nimport binface.data as d  # note\n```\n"
                           "```bash\nfrom binface import nothing\n```\n")
    assert found == ["from binface.eval import ( verification, )", "import binface.data as d"]


def test_every_readme_import_works():
    imports = readme_imports(README.read_text(encoding="utf-8"))
    assert imports, "README.md has no python example importing binface"
    broken = []
    for stmt in imports:
        try:
            exec(compile(stmt, "README.md", "exec"), {})
        except Exception as exc:  # noqa: BLE001 - every failure is reported, with its kind
            broken.append(f"{stmt}  ->  {type(exc).__name__}: {exc}")
    assert not broken, "README imports that fail:\n" + "\n".join(broken)
