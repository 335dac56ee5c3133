"""``divekit.scratch`` is a leaf: the from-scratch formulas need torch and nothing of the library.

Two checks, because each misses what the other sees: the source check reads every import
statement, also those inside functions that importing a module never runs; the import check
runs the modules in a fresh interpreter and sees what they pull in through other modules
(``divekit.errors``, third-party packages). ``divekit/__init__.py`` imports the whole library,
so the fresh interpreter puts a bare ``divekit`` package in its place before importing.
"""

import ast
import json
import subprocess
import sys
from pathlib import Path

import divekit.scratch

SCRATCH = Path(divekit.scratch.__file__).parent
ERRORS = SCRATCH.parent / "errors.py"
# safetensors: the parameter file format of the builders' guide's file I/O (scratch.modules).
THIRD_PARTY = {"torch", "safetensors"}
FORBIDDEN = ("divekit.engine", "divekit.data", "divekit.models", "divekit.recipes",
             "divekit.experiment", "matplotlib")


def imported_names(path: Path) -> list[str]:
    """Every module an import statement in ``path`` names, wherever the statement is."""
    package = "divekit.scratch" if path.parent == SCRATCH else "divekit"
    names = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            module = ".".join(filter(None, [base, node.module]))
            # ``from divekit import engine`` names a module, ``from torch import nn`` a member.
            names += ([f"{module}.{alias.name}" for alias in node.names]
                      if module in ("divekit", "divekit.scratch") else [module])
    return names


def allowed(name: str) -> bool:
    top = name.split(".")[0]
    if top == "divekit":
        return name == "divekit.errors" or name.startswith("divekit.scratch.")
    return top in THIRD_PARTY or top in sys.stdlib_module_names


def test_scratch_sources_import_only_torch_the_stdlib_and_scratch():
    files = sorted(SCRATCH.glob("*.py")) + [ERRORS]
    assert len(files) > 10
    bad = {f"{path.name}: {name}" for path in files for name in imported_names(path)
           if not allowed(name)}
    assert not bad, f"divekit.scratch must depend on torch alone: {sorted(bad)}"


def test_importing_every_scratch_module_pulls_in_no_library_layer():
    script = f"""
import importlib, json, pkgutil, sys, types
bare = types.ModuleType("divekit")
bare.__path__ = [{str(SCRATCH.parent)!r}]
sys.modules["divekit"] = bare  # divekit/__init__.py imports everything: do not run it
import divekit.scratch
names = [info.name for info in pkgutil.iter_modules(divekit.scratch.__path__)]
for name in names:
    importlib.import_module("divekit.scratch." + name)
print(json.dumps({{"modules": names, "loaded": sorted(sys.modules)}}))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.splitlines()[-1])
    assert {path.stem for path in SCRATCH.glob("*.py")} - {"__init__"} == set(report["modules"])
    bad = [name for name in report["loaded"]
           if any(name == f or name.startswith(f + ".") for f in FORBIDDEN)]
    assert not bad, f"importing divekit.scratch loaded {bad}"
