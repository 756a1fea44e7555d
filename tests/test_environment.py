"""requirements.txt is the one place for pins; environment.yml must say the same."""
from __future__ import annotations

import re

from conftest import REPO

CONDA_NAMES = {"pytorch": "torch"}


def pip_pins() -> dict[str, str]:
    pins = {}
    for line in (REPO / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        m = re.fullmatch(r"([A-Za-z0-9_.\-]+)==([^\s;]+)", line)
        assert m, f"requirements.txt: {line!r} is not pinned with =="
        pins[m.group(1).lower()] = m.group(2)
    return pins


def conda_pins() -> dict[str, str]:
    pins = {}
    in_deps = False
    for raw in (REPO / "environment.yml").read_text().splitlines():
        line = raw.split("#", 1)[0].rstrip()
        if line.startswith("dependencies:"):
            in_deps = True
            continue
        if in_deps and re.match(r"^\S", line):
            in_deps = False
        m = re.fullmatch(r"\s+-\s+([A-Za-z0-9_.\-]+)==?([^\s=]+)", line) if in_deps else None
        if m and m.group(1) != "python":
            pins[CONDA_NAMES.get(m.group(1).lower(), m.group(1).lower())] = m.group(2)
    return pins


def test_environment_yml_mirrors_requirements():
    pip, conda = pip_pins(), conda_pins()
    assert pip, "no pins found in requirements.txt"
    assert pip == conda, f"requirements.txt and environment.yml disagree: only pip {sorted(set(pip.items()) - set(conda.items()))}, only conda {sorted(set(conda.items()) - set(pip.items()))}"


def test_torch_pin_is_the_local_cpu_build():
    assert pip_pins()["torch"] == "2.13.0"


def test_installed_versions_match_pins():
    from importlib.metadata import version

    for name, pinned in pip_pins().items():
        assert version(name).split("+")[0] == pinned, f"{name}: installed {version(name)}, pinned {pinned}; run `make setup`"
