"""Nothing in tools/ talks HTTP by itself: every request goes through sparkops.egress (which
checks the target, pins the address, caps time and size). Tests included: the local test
server is stdlib http.server, and query strings are parsed by hand."""

from __future__ import annotations

import ast
from pathlib import Path

TOOLS = Path(__file__).resolve().parents[1]
FORBIDDEN = ("httpx", "httpcore", "requests", "urllib", "urllib3", "http.client", "aiohttp")


def _forbidden(name: str) -> bool:
    return any(name == mod or name.startswith(mod + ".") for mod in FORBIDDEN)


def _imports(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found += [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name | ast.Attribute):
            name = node.func.id if isinstance(node.func, ast.Name) else node.func.attr
            if name in ("__import__", "import_module") and node.args:
                arg = node.args[0]
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                    found.append(arg.value)
    return found


def test_tools_never_import_an_http_client():
    files = sorted(TOOLS.rglob("*.py"))
    assert TOOLS / "executors" / "http.py" in files
    offenders = {
        str(path.relative_to(TOOLS)): bad
        for path in files
        if (bad := [name for name in _imports(path) if _forbidden(name)])
    }
    assert offenders == {}


def test_the_http_executor_uses_egress():
    assert "sparkops.egress" in _imports(TOOLS / "executors" / "http.py")
