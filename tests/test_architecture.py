"""Layout rules (docs/architecture.md): one folder per stage, SQL and duckdb only in audit/store/, streamlit only
in audit/ui.py, figures only in audit/charts.py, commands on top, the simulator only in the demo, fast --help."""
import ast
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
AUDIT = ROOT / "audit"
SQL = re.compile(r"\b(SELECT|INSERT|CREATE|UPDATE|DELETE FROM|DROP|ALTER TABLE|COPY)\b\s")


def rel(p: Path) -> str:
    return p.relative_to(ROOT).as_posix()


def module_name(p: Path) -> str:
    parts = list(p.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> set[str]:
    """Every module an import statement names, at any depth (function-level imports included); for
    ``from a.b import c`` both ``a.b`` and ``a.b.c`` (c may be a submodule)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
            out |= {f"{node.module}.{a.name}" for a in node.names}
    return out


def tops(path: Path) -> set[str]:
    return {m.split(".")[0] for m in imported_modules(path)}


def audit_files() -> list[Path]:
    return sorted(AUDIT.rglob("*.py"))


def page_files() -> list[Path]:
    return sorted((ROOT / "pages").glob("*.py")) + [ROOT / "app.py"]


def strings(path: Path) -> list[str]:
    return [n.value for n in ast.walk(ast.parse(path.read_text()))
            if isinstance(n, ast.Constant) and isinstance(n.value, str)]


def test_only_the_store_package_imports_duckdb():
    users = {rel(p) for p in audit_files() + page_files() if "duckdb" in tops(p)}
    assert users and all(u.startswith("audit/store/") for u in users), users


def test_sql_only_in_the_store_package():
    found = [(rel(p), s[:60]) for p in audit_files() + page_files() if not rel(p).startswith("audit/store/")
             for s in strings(p) if SQL.search(s)]
    assert found == []


def test_streamlit_only_in_ui_app_and_pages():
    users = {rel(p) for p in audit_files() if "streamlit" in tops(p)}
    assert users == {"audit/ui.py"}


def test_pages_import_neither_the_store_nor_plotly():
    bad = {rel(p): sorted(m for m in imported_modules(p) if m.startswith(("audit.store", "plotly")))
           for p in page_files()}
    assert {k: v for k, v in bad.items() if v} == {}
    plotly_users = {rel(p) for p in audit_files() if "plotly" in tops(p)}
    assert plotly_users == {"audit/charts.py"}


def test_only_commands_import_the_cli():
    users = {rel(p) for p in audit_files() + page_files() if "audit.cli" in imported_modules(p)}
    assert users and all(u.startswith("audit/commands/") or u == "audit/__main__.py" for u in users), users
    commands = {rel(p) for p in (AUDIT / "commands").glob("*.py") if p.name != "__init__.py"}
    for p in audit_files() + page_files():  # nothing imports a command module except the command table
        if rel(p) != "audit/cli.py":
            assert not any(m.startswith("audit.commands") for m in imported_modules(p)), rel(p)
    from audit.cli import COMMANDS

    assert {f"audit/commands/{m}.py" for _, m, _ in COMMANDS} == commands


def test_nothing_outside_the_demo_imports_the_simulator():
    users = {rel(p) for p in audit_files() + page_files() if "audit.demo.simulate" in imported_modules(p)}
    assert users and all(u.startswith("audit/demo/") for u in users), users
    outside = {rel(p) for p in audit_files() + page_files() if not rel(p).startswith(("audit/demo/", "audit/commands/"))
               and any(m.startswith("audit.demo") for m in imported_modules(p))}
    assert outside == set(), "only the demo command may use audit.demo"


def test_the_store_package_imports_no_other_stage():
    for p in (AUDIT / "store").glob("*.py"):
        ours = {m for m in imported_modules(p) if m.startswith("audit.")}
        assert all(m.startswith(("audit.store", "audit.config")) for m in ours), (rel(p), ours)


def test_every_module_is_reachable_from_the_command_table_or_a_page():
    from audit.cli import COMMANDS

    known = {module_name(p): p for p in audit_files()}
    todo = ["audit.cli", "audit.__main__"] + [f"audit.commands.{m}" for _, m, _ in COMMANDS]
    todo += [f"__page__{p}" for p in page_files()]
    seen: set[str] = set()
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        seen.add(m)
        if not m.startswith("__page__"):  # importing a module runs its packages' __init__ too
            todo += [".".join(m.split(".")[:i]) for i in range(1, m.count(".") + 1)]
        path = Path(m.removeprefix("__page__")) if m.startswith("__page__") else known.get(m)
        if path is None:
            continue
        for dep in imported_modules(path):
            parts = dep.split(".")
            for i in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__ and a/b/__init__ too
                if ".".join(parts[:i]) in known:
                    todo.append(".".join(parts[:i]))
    unreachable = sorted(rel(p) for m, p in known.items() if m not in seen)
    assert unreachable == []


def test_every_page_is_listed_in_app():
    listed = set(re.findall(r'"(pages/[a-z_]+\.py)"', (ROOT / "app.py").read_text()))
    files = {rel(p) for p in (ROOT / "pages").glob("*.py")}
    assert files <= listed, f"pages missing from app.py: {files - listed}"


def test_help_is_instant_and_imports_nothing_heavy():
    code = ("import sys; sys.argv=['audit','--help']\n"
            "from audit.cli import build_parser; build_parser()\n"
            "heavy = [m for m in ('numpy','pandas','torch','duckdb','open_clip','streamlit') if m in sys.modules]\n"
            "print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    res = subprocess.run([sys.executable, "-m", "audit", "--help"], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0
    for stage in ("ingest", "embed", "score", "scores", "export", "demo", "report", "origin", "map", "balance"):
        assert stage in res.stdout
