"""Packages import only from packages to their left (that the compiled kernels import no torch is
tested in tests/nn/kernels).

The order differs from ARCHITECTURE.md's sketch in one place: the training engine (train) sits
before the Keras-style layers and models, because Sequential.fit delegates to it and the engine
works on any torch module (a plain PyTorch model trains with it too)."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "grukit"
ORDER = ["errors", "data", "nn", "train", "layers", "models", "tasks", "analysis", "export", "cli"]


def rank(module: str) -> int:
    top = module.split(".")[0]
    return ORDER.index(top) if top in ORDER else -1


def grukit_imports(path: Path):
    """The grukit modules imported by one file, as paths relative to the package."""
    relative = path.relative_to(PACKAGE).with_suffix("")
    parts = list(relative.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = parts[: len(parts) - node.level + (1 if path.name == "__init__.py" else 0)]
                target = ".".join(base + ([node.module] if node.module else []))
            elif node.module and node.module.startswith("grukit"):
                target = node.module.removeprefix("grukit").lstrip(".")
            else:
                continue
            yield target, node
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("grukit."):
                    yield alias.name.removeprefix("grukit."), node


def test_imports_point_left_only():
    violations = []
    for path in PACKAGE.rglob("*.py"):
        own = path.relative_to(PACKAGE).parts[0].removesuffix(".py")
        if own in ("__init__", "__main__"):   # __main__: `python -m grukit`, an entry point that runs cli
            continue
        for target, node in grukit_imports(path):
            if target and rank(target) > rank(own):
                violations.append(f"{path.relative_to(PACKAGE)}:{node.lineno} imports {target}")
    assert not violations, "imports against the data flow:\n" + "\n".join(violations)


def test_the_walker_sees_real_imports():
    """Guard against a walker that finds nothing: nn/recurrent.py imports grukit.errors."""
    targets = {t for t, _ in grukit_imports(PACKAGE / "nn" / "recurrent.py")}
    assert "errors" in targets and "nn.cells" in targets
