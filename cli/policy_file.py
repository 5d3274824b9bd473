"""Tenant policies as operators write them: a JSON or YAML file of meshllm.auth.v1.Policy
fields, by their proto names (`allowed_models`, `prices`, ...)."""
import json
from pathlib import Path

import yaml
from google.protobuf import json_format

from cli.errors import InputError, one_line
from meshllm.api.auth.v1 import auth_pb2

_EXAMPLE = '{"allowed_models": ["tiny-llama"], "requests_per_minute": 60}'


def _parsed(path: Path, text: str) -> object:
    """JSON for a .json file; YAML (a superset of JSON) for anything else."""
    if path.suffix.lower() == ".json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as error:
            raise InputError(f"policy file {path} is not valid JSON: {error}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as error:
        where = getattr(error, "problem_mark", None)
        at = f" (line {where.line + 1}, column {where.column + 1})" if where else ""
        problem = getattr(error, "problem", None) or str(error)
        raise InputError(f"policy file {path} is not valid YAML: {problem}{at}") from None


def read_policy(path: Path) -> auth_pb2.Policy:
    """The policy in `path`, or an InputError naming the file and what is wrong with it."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"policy file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(f"policy file {path} cannot be read: {error}") from None
    data = _parsed(path, text)
    if data is None:
        # The API refuses a missing policy on purpose; lifting every limit must be explicit.
        raise InputError(f"policy file {path} is empty; write {{}} for a policy without limits")
    if not isinstance(data, dict):
        raise InputError(f"policy file {path} must hold a mapping of policy fields, such as "
                         f"{_EXAMPLE}; it holds a {type(data).__name__}")
    try:
        return json_format.ParseDict(data, auth_pb2.Policy())
    except (json_format.ParseError, ValueError, TypeError) as error:
        first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise InputError(f"policy file {path} is not a valid policy: "
                         f"{one_line(first_line)}") from None
