"""Layout rules from DESIGN.md: SQL in one module, streamlit in one module, every page listed, fast --help."""
import ast
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module.split(".")[0])
    return out


def test_only_store_imports_duckdb():
    users = [p.relative_to(ROOT).as_posix() for p in (ROOT / "audit").rglob("*.py") if "duckdb" in imports(p)]
    assert users == ["audit/store.py"]


def test_streamlit_only_in_ui_app_and_pages():
    users = {p.relative_to(ROOT).as_posix() for p in (ROOT / "audit").rglob("*.py") if "streamlit" in imports(p)}
    assert users == {"audit/ui.py"}


def test_every_page_is_listed_in_app():
    listed = set(re.findall(r'"(pages/[a-z_]+\.py)"', (ROOT / "app.py").read_text()))
    files = {p.relative_to(ROOT).as_posix() for p in (ROOT / "pages").glob("*.py")}
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
    for stage in ("ingest", "embed", "score", "scores", "export", "demo"):
        assert stage in res.stdout
