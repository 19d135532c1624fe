"""The import layering rules: ich/ never imports streamlit; pages never import each other."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_ich_never_imports_streamlit():
    offenders = [str(p.relative_to(REPO)) for p in (REPO / "ich").rglob("*.py")
                 if any(m.split(".")[0] == "streamlit" for m in imported_modules(p))]
    assert not offenders, f"these ich modules import streamlit: {offenders}"


def test_pages_never_import_each_other():
    pages = sorted((REPO / "pages").glob("*.py"))
    page_modules = {p.stem for p in pages} | {"app"}
    for page in [*pages, REPO / "app.py"]:
        if not page.exists():
            continue
        bad = {m for m in imported_modules(page) if m.split(".")[0] in page_modules or m.startswith("pages")}
        assert not bad, f"{page.name} imports another page: {bad}"


def test_every_ich_module_states_its_job():
    missing = []
    for p in (REPO / "ich").rglob("*.py"):
        doc = ast.get_docstring(ast.parse(p.read_text()))
        if not doc or not doc.strip().splitlines()[0].strip():
            missing.append(str(p.relative_to(REPO)))
    assert not missing, f"modules without a one-line docstring: {missing}"


def test_pages_never_import_the_cli_layer():
    """Pages call the library; the CLI (``ich.commands``) is just another caller of the same functions."""
    for page in [*sorted((REPO / "pages").glob("*.py")), REPO / "app.py"]:
        tree = ast.parse(page.read_text(), filename=str(page))
        bad = {m for m in imported_modules(page) if m == "ich.commands" or m.startswith("ich.commands.")}
        bad |= {f"ich.{a.name}" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module == "ich"
                for a in n.names if a.name == "commands"}
        assert not bad, f"{page.name} imports the CLI layer: {bad}"


def ich_imports(path: Path) -> set[str]:
    """The ich modules a file imports, at the top or inside functions (``from ich import x`` counts as ``ich.x``)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("ich.")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("ich"):
            out |= {f"{node.module}.{a.name}" for a in node.names} | ({node.module} - {"ich"})
    return out


def test_no_import_cycle_even_through_imports_inside_functions():
    modules = {".".join(p.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__"): p
               for p in (REPO / "ich").rglob("*.py")}

    def owner(name: str) -> str | None:
        while name not in modules and "." in name:
            name = name.rsplit(".", 1)[0]
        return name if name in modules and name != "ich" else None

    graph = {m: {o for n in ich_imports(p) if (o := owner(n)) and o != m and not m.startswith(o + ".")}
             for m, p in modules.items() if m != "ich"}
    done, path = set(), []

    def visit(m: str) -> None:
        if m in done:
            return
        assert m not in path, "import cycle: " + " -> ".join(path[path.index(m):] + [m])
        path.append(m)
        for d in sorted(graph.get(m, ())):
            visit(d)
        path.pop()
        done.add(m)

    for m in sorted(graph):
        visit(m)


def test_modules_stay_short_enough_to_read():
    """One job per module: none over ~600 lines (650 allowed), except the statistics in metrics.py."""
    long = {str(p.relative_to(REPO)): n for p in (REPO / "ich").rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 650 and p.name != "metrics.py"}
    assert not long, f"split these modules by job: {long}"
