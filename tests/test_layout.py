"""The shape of the code, as tests: imports go one way (trainer and export may use runtime,
never the reverse), no module imports itself through others (top-level or lazy imports),
and the contract modules are leaves that load nothing heavy."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("runtime", "trainer", "export")
STDLIB = set(sys.stdlib_module_names)


def modules() -> dict[str, Path]:
    return {".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): p
            for pkg in PACKAGES for p in sorted((ROOT / pkg).glob("*.py"))}


def imports(path: Path) -> set[str]:
    """Every module `path` imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return found


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {m: {i for i in imports(p) if i in mods and i != m} for m, p in mods.items()}


def test_packages_import_one_way():
    for mod, deps in graph().items():
        if mod.startswith("runtime"):
            assert not [d for d in deps if not d.startswith("runtime")], mod
        if mod.startswith("trainer"):
            assert not [d for d in deps if d.startswith("export")], mod


def test_no_import_cycles():
    g = graph()
    g = {m: {d for d in deps if d != "runtime"} for m, deps in g.items()}  # the lazy facade

    def visit(node, path):
        for dep in sorted(g[node]):
            assert dep not in path, " -> ".join([*path, dep])
            visit(dep, [*path, dep])

    for mod in g:
        visit(mod, [mod])


LEAVES = ("runtime.errors", "runtime.limits", "runtime.config", "runtime.metadata",
          "runtime.fileio")


@pytest.mark.parametrize("leaf", LEAVES)
def test_contract_modules_are_leaves(leaf):
    """The standard library and other leaves only (runtime.fileio may ask runtime.audio
    what an audio file name is, lazily)."""
    deps = imports(modules()[leaf])
    outside = sorted(d for d in deps if d.split(".")[0] not in STDLIB
                     and d not in (*LEAVES, "runtime", "runtime.__version__")
                     and not d.startswith(tuple(f"{x}." for x in LEAVES)))
    assert outside in ([], ["runtime.audio", "runtime.audio.is_audio_path"]), outside


def test_reading_metadata_loads_no_numpy():
    code = ("import sys; from runtime.metadata import ModelMetadata; "
            "m = ModelMetadata(arch='x'); ModelMetadata.from_json(m.to_json()); "
            "print(sorted(k for k in ('numpy', 'onnxruntime', 'librosa', 'torch') "
            "if k in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
