"""The two set-up paths agree, and CI runs exactly the README's test command."""

import re
import shlex
import tomllib
from pathlib import Path

import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).parents[1]


def _requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = [req for extra in project["optional-dependencies"].values() for req in extra]
    return [Requirement(line) for line in project["dependencies"] + extras]


def _lock() -> dict[str, str]:
    lines = (ROOT / "requirements.lock").read_text().splitlines()
    pins = [line.partition("==") for line in lines if line and not line.startswith("#")]
    assert all(sep for _, sep, _ in pins), "every line of requirements.lock is name==version"
    return {canonicalize_name(name): version for name, _, version in pins}


def _makefile_install() -> list[str]:
    line = next(line for line in (ROOT / "Makefile").read_text().splitlines() if line.startswith("INSTALL :="))
    return shlex.split(line.partition(":=")[2])


def test_library_dependencies_are_ranges_that_the_lock_satisfies():
    lock = _lock()
    for requirement in _requirements():
        version = lock.get(canonicalize_name(requirement.name))
        assert version is not None, f"requirements.lock has no {requirement.name}"
        assert requirement.specifier.contains(version, prereleases=True), (
            f"{requirement.name}=={version} not in {requirement}"
        )
    ranges = {canonicalize_name(r.name): r for r in _requirements()}
    for name in ("torch", "torchvision", "timm", "numpy", "pandas", "matplotlib"):  # a user's own stays installed
        assert not any(spec.operator in ("==", "===", "~=") for spec in ranges[name].specifier), ranges[name]
    assert {"torch": "2.14.1", "torchvision": "0.29.1"}.items() <= lock.items()  # the releases on this machine's disk


def test_the_lower_bounds_environment_is_at_the_floors():
    """``make lower-bounds`` installs each library dependency at its floor (torch and torchvision excepted)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    floors = {}
    for line in project["dependencies"]:
        requirement = Requirement(line)
        (floor,) = [spec.version for spec in requirement.specifier if spec.operator == ">="]
        floors[canonicalize_name(requirement.name)] = Version(floor)
    lines = (ROOT / "requirements-lower.txt").read_text().splitlines()
    lower = dict(line.split("==") for line in lines if line and not line.startswith("#"))
    lower = {canonicalize_name(name): Version(version) for name, version in lower.items()}
    for name in ("torch", "torchvision"):  # older wheels are not on this machine's disk: the lock's pair
        assert lower.pop(name) == Version(_lock()[name]) and floors.pop(name)
    assert {name: lower[name] for name in floors} == floors


def test_environment_yml_installs_what_make_setup_installs():
    environment = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in environment["dependencies"] if isinstance(d, dict))
    assert [arg for line in pip_section for arg in shlex.split(line)] == _makefile_install()
    assert "-c" in _makefile_install() and "requirements.lock" in _makefile_install()
    assert "python=3.11" in environment["dependencies"]


def test_the_repository_url_is_defined_once():
    """The Colab notebook installs from, and README and notebook badges point at, ``[project.urls].Repository``."""
    url = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["urls"]["Repository"]
    github = url.removeprefix("https://github.com/")
    notebook = (ROOT / "notebooks" / "feature_maps.ipynb").read_text()
    assert f"git+{url}" in notebook
    for text in (notebook, (ROOT / "README.md").read_text()):
        badges = re.findall(r"colab\.research\.google\.com/github/([\w.-]+/[\w.-]+)/", text)
        assert badges and set(badges) == {github}
    everywhere = [
        p for p in ROOT.glob("**/*") if p.suffix in (".md", ".ipynb", ".py", ".toml") and ".venv" not in p.parts
    ]
    others = {m for p in everywhere for m in re.findall(r"github\.com/(repnext-suite/[\w.-]+)", p.read_text())}
    assert others <= {github, f"{github}.git"}


def test_ci_runs_the_readme_test_command():
    blocks = re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    commands = [line.split("#")[0].strip() for block in blocks[:2] for line in block.splitlines()]
    repro, test = [c for c in commands if c]
    assert repro == "make repro" and test == "make test"
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert test in ci_lines


def _imports(root: Path) -> dict[str, set[str]]:
    """``{module: modules of the package it imports}``, read from the source (function-level imports too)."""
    import ast

    modules = {".".join(p.relative_to(root.parent).with_suffix("").parts).removesuffix(".__init__"): p
               for p in root.rglob("*.py")}  # fmt: skip
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith(root.name)):
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1]) if node.level else ""
                stem = ".".join(part for part in (base, node.module or "") if part)
                for alias in node.names:  # `from . import progress` imports the submodule, not the package
                    targets.add(f"{stem}.{alias.name}" if f"{stem}.{alias.name}" in modules else stem)
            elif isinstance(node, ast.Import):
                targets |= {alias.name for alias in node.names if alias.name in modules}
        graph[name] = targets - {name}
    return graph


def test_the_package_has_no_import_cycle():
    graph = _imports(ROOT / "repnext")
    done: set[str] = set()

    def visit(name: str, path: list[str]) -> None:
        for target in sorted(graph.get(name, ())):
            assert target not in path, "import cycle: " + " -> ".join([*path[path.index(target) :], target])
            if target not in done:
                visit(target, [*path, target])
        done.add(name)

    for name in sorted(graph):
        visit(name, [name])
