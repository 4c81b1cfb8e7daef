"""The package's layers point one way (docs/design.md §4): no import circle, no import from a
higher layer, no private name imported from another module, and kernels/ depending only on the
kernel contract.  An AST walk over every module (imports inside functions count too)."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# lowest first; a module may import from its own layer or a lower one
LAYERS = {
    # laws: the vocabulary of input and noise laws (numpy only), which the option schema checks names against
    "base": ("errors", "laws", "options", "config", "backends", "arrays", "seeding", "kernels", "compilation",
             "tables", "_source_tree"),
    "data": ("tasks", "linop", "implicit", "peft"),
    "engine": ("engine", "reduction", "taskbatch"),
    "solvers": ("solvers",),
    "models": ("problems", "identify", "regime", "sizing", "planning", "execution", "metrics", "finetuning",
               "retraining", "restarts", "generators", "shallow", "linear", "models", "api"),
    "tools": ("cli", "sweep", "bench", "landscape", "datasets", "demo", "testing", "kernels_cache", "scaffold",
              "__init__"),
}
RANK = {unit: i for i, (_, units) in enumerate(LAYERS.items()) for unit in units}


def _modules():
    """(dotted name, path) of every module of fastlora and of kernels/ (as fastlora.kernels)."""
    for path in sorted((ROOT / "fastlora").rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        yield ".".join(p for p in parts if p != "__init__") if parts[-1] == "__init__" else ".".join(parts), path
    for path in sorted((ROOT / "kernels").rglob("*.py")):
        name = "fastlora.kernels" if path.stem == "__init__" else f"fastlora.kernels.{path.stem}"
        yield name, path


def _is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def _imports(name: str, path: Path):
    """(imported module, imported names, line) of every import of fastlora in the module."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if _is_package(path) else name.rpartition(".")[0]
    if path.parent.name == "kernels" and path.parent.parent == ROOT and not _is_package(path):
        package = "fastlora.kernels"
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("fastlora"):
                    yield alias.name, [], node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            if module.startswith("fastlora"):
                yield module, [a.name for a in node.names], node.lineno


def _unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


MODULES = dict(_modules())


def _resolve(module: str, names) -> list[str]:
    """The modules an import statement reads: ``from pkg import sub`` reads the submodule; the package
    itself only for a name that is not a submodule (or ``import pkg``)."""
    subs = [f"{module}.{n}" for n in names if f"{module}.{n}" in MODULES]
    return subs if names and len(subs) == len(names) else [module, *subs]


def test_no_module_imports_from_a_higher_layer():
    upward = []
    for name, path in MODULES.items():
        mine = RANK[_unit(name)]
        for module, names, line in _imports(name, path):
            for target in _resolve(module, names):
                if target in MODULES and RANK[_unit(target)] > mine:
                    upward.append(f"{path.relative_to(ROOT)}:{line} imports {target} "
                                  f"({_unit(name)} is below {_unit(target)})")
    assert not upward, "\n".join(upward)


def test_there_is_no_import_circle():
    graph = {name: set() for name in MODULES}
    for name, path in MODULES.items():
        for module, names, _ in _imports(name, path):
            for target in _resolve(module, names):
                if target in MODULES and target != name and not name.startswith(target + "."):
                    graph[name].add(target)
    # (a submodule importing its parent package is not an edge: the package is initialised first)
    state, cycles = {}, []

    def visit(node, stack):
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(" -> ".join([*stack[stack.index(nxt):], nxt]))
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert not cycles, "\n".join(cycles)


def test_no_private_name_is_imported_from_another_module():
    private = []
    for name, path in MODULES.items():
        for module, names, line in _imports(name, path):
            for n in names:
                if n.startswith("_") and not n.startswith("__") and f"{module}.{n}" not in MODULES:
                    private.append(f"{path.relative_to(ROOT)}:{line} imports {n} from {module}")
    assert not private, "\n".join(private)


def _in_kernels(module: str) -> bool:
    return module == "fastlora.kernels" or module.startswith("fastlora.kernels.")


def test_kernels_depend_only_on_the_kernel_contract():
    outside = []
    for name, path in MODULES.items():
        if not _in_kernels(name):
            continue
        for module, _, line in _imports(name, path):
            if not _in_kernels(module):
                outside.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    assert not outside, "\n".join(outside)


def test_the_design_documents_layer_diagram_is_this_tests():
    """docs/design.md §4 draws the layers; a module moved in the code must move in the drawing."""
    text = (ROOT / "docs" / "design.md").read_text(encoding="utf-8")
    start = text.index("**Layers point one way**")
    block = text[text.index("```", start) + 3:]
    block = block[:block.index("```")]
    drawn = {}
    for line in block.strip().splitlines():
        layer, _, units = line.partition(" ")
        drawn[layer] = tuple(u.strip() for u in units.split("·"))
    assert list(drawn) == list(reversed(LAYERS))  # top layer first
    assert {k: set(v) for k, v in drawn.items()} == {k: set(v) for k, v in LAYERS.items()}


def test_every_module_is_in_a_layer():
    assert {_unit(name) for name in MODULES} <= set(RANK)
