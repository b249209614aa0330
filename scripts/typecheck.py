"""Type-check the batchserve packages with mypy.

The folders at the repository root install as ``batchserve.<folder>`` through
``[tool.setuptools.package-dir]``; the editable install reaches them through an import hook that
mypy cannot follow. This script lays the same package out under ``build/typecheck/batchserve/`` with
symlinks (one per file of the root package folder, one per mapped subpackage folder, so a new
module needs no step here) and runs mypy on it, with the settings of ``[tool.mypy]``.

    .venv/bin/python scripts/typecheck.py                 # every mapped package (make lint)
    .venv/bin/python scripts/typecheck.py events server   # only these (folder or package names)

mypy runs under the interpreter that runs this script; the script itself needs the standard library only.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TREE = ROOT / "build" / "typecheck"
PACKAGE = "batchserve"


def package_dirs() -> dict[str, Path]:
    """``{"batchserve.events": <root>/events, ...}`` from pyproject.toml."""
    with open(ROOT / "pyproject.toml", "rb") as f:
        mapping = tomllib.load(f)["tool"]["setuptools"]["package-dir"]
    return {name: ROOT / folder for name, folder in mapping.items()}


def build_tree(dirs: dict[str, Path]) -> None:
    # Rebuilt on every run: a mapping added to pyproject.toml, or a file added to the root package
    # folder, is then picked up without a step of its own.
    if TREE.exists():
        shutil.rmtree(TREE)
    root_pkg = TREE / PACKAGE
    root_pkg.mkdir(parents=True)
    for entry in sorted(dirs[PACKAGE].iterdir()):
        if entry.name != "__pycache__":
            (root_pkg / entry.name).symlink_to(os.path.relpath(entry, root_pkg))
    # Shallow names first, so a nested mapping lands inside the folder its parent made.
    for name in sorted(dirs, key=lambda n: n.count(".")):
        if name == PACKAGE:
            continue
        link = TREE.joinpath(*name.split("."))
        if link.exists() or link.is_symlink():
            sys.exit(f"typecheck: {name} maps onto a path that is already laid out ({link})")
        if not link.parent.is_dir() or link.parent.is_symlink():
            sys.exit(f"typecheck: cannot lay out {name}: {link.parent} is not a plain folder of the tree")
        link.symlink_to(os.path.relpath(dirs[name], link.parent))


def selected(dirs: dict[str, Path], wanted: list[str]) -> list[str]:
    if not wanted:
        return sorted(dirs)
    by_folder = {path.relative_to(ROOT).as_posix(): name for name, path in dirs.items()}
    chosen = []
    for item in wanted:
        name = by_folder.get(item.rstrip("/"), item)
        if name not in dirs:
            sys.exit(f"typecheck: {item!r} is neither a folder nor a package of [tool.setuptools.package-dir]")
        chosen.append(name)
    return chosen


def mypy_targets(dirs: dict[str, Path], packages: list[str]) -> list[str]:
    if PACKAGE in packages and len(packages) == len(dirs):
        return ["-p", PACKAGE]
    targets = []
    for name in packages:
        if name == PACKAGE:
            # `-p batchserve` would take in every subpackage: name the root folder's own modules.
            targets += ["-m", PACKAGE]
            for module in sorted(dirs[PACKAGE].glob("*.py")):
                if module.stem != "__init__":
                    targets += ["-m", f"{PACKAGE}.{module.stem}"]
        else:
            targets += ["-p", name]
    return targets


def real_path(line: str, dirs: dict[str, Path]) -> str:
    """mypy names files by their path in the tree; name the file in the repository instead."""
    for name in sorted(dirs, key=lambda n: -n.count(".")):
        prefix = "/".join(name.split(".")) + "/"
        if line.startswith(prefix):
            return dirs[name].relative_to(ROOT).as_posix() + "/" + line[len(prefix) :]
    return line


def main(argv: list[str]) -> int:
    dirs = package_dirs()
    packages = selected(dirs, argv)
    build_tree(dirs)
    command = [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml")]
    command += mypy_targets(dirs, packages)
    # Run from inside the tree: the repository root is then not on mypy's search path, so a bare
    # `import events` fails here as it would in an installed copy.
    proc = subprocess.run(command, cwd=TREE, stdout=subprocess.PIPE, text=True, check=False)
    for line in proc.stdout.splitlines():
        print(real_path(line, dirs))
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
