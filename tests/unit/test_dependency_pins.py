"""pyproject.toml declares the mesh's dependencies; requirements/cpu.lock is what installs
(with --no-deps). They must agree, or CI tests something other than what the project says."""
import re
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def lock_pins() -> dict[str, str]:
    pins = {}
    for line in (REPO / "requirements" / "cpu.lock").read_text().splitlines():
        name, _, version = line.strip().partition("==")
        pins[re.sub(r"[-_.]+", "-", name).lower()] = version
    return pins


def test_every_pinned_dependency_installs_at_the_pinned_version():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    declared = [*project["dependencies"], *project["optional-dependencies"]["cpu"],
                *project["optional-dependencies"]["dev"]]
    locked = lock_pins()
    for requirement in declared:
        name, _, version = requirement.partition("==")
        assert version, f"{requirement} is not pinned in pyproject.toml"
        key = re.sub(r"[-_.]+", "-", name).lower()
        assert locked.get(key) == version, f"{name}: pyproject {version}, lock {locked.get(key)}"


def test_the_lock_leaves_out_the_torch_add_ons_that_break_the_cpu_build():
    assert not {"torchvision", "torchaudio", "torchcodec"} & set(lock_pins())
