"""The project's import graph, read with `ast` (nothing is imported or run): no cycles, layers
that point one way in the order the README's code map states, every import at the top of its
module, and the modules the code map marks "no jax" free of jax, however indirectly.

Everything is read from the files as they are: the modules from the source tree, the layer order
from the README's "Imports point one way" paragraph, the jax-free modules from the code map's
"(no jax)" marks. A module added without a place in that paragraph fails here, by name.
"""

import ast
import fnmatch
import functools
import importlib.metadata
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
JAX = {"jax", "jaxlib"}
# Libraries built on jax that do not declare it as a requirement (haiku leaves it to an extra),
# so their metadata cannot say so.
BUILT_ON_JAX = {"haiku", "optax", "chex", "flax", "distrax", "rlax", "jmp", "gymnax", "orbax"}


def _source_files() -> list[Path]:
    """The project's own `.py` files outside `tests/`: hidden folders, caches and virtual
    environments are not the project."""
    found = []
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT)
        folders = [ROOT.joinpath(*rel.parts[:i]) for i in range(1, len(rel.parts))]
        if rel.parts[0] == "tests" or any(
            f.name.startswith(".") or f.name == "__pycache__" or (f / "pyvenv.cfg").exists()
            for f in folders
        ):
            continue
        found.append(rel)
    return found


def _module_name(rel: Path) -> str:
    parts = rel.with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@functools.cache
def modules() -> dict[str, Path]:
    """Dotted module name -> path relative to the repository root."""
    return {_module_name(rel): rel for rel in _source_files()}


def _is_package(name: str) -> bool:
    return modules()[name].name == "__init__.py"


@functools.cache
def tree(name: str) -> ast.Module:
    return ast.parse((ROOT / modules()[name]).read_text(), filename=str(modules()[name]))


def _imported_names(name: str, node: ast.Import | ast.ImportFrom) -> list[str]:
    """The dotted names an import statement loads, relative imports resolved."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:
        package = name.split(".") if _is_package(name) else name.split(".")[:-1]
        package = package[: len(package) - (node.level - 1)]
        base = ".".join([*package, base] if base else package)
    return [base] + [f"{base}.{alias.name}" if base else alias.name for alias in node.names]


def imports(name: str) -> list[ast.Import | ast.ImportFrom]:
    return [n for n in ast.walk(tree(name)) if isinstance(n, ast.Import | ast.ImportFrom)]


@functools.cache
def project_imports(name: str) -> frozenset[str]:
    """The project modules that importing `name` executes directly (a package's `__init__` too)."""
    found = set()
    for node in imports(name):
        for dotted in _imported_names(name, node):
            parts = dotted.split(".")
            found.update(
                ".".join(parts[:i]) for i in range(1, len(parts) + 1) if ".".join(parts[:i])
            )
    return frozenset(m for m in found if m in modules() and m != name)


@functools.cache
def external_imports(name: str) -> frozenset[str]:
    """The top-level names of what `name` imports from outside the project."""
    tops = set()
    for node in imports(name):
        if isinstance(node, ast.ImportFrom) and node.level:
            continue
        names = (
            [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
        )
        tops.update(n.split(".")[0] for n in names)
    return frozenset(t for t in tops if t and t not in modules())


def reachable(name: str) -> set[str]:
    """Every project module that importing `name` executes, `name` included."""
    seen, todo = set(), [name]
    while todo:
        current = todo.pop()
        if current not in seen:
            seen.add(current)
            todo.extend(project_imports(current))
    return seen


# --------------------------------------------------------------------------------------------
# The README's code map
# --------------------------------------------------------------------------------------------


def _import_order_paragraph() -> str:
    text = " ".join(README.read_text().split())
    match = re.search(r"Imports point one way: (.*?)\.(?: |$)", text)
    assert match, "README.md has no 'Imports point one way: ...' paragraph in its code map"
    return match.group(1)


def _resolve(named: str) -> set[str]:
    """The modules a name in the code map stands for: `figure4/` a package's modules,
    `train_*` a pattern, `training/experiment` a path, `checkpoint` the module of that name."""
    named = named.removesuffix(".py").removesuffix("/__init__")
    if named.endswith("/"):
        prefix = named.rstrip("/").replace("/", ".")
        return {m for m in modules() if m == prefix or m.startswith(prefix + ".")}
    dotted = named.replace("/", ".")
    return {m for m in modules() if fnmatch.fnmatchcase(m, dotted)} or {
        m for m in modules() if fnmatch.fnmatchcase(m.rsplit(".", 1)[-1], dotted)
    }


@functools.cache
def layers() -> tuple[frozenset[str], ...]:
    """The README's layers, top (drivers) first; each a set of module names."""
    result = []
    for group in _import_order_paragraph().split("→"):
        names = re.findall(r"`([^`]+)`", group)
        assert names, f"README.md: the layer {group.strip()!r} names no module in backticks"
        layer = set()
        for named in names:
            found = _resolve(named)
            assert found, f"README.md's import order names `{named}`, which is no module here"
            layer |= found
        result.append(frozenset(layer))
    return tuple(result)


def _layer_of(name: str) -> int:
    placed = [i for i, layer in enumerate(layers()) if name in layer]
    assert len(placed) == 1, (
        f"{modules()[name]}: in {'no' if not placed else len(placed)} layers of the README's "
        "'Imports point one way' paragraph; name it in exactly one"
    )
    return placed[0]


def _layered_modules() -> list[str]:
    """Every module but a package `__init__` that imports nothing of the project (it can
    point nowhere)."""
    return [m for m in modules() if not (_is_package(m) and not project_imports(m))]


@functools.cache
def no_jax_modules() -> frozenset[str]:
    """The modules the code map marks as importing no jax: the table rows that say "(no jax)"
    and the files the paragraph's "... import no jax" sentence names."""
    text = README.read_text()
    code_map = text[text.index("## Code map") :]
    marked = set()
    for row in code_map.splitlines():
        cells = row.split("|")
        if row.startswith("|") and len(cells) > 2 and "(no jax)" in cells[2]:
            marked.update(re.findall(r"`([^`]+)`", cells[1]))
    prose = [line for line in code_map.splitlines() if not line.startswith("|")]
    sentences = re.split(r"\.\s", " ".join(" ".join(prose).split()))
    saying = [s for s in sentences if "import no jax" in s]
    assert saying, "README.md's code map no longer says which modules import no jax"
    for sentence in saying:
        marked.update(re.findall(r"`([^`]+\.py)`", sentence.split("import no jax")[0]))
    found = set()
    for named in marked:
        resolved = _resolve(named)
        assert resolved, f"README.md marks `{named}` as importing no jax; no such module"
        found |= resolved
    return frozenset(found)


# --------------------------------------------------------------------------------------------
# What a third-party package pulls in, from its installed metadata
# --------------------------------------------------------------------------------------------


@functools.cache
def _distribution_requires_jax(dist: str) -> bool:
    """Whether installing `dist` installs jax, following its required (not optional) deps."""
    if dist.lower().replace("_", "-") in JAX:
        return True
    try:
        requirements = importlib.metadata.requires(dist) or []
    except importlib.metadata.PackageNotFoundError:
        return False
    for requirement in requirements:
        if "extra ==" in requirement.replace('"', "'").replace("extra=='", "extra =="):
            continue
        required = re.match(r"[A-Za-z0-9_.-]+", requirement).group(0)
        if _distribution_requires_jax(required):
            return True
    return False


@functools.cache
def _distributions() -> dict[str, list[str]]:
    return importlib.metadata.packages_distributions()


def pulls_in_jax(top_level: str) -> bool:
    if top_level in JAX | BUILT_ON_JAX:
        return True
    if top_level in sys.stdlib_module_names:
        return False
    distributions = _distributions().get(top_level, [])
    return any(_distribution_requires_jax(d) for d in distributions)


# --------------------------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------------------------


def test_the_graph_is_read_from_the_real_files():
    assert "training.experiment" in modules() and "agents" in modules()
    assert "training.experiment" in project_imports("agent_registry")
    assert "jax" in external_imports("agents")
    assert pulls_in_jax("jax") and pulls_in_jax("haiku") and not pulls_in_jax("numpy")
    assert not pulls_in_jax("os")


def test_no_import_cycles():
    """A depth-first walk that meets a module still on its path has found a cycle."""
    done, path = set(), []

    def visit(name):
        if name in path:
            cycle = path[path.index(name) :] + [name]
            pytest.fail("import cycle: " + " -> ".join(cycle))
        if name in done:
            return
        path.append(name)
        for imported in sorted(project_imports(name)):
            visit(imported)
        path.pop()
        done.add(name)

    for name in sorted(modules()):
        visit(name)


def test_the_readme_names_every_module_in_exactly_one_layer():
    for name in _layered_modules():
        _layer_of(name)


@pytest.mark.parametrize("name", sorted(modules()))
def test_imports_point_down_the_readme_layers(name):
    """Each import stays in its layer or points to a lower one (a layer may skip the ones
    between: a driver may import `training/results` directly)."""
    if name not in _layered_modules():
        return
    upward = [
        f"{imported} (layer {_layer_of(imported) + 1})"
        for imported in sorted(project_imports(name))
        if imported in _layered_modules() and _layer_of(imported) < _layer_of(name)
    ]
    assert not upward, (
        f"{modules()[name]} (layer {_layer_of(name) + 1} of the README's import order) imports "
        f"up: {', '.join(upward)}"
    )


@pytest.mark.parametrize("name", sorted(modules()))
def test_every_import_is_at_the_top_of_its_module(name):
    """Imports come first in the module's body (after its docstring), never inside a function,
    class or branch, so what a module needs is on its first screen."""
    body = tree(name).body
    docstring = body[:1] if body and isinstance(body[0], ast.Expr) else []
    statements = body[len(docstring) :]
    first_other = next(
        (i for i, n in enumerate(statements) if not isinstance(n, ast.Import | ast.ImportFrom)),
        len(statements),
    )
    late = [n.lineno for n in imports(name) if n not in statements[:first_other]]
    assert not late, f"{modules()[name]}: imports below the top of the module, lines {late}"


def test_tests_import_nothing_inside_functions():
    """Tests may set things up between their imports (a backend, `sys.path`), but a test's
    imports are still module-level."""
    nested = []
    for path in sorted((ROOT / "tests").rglob("*.py")):
        module = ast.parse(path.read_text())
        nested += [
            f"{path.relative_to(ROOT)}:{node.lineno}"
            for node in ast.walk(module)
            if isinstance(node, ast.Import | ast.ImportFrom) and node not in module.body
        ]
    assert not nested, f"imports inside functions or branches: {', '.join(nested)}"


def test_the_readme_marks_some_modules_jax_free():
    assert {"plot_metric", "sweep_summary", "training.schema"} <= no_jax_modules()


@pytest.mark.parametrize("name", sorted(modules()))
def test_no_jax_modules_import_no_jax_however_indirectly(name):
    if name not in no_jax_modules():
        return
    chains = [
        f"{via} imports {top}"
        for via in sorted(reachable(name))
        for top in sorted(external_imports(via))
        if pulls_in_jax(top)
    ]
    assert not chains, (
        f"{modules()[name]} is marked 'no jax' in the README's code map, but importing it "
        f"runs jax: {'; '.join(chains)}"
    )
