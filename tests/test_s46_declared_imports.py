"""Every third-party module polymodal imports comes from a distribution that pyproject.toml declares, as a
dependency or in an extra: `train_yesno` imported scikit-learn, which only arrived through a dependency of the
MiniLM weights package (s46 install review), so a release of that package without it would break the import."""

import ast
import re
import sys
from importlib.metadata import packages_distributions
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# imported directly, brought by the declared distribution beside it (fastapi requires starlette; uvicorn requires
# h11, its HTTP/1.1 protocol, which polymodal/serve/protocol.py subclasses)
BROUGHT_BY = {"starlette": "fastapi", "h11": "uvicorn"}


def _project() -> dict:
    if sys.version_info >= (3, 11):
        import tomllib
    else:
        import tomli as tomllib
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _names(requirements) -> set[str]:
    return {_norm(re.split(r"[<>=!~;\[ ]", r, maxsplit=1)[0]) for r in requirements}


def _declared() -> set[str]:
    project = _project()
    return _names(project["dependencies"] + [r for extra in project["optional-dependencies"].values() for r in extra])


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _imported_top_modules() -> set[str]:
    found = set()
    for path in (ROOT / "polymodal").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                found |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    return found - set(sys.stdlib_module_names) - {"polymodal", "__future__"}


def test_every_imported_distribution_is_declared():
    declared, dists = _declared(), packages_distributions()
    undeclared = {}
    for module in sorted(_imported_top_modules()):
        if module in BROUGHT_BY:
            assert _norm(BROUGHT_BY[module]) in declared
            continue
        # not installed here (tomli: declared for Python < 3.11 only): its module name stands for its distribution
        names = {_norm(d) for d in dists.get(module, [])} or {_norm(module)}
        if not names & declared:
            undeclared[module] = sorted(names)
    assert not undeclared, f"imported but not declared in pyproject.toml: {undeclared}"



def test_the_train_extra_brings_what_fitting_a_yes_no_head_imports():
    # train_yesno / fit_state import sklearn: `pip install 'polymodal[train]'` must bring it (only demo and test did)
    source = (ROOT / "polymodal" / "models" / "yesno.py").read_text()
    assert "from sklearn" in source
    assert "scikit-learn" in _names(_project()["optional-dependencies"]["train"])
