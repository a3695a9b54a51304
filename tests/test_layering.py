"""The layers import one way only: cli -> stages -> rundir -> engine / io -> base, no circles.

Read from the source with `ast`, so an import added in the wrong direction fails here.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))  # scripts/ is not installed

from import_graph import circles, graph, imports, modules, project_imports  # noqa: E402

# layer -> the layers it may import (besides itself)
ALLOWED = {
    "base": set(),
    "engine": {"base"},
    "io": {"base"},
    "nets": {"base", "io"},
    "cluster": {"base"},
    "rundir": {"base", "engine", "io"},
    "api": {"base", "engine", "rundir"},
    "stages": {"base", "engine", "io", "nets", "cluster", "rundir"},
    "cli": {"base", "engine", "io", "nets", "cluster", "rundir", "api", "stages"},
}
KERNELS = {"tvcore.engine.mc_kernels", "tvcore.engine.vmath", "tvcore.io.image_kernels"}
KERNEL_IMPORTS = {"numpy", "numba", "llvmlite", "math", "__future__"}  # llvmlite: numba's IR


def layer(module: str) -> str:
    parts = module.split(".")
    if parts[0] == "tvclean":
        return "cli"
    if len(parts) > 1 and parts[1] == "review":  # the review app is a stage of its own
        return "stages"
    if len(parts) > 1 and parts[1] in ("engine", "io", "nets", "rundir", "stages"):
        return parts[1]
    return {"tvcore.cluster": "cluster", "tvcore.labelissues": "api"}.get(module, "base")


ALL = modules(ROOT)


@pytest.mark.parametrize("module", sorted(ALL))
def test_imports_only_go_down(module):
    mine = layer(module)
    for target in project_imports(module, ALL[module], ALL):
        theirs = layer(target)
        if target == "tvcore":  # the package itself: __version__ only
            continue
        assert theirs == mine or theirs in ALLOWED[mine], \
            f"{module} ({mine}) imports {target} ({theirs})"


@pytest.mark.parametrize("module", sorted(KERNELS))
def test_kernels_import_nothing_but_numpy_and_numba(module):
    for name in imports(module, ALL[module]):
        assert name.split(".")[0] in KERNEL_IMPORTS or name.startswith("tvcore.engine.vmath"), \
            f"{module} imports {name}"


def test_no_import_circles():
    assert circles(graph(ALL)) == []


def test_a_circle_would_be_found():
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_layering_check_would_catch_an_upward_import(tmp_path):
    bad = tmp_path / "decisions.py"
    bad.write_text("from ..stages.filter import filter_run\n")
    found = project_imports("tvcore.engine.decisions", bad, ALL)
    assert "tvcore.stages.filter" in found
    assert layer("tvcore.stages.filter") not in ALLOWED[layer("tvcore.engine.decisions")]


def test_importing_the_library_changes_no_global_state():
    """No warnings filter, environment variable or signal handler is set by an import of ours
    (the third-party libraries are imported first: what they set is theirs)."""
    import subprocess
    import sys

    code = (
        "import os, signal, warnings, importlib\n"
        "import numpy, numba, PIL.Image, onnxruntime, pandas, sklearn.linear_model, matplotlib\n"
        "import matplotlib.pyplot, threadpoolctl, click\n"
        "before = (list(warnings.filters), dict(os.environ), signal.getsignal(signal.SIGINT))\n"
        f"for name in {sorted(m for m in ALL if not m.startswith(('tvcore.nets', 'tvclean')))!r}:\n"
        "    importlib.import_module(name)\n"
        "after = (list(warnings.filters), dict(os.environ), signal.getsignal(signal.SIGINT))\n"
        "assert before == after, [a for a, b in zip(after, before) if a != b]\n"
        "print('same')\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "same", done.stderr[-2000:]


def test_the_lazy_command_map_names_every_command_of_every_module():
    """cli/main.py imports a command's module on first use, so its name -> module map must
    list each module's commands exactly (a new command left out would be missing)."""
    import importlib

    from tvclean.main import COMMAND_MODULES
    found = {}
    for path in sorted((ROOT / "cli").glob("*_cmd.py")):
        module = importlib.import_module(f"tvclean.{path.stem}")
        found.update({command.name: path.stem for command in module.COMMANDS})
    assert found == COMMAND_MODULES


def test_running_one_command_imports_only_its_module():
    import subprocess
    code = ("import sys; from tvclean.main import cli; cli.get_command(None, 'estimate'); "
            "print(sorted(m for m in sys.modules if m.endswith('_cmd')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=ROOT).stdout
    assert out.strip() == "['tvclean.estimate_cmd']"


def test_the_command_freezes_what_its_imports_made_and_what_is_left_at_exit():
    """gc.freeze after a command's imports and when `run` ends: the interpreter's last
    collections then skip numba's objects (they cost 0.4 s of a short run)."""
    import subprocess
    code = ("import gc, sys; from tvclean.main import cli; before = gc.get_freeze_count(); "
            "cli.get_command(None, 'models'); after = gc.get_freeze_count(); "
            "import tvclean; sys.argv = ['tvclean', '--version']; gc.unfreeze()\n"
            "try: tvclean.run()\n"
            "except SystemExit: print(before, after > 0, gc.get_freeze_count() > 0)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=ROOT).stdout
    assert out.split()[-3:] == ["0", "True", "True"]
