"""The package layering (ARCHITECTURE.md, "Layers"), checked on the source: dependencies
point down only, and the tools stand beside the daemon, not on it.

Read from the import statements (absolute and relative, at any depth, lazy ones in
functions included), so a late ``from ..daemon._x import y`` inside a function is
caught as well as a top-level one.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

BRIDGE = Path(__file__).resolve().parents[1] / "bridge"

# package -> the bridge packages it must never import
FORBIDDEN = {
    "media": {"dialects", "transports", "streams", "daemon", "tools"},
    "dialects": {"transports", "streams", "daemon", "tools"},
    "transports": {"media", "dialects", "streams", "daemon", "tools"},
    "streams": {"daemon", "tools"},
    "daemon": {"tools"},
    "tools": {"daemon"},
}


def _imported_packages(source: str, module: str) -> set[str]:
    """The ``bridge.<package>`` names the module ``module`` (dotted) imports."""
    package = module.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(source, module)):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
                # "from .. import daemon" names the package in the alias.
                names = [target] if node.module else [f"{target}.{a.name}" for a in node.names]
            elif node.module:
                names = [node.module]
        for name in names:
            parts = name.split(".")
            if parts[0] == "bridge" and len(parts) > 1:
                found.add(parts[1])
    return found


def _module_name(path: Path) -> str:
    return ".".join(path.relative_to(BRIDGE.parent).with_suffix("").parts)


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_dependencies_point_down(package: str) -> None:
    wrong = {
        str(path.relative_to(BRIDGE.parent)): sorted(
            _imported_packages(path.read_text(), _module_name(path)) & FORBIDDEN[package]
        )
        for path in sorted((BRIDGE / package).glob("*.py"))
    }
    assert {file: names for file, names in wrong.items() if names} == {}


@pytest.mark.parametrize(
    "source",
    [
        "def f():\n    from ..daemon._logging import configure_logging\n",
        "from .. import daemon\n",
        "import bridge.daemon._config\n",
        "from bridge.daemon import _config\n",
    ],
)
def test_the_checker_sees_every_form_of_import(source: str) -> None:
    # Guard the guard: each form, lazy ones included, is seen from a tool.
    assert _imported_packages(source, "bridge.tools._probe") == {"daemon"}


def test_the_checker_resolves_relative_imports_from_the_module_package() -> None:
    assert _imported_packages("from ._call import x\n", "bridge.tools._probe") == {"tools"}
    assert _imported_packages("from .._errors import x\n", "bridge.tools._probe") == {"_errors"}
