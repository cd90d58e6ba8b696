"""List import cycles of the server package: between its top-level parts, and between its modules.

    python scripts/import_cycles.py [--root DIR] [--package vidplan_server]

Every import counts, also the ones inside a function (a lazy import hides a cycle from the interpreter, not from a
reader); imports under ``if TYPE_CHECKING:`` do not. A part is a top-level subpackage (``serving``) or a top-level
module (``cli``). Prints each strongly connected group of parts with one importing file per edge, then each group
of modules that import each other. Exit status 1 when there is a cycle between parts.
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections import defaultdict
from pathlib import Path


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST, module: str, is_package: bool) -> set[str]:
    """Absolute names of what ``module`` imports (``from a import b`` counts as ``a.b`` and ``a``)."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            found.add(prefix)
            found.update(f"{prefix}.{alias.name}" for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def _sccs(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                group = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.append(member)
                    if member == node:
                        break
                if len(group) > 1:
                    out.append(sorted(group))
    return sorted(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[1], help="repository root")
    ap.add_argument("--package", default="vidplan_server")
    args = ap.parse_args(argv)

    modules: dict[str, Path] = {}
    for path in sorted((args.root / args.package).rglob("*.py")):
        modules[_module_name(path, args.root)] = path
    module_graph: dict[str, set[str]] = defaultdict(set)
    part_edges: dict[tuple[str, str], str] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        for target in _imports(tree, name, path.name == "__init__.py"):
            # The longest known module the imported name starts with (``a.b.func`` -> ``a.b``).
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if not target or target == name or target == args.package:
                continue
            if not name.startswith(target + "."):  # a package's own __init__ is not a dependency of its modules
                module_graph[name].add(target)
            src, dst = name.split(".")[1], target.split(".")[1]
            if src != dst:
                part_edges.setdefault((src, dst), str(path.relative_to(args.root)))
        module_graph.setdefault(name, set())

    part_graph: dict[str, set[str]] = defaultdict(set)
    for src, dst in part_edges:
        part_graph[src].add(dst)
        part_graph.setdefault(dst, set())
    part_cycles = _sccs(part_graph)
    print(f"cycles between top-level parts of {args.package}: {len(part_cycles)}")
    for group in part_cycles:
        print("  " + " <-> ".join(group))
        for src in group:
            for dst in group:
                if (src, dst) in part_edges:
                    print(f"    {src} -> {dst}  (e.g. {part_edges[(src, dst)]})")
    module_cycles = _sccs(module_graph)
    print(f"cycles between modules: {len(module_cycles)}")
    for group in module_cycles:
        print("  " + " <-> ".join(m.removeprefix(args.package + ".") for m in group))
    return 1 if part_cycles else 0


if __name__ == "__main__":
    sys.exit(main())
