"""The two set-up paths agree, and CI runs exactly the README's test command."""

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).parents[1]


def test_environment_yml_pins_the_same_packages_as_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pip_packages = set(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        pip_packages |= set(extra)
    environment = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in environment["dependencies"] if isinstance(d, dict))
    assert set(pip_section) - {"-e ."} == pip_packages
    assert "python=3.11" in environment["dependencies"]
    assert {"torch==2.14.1", "torchvision==0.29.1"} <= pip_packages


def test_ci_runs_the_readme_test_command():
    blocks = re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    commands = [line.split("#")[0].strip() for block in blocks[:2] for line in block.splitlines()]
    repro, test = [c for c in commands if c]
    assert repro == "make repro" and test == "make test"
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert test in ci_lines
