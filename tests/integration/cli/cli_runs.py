"""Running `meshllm` as an operator does, for the CLI's integration tests: `python -m cli` as
a real subprocess with the environment the test gives it.

The servers these tests start are served by the test's own event loop, so the CLI runs under
asyncio.create_subprocess_exec: a blocking subprocess.run would stop the loop that answers it."""
import asyncio
import os
import sys
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Ran:
    code: int
    out: str
    err: str


async def run_cli(args: tuple[str, ...], cwd: Path, env: dict[str, str],
                  drop_env: tuple[str, ...] = ()) -> Ran:
    """`meshllm <args>` in `cwd`, with this process's environment less `drop_env` plus `env`
    (and a wide terminal, so that tables do not wrap)."""
    environment = {name: value for name, value in os.environ.items() if name not in drop_env}
    environment |= {"COLUMNS": "200", **env}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "cli", *args, cwd=cwd, env=environment,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    async with asyncio.timeout(60):
        out, err = await process.communicate()
    return Ran(process.returncode, out.decode(), err.decode())


def succeeded(ran: Ran) -> Ran:
    assert ran.code == 0, f"exit {ran.code}: {ran.err}"
    return ran


def one_line_error(ran: Ran, code: int) -> str:
    """A failure as the CLI promises it: the exit code, one line on stderr, no traceback."""
    assert ran.code == code, (ran.code, ran.out, ran.err)
    assert "Traceback" not in ran.err + ran.out
    assert ran.err.startswith("error: ") and ran.err.count("\n") == 1, ran.err
    return ran.err.strip()
