"""The package's layering rules, checked on the source: pure modules stay pure,
upstream/ and serve/ meet only in hub/."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parent.parent.parent / "lsproxy"
PURE = [
    "config.py",
    "config_credentials.py",
    "config_consumers.py",
    "tls_files.py",
    "upstream/backoff.py",
    "upstream/outcome.py",
    "upstream/framing.py",
    "upstream/request.py",
    "hub/cursors.py",
    "hub/dedup.py",
    "hub/segment.py",
    "hub/journal_rule.py",
    "cluster/slot_policy.py",
    "cluster/names.py",
    "hub/rates.py",
    "histogram.py",
    "deflate.py",
    "serve/routes.py",
    "serve/encoding.py",
    "serve/auth.py",
    "serve/fields.py",
    "serve/sse.py",
    "serve/view.py",
    "hub/visitor.py",
    "hub/groups.py",
    "hub/resume_points.py",
    "hub/block_cache.py",
]
IO_MODULES = {"trio", "httpx", "h11", "socket", "asyncio", "time"}


def imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


@pytest.mark.parametrize("module", PURE)
def test_pure_modules_do_no_io_and_read_no_clock(module: str) -> None:
    roots = {name.split(".")[0] for name in imports(PACKAGE / module)}
    assert not roots & IO_MODULES, f"{module} imports {roots & IO_MODULES}"
    # Their lsproxy imports must be pure too (or plain data: errors, secret, version).
    for name in imports(PACKAGE / module):
        if name.startswith("lsproxy.") and name not in ("lsproxy.errors", "lsproxy.secret"):
            target = name.removeprefix("lsproxy.").replace(".", "/") + ".py"
            assert target in PURE, f"{module} imports impure {name}"


@pytest.mark.parametrize(("side", "other"), [("upstream", "serve"), ("serve", "upstream")])
def test_upstream_and_serve_meet_only_in_the_hub(side: str, other: str) -> None:
    for path in (PACKAGE / side).glob("*.py"):
        assert not any(name.startswith(f"lsproxy.{other}") for name in imports(path)), path


def test_the_simulator_stands_on_its_own() -> None:
    for path in (PACKAGE / "simulator").glob("*.py"):
        for name in imports(path):
            assert not name.startswith("lsproxy.") or name.startswith("lsproxy.simulator"), (path, name)
