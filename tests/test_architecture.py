"""The package's layers, checked from its source: see docs/architecture.md."""

import ast
from pathlib import Path

import gptrain

PACKAGE = Path(gptrain.__file__).parent
# Lower layers never import higher ones; layers on one rank do not import each other.
LAYERS = {
    "core": 0,
    "data": 1,
    "model": 2,
    "store": 3,
    "interop": 4,
    "inference": 5, "evaluation": 5, "reporting": 5,
    "training": 6,
    "planning": 7, "lecture": 7,
    "cli": 8,
}
# The command line defers each command's import to keep `gptrain --help` fast; the package root
# re-exports the public API.
DEFERRED_IMPORTS_ALLOWED = {"cli", "__init__"}


def layer_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def gptrain_imports(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("gptrain"):
            yield node, node.module
        elif isinstance(node, ast.ImportFrom) and node.level > 0:
            yield node, "relative"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("gptrain"):
                    yield node, alias.name


def modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE.parent).with_suffix("")
        name = ".".join(relative.parts).removesuffix(".__init__")
        yield name, path, ast.parse(path.read_text(encoding="utf-8"))


def function_local_imports(tree: ast.AST) -> set[ast.AST]:
    local = set()
    for function in ast.walk(tree):
        if isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
            local.update(node for node in ast.walk(function) if isinstance(node, (ast.Import, ast.ImportFrom)))
    return local


def test_every_module_lives_in_a_layer():
    loose = [name for name, path, _ in modules()
             if layer_of(name) not in LAYERS and name not in ("gptrain", "gptrain.__main__")]
    assert loose == []


def test_no_import_climbs_a_layer_or_crosses_to_a_sibling():
    wrong = []
    for name, path, tree in modules():
        if name in ("gptrain", "gptrain.__main__"):
            continue
        own = layer_of(name)
        for node, target in gptrain_imports(tree):
            assert target != "relative", f"{name}:{node.lineno} uses a relative import"
            other = layer_of(target)
            if other == own:
                continue
            if other not in LAYERS or LAYERS[other] >= LAYERS[own]:
                wrong.append(f"{name}:{node.lineno} imports {target}")
    assert wrong == []


def test_no_function_local_gptrain_import_outside_the_command_line():
    hidden = []
    for name, path, tree in modules():
        if layer_of(name) in DEFERRED_IMPORTS_ALLOWED or name == "gptrain":
            continue
        local = function_local_imports(tree)
        hidden += [f"{name}:{node.lineno} imports {target}" for node, target in gptrain_imports(tree) if node in local]
    assert hidden == []


def test_the_command_line_imports_a_command_s_library_only_when_it_runs():
    # What `gptrain --help` loads: the command modules, their shared flags and the error type.
    light = ("gptrain.cli", "gptrain.core.errors")
    eager = []
    for name, path, tree in modules():
        if layer_of(name) != "cli":
            continue
        local = function_local_imports(tree)
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)) and node not in local:
                targets = [alias.name for alias in node.names] if isinstance(node, ast.Import) else [node.module]
                eager += [f"{name}:{node.lineno} imports {target}" for target in targets
                          if target.split(".")[0] in ("gptrain", "torch", "numpy") and not target.startswith(light)]
    assert eager == []


def test_every_layer_says_what_it_holds():
    for layer in LAYERS:
        init = PACKAGE / layer / "__init__.py"
        docstring = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8")))
        assert docstring and "\n" not in docstring.strip(), f"{layer}/__init__.py needs a one-line docstring"




def test_no_module_or_function_is_too_long():
    too_long = set()
    for name, path, tree in modules():
        if len(path.read_text(encoding="utf-8").splitlines()) > 450:
            too_long.add(name)
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > 120:
                too_long.add(f"{name}.{node.name}")
    assert sorted(too_long) == []
