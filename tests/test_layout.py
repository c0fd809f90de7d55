"""The library apart from its tools: imports run from torchtl.tools to the library, never back."""
import ast
import pathlib

import torchtl

PACKAGE = pathlib.Path(torchtl.__file__).parent


def _imported_modules(path):
    """Every module a file imports, absolute (``from torchtl import tools`` counts as torchtl.tools)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                package = ".".join(("torchtl",) + path.relative_to(PACKAGE).parent.parts)
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module
            yield module
            yield from (f"{module}.{alias.name}" for alias in node.names)


def test_the_library_never_imports_the_tools():
    # __main__.py is `python -m torchtl`: the command's entry point, not part of the library.
    library = [p for p in PACKAGE.rglob("*.py")
               if "tools" not in p.relative_to(PACKAGE).parts and p != PACKAGE / "__main__.py"]
    assert PACKAGE / "engine.py" in library and PACKAGE / "reference" / "loops.py" in library
    offending = {str(p.relative_to(PACKAGE)): m for p in library for m in _imported_modules(p)
                 if m == "torchtl.tools" or m.startswith("torchtl.tools.")}
    assert not offending, f"library modules import the tools: {offending}"


def test_the_tools_live_in_their_subpackage():
    assert {p.name for p in (PACKAGE / "tools").glob("*.py")} >= {"cli.py", "compare.py", "demo_data.py"}
    assert not {"cli.py", "compare.py", "demo_data.py"} & {p.name for p in PACKAGE.glob("*.py")}


def test_the_torchtl_command_points_at_the_tools():
    import importlib
    import tomllib

    with open(PACKAGE.parent / "pyproject.toml", "rb") as f:
        entry = tomllib.load(f)["project"]["scripts"]["torchtl"]
    module, function = entry.split(":")
    assert module == "torchtl.tools.cli"
    assert callable(getattr(importlib.import_module(module), function))
