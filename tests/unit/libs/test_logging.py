"""Every line a service writes is one JSON object, whoever logged it: our structlog events,
stdlib records (grpc, vLLM, transformers), and processes a library starts with our config.

Each case runs in a fresh interpreter: logging setup is process-wide, and stderr is what counts."""
import json
import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path

from meshllm.logging import logging_config_file

LIBS = Path(__file__).resolve().parents[3] / "libs"


def stderr_lines(code: str) -> list[dict]:
    # This checkout's libs first, whatever the venv's .pth points at.
    path = os.pathsep.join([str(LIBS), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": path}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, timeout=60, check=True)
    return [json.loads(line) for line in done.stderr.splitlines()]


def test_a_stdlib_line_and_a_structlog_line_carry_the_same_fields():
    structlog_line, stdlib_line = stderr_lines("""
import logging
from meshllm.logging import bind_request, configure_logging, get_logger
configure_logging("router", "info")
bind_request(request_id="req-1")
get_logger("services.router.server").info("from_structlog")
logging.getLogger("vllm.v1.engine").warning("from %s", "stdlib")
""")
    assert structlog_line.keys() == stdlib_line.keys()
    assert {"service", "level", "timestamp", "logger", "event", "request_id"} <= stdlib_line.keys()
    assert structlog_line["service"] == stdlib_line["service"] == "router"
    assert (structlog_line["level"], stdlib_line["level"]) == ("info", "warning")
    assert stdlib_line["event"] == "from stdlib" and stdlib_line["logger"] == "vllm.v1.engine"
    for line in (structlog_line, stdlib_line):
        assert datetime.fromisoformat(line["timestamp"]).utcoffset().total_seconds() == 0


def test_lines_below_the_level_are_dropped_on_both_paths():
    lines = stderr_lines("""
import logging
from meshllm.logging import configure_logging, get_logger
configure_logging("router", "warning")
get_logger("services.router").info("quiet")
logging.getLogger("grpc").info("quiet")
logging.getLogger("grpc").error("loud")
""")
    assert [line["event"] for line in lines] == ["loud"]


def test_an_exception_is_one_json_line_with_its_traceback():
    (line,) = stderr_lines("""
import logging
from meshllm.logging import configure_logging
configure_logging("generation", "info")
try:
    1 / 0
except ZeroDivisionError:
    logging.getLogger("vllm").exception("engine failed")
""")
    assert line["event"] == "engine failed" and "ZeroDivisionError" in line["exception"]


def test_a_python_warning_is_a_json_line():
    (line,) = stderr_lines("""
import warnings
from meshllm.logging import configure_logging
configure_logging("generation", "info")
warnings.warn("reduce_op is deprecated", FutureWarning)
""")
    assert line["logger"] == "py.warnings" and "reduce_op is deprecated" in line["event"]


def test_a_process_that_applies_the_config_file_writes_the_same_json():
    # What vLLM does in each engine-core or worker process it starts (spawned ones inherit
    # no handlers): dictConfig from the file it was handed, nothing else of ours.
    with logging_config_file("generation", "info") as path:
        (line,) = stderr_lines(f"""
import json, logging.config
logging.config.dictConfig(json.loads(open({str(path)!r}).read()))
logging.getLogger("vllm.v1.engine.core").info("engine core ready")
""")
    assert line["service"] == "generation" and line["level"] == "info"
    assert line["event"] == "engine core ready" and "timestamp" in line
