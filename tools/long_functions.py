"""List every function or method longer than a limit (default 80 lines, the project rule), longest first.

Length is ``end_lineno - lineno + 1`` of each ``def`` / ``async def`` (decorators not counted, nested functions
counted in their parent and on their own). Exit status 1 when any is found.

    python tools/long_functions.py [--max 80] [PATH ...]   # PATH: files or folders, default src
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path


def long_functions(paths: list[Path], limit: int) -> list[tuple[int, str, str]]:
    """``(lines, "file:line", qualified name)`` for each function over ``limit`` lines under ``paths``."""
    found = []
    files = sorted(f for p in paths for f in ([p] if p.is_file() else p.rglob("*.py")))
    for path in files:
        tree = ast.parse(path.read_text(), filename=str(path))
        for node, name in _functions(tree, ""):
            length = node.end_lineno - node.lineno + 1
            if length > limit:
                found.append((length, f"{path}:{node.lineno}", name))
    return sorted(found, key=lambda row: (-row[0], row[1]))


def _functions(node: ast.AST, prefix: str):
    """Every (async) function below ``node``, with its dotted name (classes and enclosing functions as prefix)."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            name = f"{prefix}{child.name}"
            if not isinstance(child, ast.ClassDef):
                yield child, name
            yield from _functions(child, f"{name}.")
        else:
            yield from _functions(child, prefix)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="*", type=Path, default=[Path("src")])
    parser.add_argument("--max", type=int, default=80, help="longest allowed function, in lines (default 80)")
    args = parser.parse_args()
    rows = long_functions(args.paths, args.max)
    for length, where, name in rows:
        print(f"{length:5d}  {where}  {name}")
    return 1 if rows else 0


if __name__ == "__main__":
    sys.exit(main())
