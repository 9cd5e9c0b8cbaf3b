"""The package's layers: imports point down only, no module has two jobs' length, config needs no torch.

contract <- engine, postprocess <- service <- transports <- app (README, Layout). Read from
the source with ``ast``: every ``asr_server`` import of every module, at any depth.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from tests.harness import REPO

PACKAGE = REPO / "asr_server"
# A module's layer: the first of its dotted name's prefixes found here. Foundation modules (config,
# precision_names, logs) sit with the contract: every layer reads them, they read only the contract.
LAYERS = {
    "asr_server.contract": 0, "asr_server.config": 0, "asr_server.precision_names": 0, "asr_server.logs": 0,
    "asr_server.engine": 1, "asr_server.postprocess": 1,
    "asr_server.admission": 2, "asr_server.metrics": 2, "asr_server.service": 2,
    "asr_server.live_session": 2, "asr_server.live_decoding": 2,
    "asr_server.transports": 3,
    "asr_server.app": 4, "asr_server.heap": 4, "asr_server.__main__": 4,
}
SIBLINGS_APART = {("asr_server.engine", "asr_server.postprocess"),
                  ("asr_server.postprocess", "asr_server.engine")}
MAX_LINES = 300


def layer_of(module: str) -> tuple[str, int]:
    for prefix in sorted(LAYERS, key=len, reverse=True):
        if module == prefix or module.startswith(prefix + "."):
            return prefix, LAYERS[prefix]
    raise AssertionError(f"{module} belongs to no layer: add it to LAYERS and to the README's Layout")


def modules() -> list[tuple[str, Path]]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        dotted = ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
        found.append((dotted, path))
    return found


def imports_of(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
    return {name for name in names if name.split(".")[0] in ("asr_server", "asr_client", "asr_tools")}


@pytest.mark.parametrize(("module", "path"), modules(), ids=[m for m, _ in modules()])
def test_imports_point_down_only(module: str, path: Path) -> None:
    if module == "asr_server":
        return
    home, level = layer_of(module)
    for imported in imports_of(path) - {"asr_server"}:  # `from asr_server import app`: app is judged
        assert not imported.startswith(("asr_client", "asr_tools")), f"{module} imports {imported}"
        target = next((m for m, _ in modules() if imported == m), None)
        if target is None:  # `from package import name`: the name is no module, the package is
            target = imported.rsplit(".", 1)[0]
        there, target_level = layer_of(target)
        assert target_level <= level, f"{module} (layer {level}) imports {target} (layer {target_level})"
        assert (home, there) not in SIBLINGS_APART, f"{module} imports {target}"


def test_the_layers_as_declared_catch_an_upward_import() -> None:
    """The check above is not vacuous: the rules it applies reject what they should."""
    assert layer_of("asr_server.engine.scheduler")[1] < layer_of("asr_server.service")[1]
    assert layer_of("asr_server.contract.frames")[1] < layer_of("asr_server.engine.transcriber")[1]
    assert imports_of(PACKAGE / "transports" / "websocket.py") >= {"asr_server.service"}


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_has_two_jobs_length(path: Path) -> None:
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_LINES, f"{path.relative_to(REPO)} has {lines} lines: it has two jobs, split it"


@pytest.mark.parametrize("module", ["asr_server.config", "asr_server.contract.domain",
                                    "asr_server.contract.frames", "asr_server.contract.openai_formats",
                                    "asr_server.contract.errors", "asr_server.contract.realtime_events"])
def test_config_and_the_contract_import_no_torch(module: str) -> None:
    """In a fresh interpreter: importing the settings or the wire contract loads neither torch nor whisper."""
    probe = (f"import sys, {module}; heavy = sorted(m for m in ('torch', 'whisper') if m in sys.modules); "
             "print(heavy); sys.exit(1 if heavy else 0)")
    done = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
