"""The layout shows the architecture: imports only point down the layers, there are no import loops, and
imports sit at the top of a module (except the CLI's per-command ones and optional dependencies)."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "observe_r1"
# lowest first: a module may import its own layer and the ones before it
LAYERS = [
    "config",
    "algos",
    "rewards",
    "models",
    "data",
    "tools",
    "rollout",
    "toy",
    "training",
    "recipes",
    "cli",
]
OPTIONAL = {"datasets", "wandb", "vllm"}  # imported where used, so the package works without them


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports(path: Path) -> list[tuple[str, bool]]:
    """(module imported, at the top of the file?) for every import of observe_r1 or of an optional package."""
    tree = ast.parse(path.read_text())
    top = {id(node) for node in tree.body}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        out += [(name, id(node) in top) for name in names]
    return out


def layer(module: str) -> int:
    return LAYERS.index(module.split(".")[1].removesuffix(".py")) if module.count(".") else -1


def test_imports_point_down_and_sit_at_the_top():
    known = modules()
    for module, path in known.items():
        if module == "observe_r1":
            continue
        for name, at_top in imports(path):
            if name.split(".")[0] in OPTIONAL:
                continue
            if name.startswith("observe_r1.") and name in known:
                assert layer(name) <= layer(module), f"{module} imports {name}, a layer above it"
            if not at_top and not name.startswith("__future__"):
                assert module == "observe_r1.cli", f"{module} imports {name} inside a function"


def test_no_import_loops():
    known = modules()
    graph = {m: {n for n, _ in imports(p) if n in known and n != m} for m, p in known.items()}
    state: dict[str, int] = {}

    def visit(m: str, trail: list[str]) -> None:
        if state.get(m) == 2:
            return
        assert state.get(m) != 1, "import loop: " + " -> ".join([*trail, m])
        state[m] = 1
        for n in graph[m]:
            visit(n, [*trail, m])
        state[m] = 2

    for m in graph:
        visit(m, [])
