"""Dependencies point one way: extract -> cache_schema <- ground (ground uses only extract.api)."""

from __future__ import annotations

import ast
from collections.abc import Callable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def imported_names(source: str) -> list[tuple[int, str]]:
    """(line, dotted name) of everything a module imports.

    ``import a.b`` gives ``a.b``; ``from a import b`` gives ``a.b`` (b may be a module or a name in
    ``a``, either way it is reached through ``a``). Relative imports stay inside their own package
    and are skipped.
    """
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level:
            found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
    return found


def violations(
    root: Path, package: str, forbidden: tuple[str, ...], allowed: Callable[[str], bool]
) -> list[str]:
    """Every import in ``root/package/**/*.py`` of a forbidden top-level package that is not allowed."""
    files = sorted((root / package).rglob("*.py"))
    assert files, f"no Python files under {root / package}"
    bad = []
    for path in files:
        for line, name in imported_names(path.read_text(encoding="utf-8")):
            if name.split(".")[0] in forbidden and not allowed(name):
                bad.append(f"{path.relative_to(root)}:{line} imports {name}")
    return bad


def through_extract_api(name: str) -> bool:
    return name == "extract.api" or name.startswith("extract.api.")


def test_ground_imports_extract_only_through_its_api() -> None:
    bad = violations(REPO, "ground", ("extract",), through_extract_api)
    assert bad == [], "ground must use extract only through extract.api:\n" + "\n".join(bad)


def test_cache_schema_never_imports_torch_extract_or_ground() -> None:
    bad = violations(REPO, "cache_schema", ("torch", "extract", "ground"), lambda name: False)
    assert bad == [], "cache_schema must stay free of torch and of both stages:\n" + "\n".join(bad)


@pytest.mark.parametrize(
    "source, ok",
    [
        ("from extract.api import FeatureExtractor", True),
        ("from extract import api", True),
        ("import extract.api", True),
        ("import torch\nfrom cache_schema.store import CacheReader", True),
        ("from extract.pipeline import run", False),
        ("from extract import pipeline", False),
        ("import extract.video", False),
        ("import extract", False),
        ("def f():\n    from extract.encoders import build_encoder", False),
    ],
)
def test_the_scan_tells_api_imports_from_internal_ones(tmp_path: Path, source: str, ok: bool) -> None:
    (tmp_path / "ground" / "models").mkdir(parents=True)
    (tmp_path / "ground" / "models" / "probe.py").write_text(source + "\n", encoding="utf-8")
    bad = violations(tmp_path, "ground", ("extract",), through_extract_api)
    assert (bad == []) == ok, bad


def test_test_modules_have_unique_basenames() -> None:
    """Test folders have no __init__.py, so pytest imports each test file by its basename: two
    files of one name stop the whole run at collection ("import file mismatch"), which a run of a
    single folder does not show (it happened with test_block_inputs.py and test_bench.py)."""
    by_name: dict[str, list[str]] = {}
    for path in sorted((REPO / "tests").rglob("*.py")):
        if path.name != "conftest.py":
            by_name.setdefault(path.name, []).append(str(path.relative_to(REPO)))
    assert not {name: paths for name, paths in by_name.items() if len(paths) > 1}
