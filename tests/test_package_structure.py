"""The package's modules import each other without cycles (function-level imports included), and the installed
package holds no development tools."""
import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "nnunet_ddpm"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("nnunet_ddpm"):
                for alias in node.names:  # "from package import module" imports the module
                    sub = f"{node.module}.{alias.name}"
                    targets.add(sub if sub in modules else node.module)
            elif isinstance(node, ast.Import):
                targets |= {a.name for a in node.names if a.name.startswith("nnunet_ddpm.")}
        # a package's __init__ re-exports from its own modules; importing the package means importing it
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def find_cycle(graph: dict):
    state = {}

    def visit(node, path):
        state[node] = "open"
        for target in sorted(graph[node]):
            if state.get(target) == "open":
                return path + [node, target]
            if target not in state:
                cycle = visit(target, path + [node])
                if cycle:
                    return cycle
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node, [])
            if cycle:
                return cycle[cycle.index(cycle[-1]):]
    return None


def test_no_import_cycles():
    graph = import_graph()
    assert graph["nnunet_ddpm.comparison.runner"] >= {"nnunet_ddpm.comparison.report", "nnunet_ddpm.steps"}
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_development_tools_in_the_package():
    """The installed package imports none of the repository's development folders nor test libraries, and setup.py
    installs nnunet_ddpm alone (benchmarks/, tools/ and tests/ stay in the checkout)."""
    from setuptools import find_packages
    development = {"tests", "benchmarks", "tools", "pytest"}
    found = {}
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.module and not node.level else []
            for name in names:
                if name.split(".")[0] in development:
                    found.setdefault(str(path.relative_to(PACKAGE.parent)), []).append(name)
    assert not found, found
    setup = (PACKAGE.parent / "setup.py").read_text()
    assert 'packages=find_packages(include=["nnunet_ddpm", "nnunet_ddpm.*"])' in setup
    installed = find_packages(str(PACKAGE.parent), include=["nnunet_ddpm", "nnunet_ddpm.*"])
    assert installed and all(p.split(".")[0] == "nnunet_ddpm" for p in installed)


# The package's layers, lowest first: maths, file formats and the checks of the folders every command makes, networks
# (with the pretraining checkpoint's format), what reads networks (the feature probe, uncertainty maps), the trainers,
# what nnU-Net and stock users see of them, the step runner, the tools built on steps, the command-line entries. A
# module may import its own layer and those below it.
LAYERS = (("diffusion", "splits", "dataset_conversion", "fingerprint", "files", "folders"), ("networks",),
          ("features", "inference"), ("training",), ("nnunet_trainers", "export"), ("steps",), ("comparison", "patient"),
          ("cli",))


def layer_of(module: str) -> int:
    part = module.split(".")[1] if "." in module else module
    return next(i for i, layer in enumerate(LAYERS) if part in layer)


def test_every_import_points_down_the_layers():
    graph = import_graph()
    modules = [m for m in graph if m != "nnunet_ddpm"]
    assert {m.split(".")[1] for m in modules} == {p for layer in LAYERS for p in layer}  # every part has a layer
    upward = [f"{a} -> {b}" for a in modules for b in graph[a] if b != "nnunet_ddpm" and layer_of(b) > layer_of(a)]
    assert not upward, upward
    assert layer_of("nnunet_ddpm.networks.pretrained_checkpoint") < layer_of("nnunet_ddpm.training.seeding")
