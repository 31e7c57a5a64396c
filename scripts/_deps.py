"""What the shared ``.venv`` must hold, and a hash that changes exactly when that does (for ``scripts/_env.sh``).

Prints one line: the hash of the dependency declarations, then every extra declared in ``setup.cfg``, comma
separated. The hash covers what decides what gets installed (``[options]``: ``install_requires``,
``python_requires``, packages; every ``[options.*]`` section: extras, entry points, package data; the build
system of ``pyproject.toml``) and nothing else, so editing pytest's settings or the description does not
reinstall anything. Standard library only: it runs before the virtual environment exists.
"""

from __future__ import annotations

import configparser
import hashlib
import json
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _setup_cfg(root: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(root / "setup.cfg", encoding="utf-8")
    return parser


def extras(root: Path = ROOT) -> list[str]:
    """Every extra declared in setup.cfg (the shared environment installs them all)."""
    parser = _setup_cfg(root)
    if not parser.has_section("options.extras_require"):
        return []
    return sorted(parser["options.extras_require"])


def declaration(root: Path = ROOT) -> dict[str, object]:
    """The parts of setup.cfg and pyproject.toml that decide what ``pip install -e .[extras]`` installs."""
    parser = _setup_cfg(root)
    sections = {
        name: {key: [line.strip() for line in value.splitlines() if line.strip()]
               for key, value in parser[name].items()}
        for name in parser.sections() if name == "options" or name.startswith("options.")
    }
    pyproject_path = root / "pyproject.toml"
    pyproject = tomllib.loads(pyproject_path.read_text(encoding="utf-8")) if pyproject_path.exists() else {}
    return {"setup.cfg": sections,
            "pyproject.toml": {key: pyproject.get(key) for key in ("build-system", "project")}}


def dependency_hash(root: Path = ROOT) -> str:
    canonical = json.dumps(declaration(root), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def main() -> None:
    root = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT
    print(dependency_hash(root), ",".join(extras(root)))


if __name__ == "__main__":
    main()
