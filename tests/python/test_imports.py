"""The package's import graph, read from its sources with ``ast``: no import circle (deferred
imports inside functions included), the product never imports the simulator (efcomm.sim) nor
the trainer integrations (efcomm.integrations), and ``import efcomm`` loads neither the
simulator, matplotlib, the integrations nor the trainers' packages."""

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

import efcomm

PACKAGE = Path(efcomm.__file__).resolve().parent
SIM = "efcomm.sim"
INTEGRATIONS = "efcomm.integrations"
TRAINERS = ("lightning", "pytorch_lightning", "accelerate", "transformers")


def module_names(root: Path, package: str) -> dict:
    """{module name: source path} for every .py file under ``root`` (a package's __init__.py
    under the package's own name)."""
    names = {}
    for path in sorted(root.rglob("*.py")):
        parts = [package, *path.relative_to(root).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


def imports_of(name: str, path: Path, modules: dict) -> set:
    """The modules of ``modules`` that the file imports: every ``import``/``from`` statement at
    any depth (module level, inside functions and ``if`` blocks), relative ones resolved.
    ``from a import b`` names the module a.b where that is a module, else a."""
    is_package = path.name == "__init__.py"
    targets = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = name.split(".") if is_package else name.split(".")[:-1]
                if node.level - 1 > len(parts) - 1:
                    raise ValueError(f"{path}: relative import beyond the top package (level {node.level})")
                base = ".".join(parts[: len(parts) - (node.level - 1)] + ([node.module] if node.module else []))
            else:
                base = node.module
            found = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        else:
            continue
        targets.update(target for target in found if target in modules)
    return targets


def import_graph(root: Path, package: str) -> dict:
    modules = module_names(root, package)
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def find_cycle(graph: dict):
    """One import circle of ``graph`` as a list [a, b, ..., a], or None."""
    state = {}  # 1: on the current path, 2: done
    path = []

    def visit(node):
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def in_sim(name: str) -> bool:
    return name == SIM or name.startswith(SIM + ".")


def in_integrations(name: str) -> bool:
    return name == INTEGRATIONS or name.startswith(INTEGRATIONS + ".")


def test_the_package_has_no_import_circle():
    graph = import_graph(PACKAGE, "efcomm")
    assert SIM in graph and "efcomm.sim.figures" in graph and "efcomm.hook" in graph, sorted(graph)
    assert find_cycle(graph) is None, f"import circle: {' -> '.join(find_cycle(graph))}"


def test_no_product_module_imports_the_simulator():
    graph = import_graph(PACKAGE, "efcomm")
    offenders = {name: sorted(filter(in_sim, targets)) for name, targets in graph.items() if not in_sim(name)}
    assert {name: targets for name, targets in offenders.items() if targets} == {}
    # The simulator is reached from the product through nothing, not even transitively.
    reached, todo = set(), ["efcomm"]
    while todo:
        node = todo.pop()
        if node not in reached:
            reached.add(node)
            todo.extend(graph[node])
    assert not any(in_sim(name) for name in reached), sorted(filter(in_sim, reached))


def test_no_product_module_imports_the_integrations():
    graph = import_graph(PACKAGE, "efcomm")
    assert {INTEGRATIONS + "." + name for name in ("lightning", "accelerate", "transformers")} <= set(graph)
    offenders = {
        name: sorted(filter(in_integrations, targets)) for name, targets in graph.items() if not in_integrations(name)
    }
    assert {name: targets for name, targets in offenders.items() if targets} == {}
    # efcomm.integrations itself imports none of its trainer modules.
    assert graph[INTEGRATIONS] == set()


def loaded_by(statement: str) -> list:
    """The modules of the simulator, matplotlib, the integrations' trainer modules and the
    trainers' packages that ``statement`` loads, in a fresh interpreter."""
    code = (
        f"import sys\n{statement}\n"
        f"trainers = {TRAINERS!r}\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('matplotlib',) + trainers"
        " or m == 'efcomm.sim' or m.startswith(('efcomm.sim.', 'efcomm.integrations.'))))\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(PACKAGE.parent), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return ast.literal_eval(done.stdout.strip())


def test_import_efcomm_loads_neither_the_simulator_nor_matplotlib_nor_the_trainers():
    assert loaded_by("import efcomm") == []
    assert loaded_by("import efcomm.integrations") == []


def write_package(root: Path, files: dict) -> Path:
    for relative, source in files.items():
        path = root / "pkg" / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source)
    return root / "pkg"


def test_the_graph_reader_finds_a_circle_through_a_deferred_relative_import(tmp_path):
    root = write_package(
        tmp_path,
        {
            "__init__.py": "from . import a\n",
            "a.py": "import os\nfrom .sub.b import f\n",
            "sub/__init__.py": "",
            "sub/b.py": "def f():\n    if True:\n        from .. import a\n    return a\n",
            "c.py": "from pkg.sub import b\n",
        },
    )
    graph = import_graph(root, "pkg")
    assert graph == {
        "pkg": {"pkg.a"},
        "pkg.a": {"pkg.sub.b"},
        "pkg.sub": set(),
        "pkg.sub.b": {"pkg.a"},
        "pkg.c": {"pkg.sub.b"},
    }
    assert find_cycle(graph) == ["pkg.a", "pkg.sub.b", "pkg.a"]
    # Without the deferred import, no circle.
    (root / "sub" / "b.py").write_text("def f():\n    return 1\n")
    assert find_cycle(import_graph(root, "pkg")) is None


def test_the_graph_reader_rejects_a_relative_import_beyond_the_top_package(tmp_path):
    root = write_package(tmp_path, {"__init__.py": "", "a.py": "from ... import x\n"})
    with pytest.raises(ValueError, match=r"a\.py: relative import beyond the top package \(level 3\)"):
        import_graph(root, "pkg")
