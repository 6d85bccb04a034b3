"""The import rules of docs/architecture.md, read from the source.

Every import counts, at the top of a module or inside a function: an import moved into a
function to dodge a cycle is still a cycle. Imports only the type checker sees
(``if TYPE_CHECKING:``) are left out: they never run.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("ivr", "media", "storage")


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


MODULES = _modules()


def _owner(dotted: str) -> str | None:
    """The module of ours that ``dotted`` names (a module, or a name inside one)."""
    while dotted:
        if dotted in MODULES:
            return dotted
        dotted = dotted.rpartition(".")[0]
    return None


def _runtime_nodes(tree: ast.AST):
    """Every node but what sits under ``if TYPE_CHECKING:``."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            stack.extend(node.orelse)
            continue
        yield node
        stack.extend(ast.iter_child_nodes(node))


def _imports(name: str, path: Path) -> set[str]:
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in _runtime_nodes(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                head = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*head, base] if base else head)
            targets = [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        for target in targets:
            owner = _owner(target)
            if owner is not None and owner != name:
                out.add(owner)
    return out


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _cycles() -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []
    counter = 0

    def visit(v: str) -> None:
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(GRAPH[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for v in sorted(GRAPH):
        if v not in index:
            visit(v)
    return groups


def _importers(prefix: str, of: str) -> list[str]:
    """Modules under ``prefix`` that import anything under ``of``."""
    return sorted(
        f"{m} -> {t}"
        for m, targets in GRAPH.items()
        if m == prefix or m.startswith(prefix + ".")
        for t in targets
        if t == of or t.startswith(of + ".")
    )


def test_the_graph_is_read():
    # A broken reader would find no edges and pass everything below.
    assert "ivr.calls" in GRAPH["ivr.platforms.twilio.app"]
    assert "storage.vault" in GRAPH["ivr.calls.registry"]
    assert len(MODULES) > 60


def test_no_import_cycles():
    assert _cycles() == []


def test_media_and_storage_stand_alone():
    for low, others in (("media", ("ivr", "storage")), ("storage", ("ivr", "media"))):
        for other in others:
            assert _importers(low, other) == [], f"{low} must not import {other}"


def test_platforms_do_not_know_each_other_and_the_driver_knows_no_platform():
    assert _importers("ivr.platforms.twilio", "ivr.platforms.asterisk") == []
    assert _importers("ivr.platforms.asterisk", "ivr.platforms.twilio") == []
    assert _importers("ivr.calls", "ivr.platforms") == []
    assert _importers("ivr.consent", "ivr.calls") == []


def test_the_gdpr_documents_do_not_reach_into_the_command_line():
    assert _importers("ivr.gdpr", "ivr.cli") == []


def test_only_the_command_line_starts_the_cluster_demo():
    # It starts servers as processes (docs/deploy.md); the service never imports it.
    users = {edge.split(" -> ")[0] for edge in _importers("ivr", "ivr.cluster_demo")}
    assert {u for u in users if not u.startswith("ivr.cluster_demo")} == {"ivr.cli.cluster"}


def test_the_harness_sees_the_service_only_from_outside():
    # It speaks the platforms' wire protocols; it never imports the service, the driver or
    # the vault, so it tests what a platform would see.
    for inside in ("ivr.service", "ivr.calls", "ivr.consent", "storage"):
        assert _importers("ivr.harness", inside) == []


def test_the_hot_path_loader_imports_nothing_of_ours():
    # Each top package runs it first (hotpath.py), so it must come before all of them.
    tree = ast.parse((ROOT / "hotpath.py").read_text())
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert "mypyc.build" in imported  # the reader works
    assert {m for m in imported if m.split(".")[0] in PACKAGES} == set()


def test_no_script_of_bench_shadows_a_top_module_of_ours():
    # A script's own directory comes first on sys.path: bench/hotpath.py would be what
    # `import hotpath` finds for every bench script, and the service would not start.
    tops = {*PACKAGES, "hotpath"}
    assert {p.stem for p in (ROOT / "bench").rglob("*.py")} & tops == set()
