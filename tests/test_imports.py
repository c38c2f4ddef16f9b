"""The source tree's shape: no import cycle between subpackages, no citation of a
document outside the repository, and every ``docs/*.md`` the source names exists.

The import graph is read from the source (``ast``), not from ``sys.modules``, so an
import inside a function counts as much as one at the top of a file: a cycle that
only closes at run time is still a cycle for the next engineer.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
PKG = SRC / "binface"


def module_name(path: Path) -> str:
    """``src/binface/data/cli.py`` -> ``binface.data.cli``; a package -> its name."""
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def node_of(module: str) -> str:
    """The graph node of a module: its subpackage, or the top-level module itself.

    ``binface.data.synth.faces`` -> ``data``; ``binface.cli_args`` -> ``cli_args``;
    ``binface`` (the root ``__init__``) -> ``binface``.
    """
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def _is_package(module: str) -> bool:
    return (SRC / Path(*module.split(".")) / "__init__.py").is_file()


def imported_modules(path: Path) -> set[str]:
    """Every ``binface`` module that ``path`` imports, anywhere in the file."""
    this = module_name(path)
    package = this if path.name == "__init__.py" else this.rpartition(".")[0]
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            # ``from binface import data`` / ``from binface.data import synth`` name modules
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                if _is_package(sub) or (SRC / Path(*sub.split("."))).with_suffix(".py").is_file():
                    found.add(sub)
    return {m for m in found if m == "binface" or m.startswith("binface.")}


def import_graph() -> dict[str, dict[str, list[str]]]:
    """node -> {imported node: [the files that import it]} (edges inside a node dropped)."""
    graph: dict[str, dict[str, list[str]]] = {}
    for path in sorted(PKG.rglob("*.py")):
        src = node_of(module_name(path))
        graph.setdefault(src, {})
        for target in imported_modules(path):
            dst = node_of(target)
            if dst != src:
                graph[src].setdefault(dst, []).append(str(path.relative_to(ROOT)))
    return graph


def find_cycles(graph: dict[str, dict[str, list[str]]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def describe(cycle: list[str], graph: dict[str, dict[str, list[str]]]) -> str:
    members = set(cycle)
    lines = [" <-> ".join(cycle) + ":"]
    for a in cycle:
        for b, files in sorted(graph.get(a, {}).items()):
            if b in members:
                lines.append(f"  {a} -> {b} in {', '.join(sorted(set(files)))}")
    return "\n".join(lines)


def test_graph_sees_imports_inside_functions_and_relative_imports(tmp_path):
    """The reader itself: a function-level and a relative import both make edges."""
    pkg = PKG / "eval"
    found = imported_modules(pkg / "cli.py")  # imports binface.models.loading inside run()
    assert "binface.models.loading" in found
    assert node_of("binface.data.synth.faces") == "data"
    assert node_of("binface.cli_args") == "cli_args"
    graph = {"a": {"b": ["x.py"]}, "b": {"c": ["y.py"]}, "c": {"a": ["z.py"]}, "d": {"a": []}}
    assert find_cycles(graph) == [["a", "b", "c"]]
    assert find_cycles({"a": {"b": []}, "b": {}}) == []


def test_no_import_cycle_between_subpackages():
    graph = import_graph()
    assert {"nn", "models", "data", "eval", "profile", "runtime", "cli"} <= set(graph)
    cycles = find_cycles(graph)
    assert not cycles, "import cycles between subpackages:\n" + "\n".join(
        describe(c, graph) for c in cycles)


def test_eval_does_not_import_train():
    """Evaluation sits below training: train calls eval, never the other way."""
    graph = import_graph()
    assert "train" not in graph["eval"], graph["eval"].get("train")


# ------------------------------------------------------------------------- docs
CITATION = re.compile(r"\bREFERENCE(\.md|\s+section)")
DOC_PATH = re.compile(r"\bdocs/[\w./-]*\w\.md\b")


def _source_files() -> list[Path]:
    return sorted(p for p in SRC.rglob("*") if p.is_file() and p.suffix in (".py", ".md"))


def test_no_citation_of_a_document_outside_the_repository():
    bad = []
    for path in _source_files():
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if CITATION.search(line):
                bad.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    # a citation broken over two lines ("REFERENCE\nsection 3") counts too
    for path in _source_files():
        text = path.read_text(encoding="utf-8")
        for m in CITATION.finditer(text):
            where = f"{path.relative_to(ROOT)}:{text.count(chr(10), 0, m.start()) + 1}"
            if not any(b.startswith(where + ":") for b in bad):
                bad.append(f"{where}: {m.group(0)!r}")
    assert not bad, "cite docs/ instead:\n" + "\n".join(bad)


def test_every_docs_path_named_in_the_source_exists():
    missing = []
    for path in _source_files():
        for m in DOC_PATH.finditer(path.read_text(encoding="utf-8")):
            if not (ROOT / m.group(0)).is_file():
                missing.append(f"{path.relative_to(ROOT)}: {m.group(0)}")
    assert not missing, "the source points to docs that do not exist:\n" + "\n".join(missing)


def test_docs_index_lists_every_doc():
    index = (ROOT / "docs" / "README.md").read_text(encoding="utf-8")
    docs = sorted(p.name for p in (ROOT / "docs").glob("*.md") if p.name != "README.md")
    assert docs, "no docs under docs/"
    unlisted = [d for d in docs if f"]({d})" not in index]
    assert not unlisted, f"docs/README.md does not link {unlisted}"
    for target in re.findall(r"\]\(([\w.-]+\.md)\)", index):
        assert (ROOT / "docs" / target).is_file(), f"docs/README.md links missing {target}"
