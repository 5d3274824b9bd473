"""Which cores the engine gets and which the rest of the mesh gets, on a CPU-only machine.

vLLM's CPU worker binds its OpenMP threads to every core but the ones it reserves, and keeps
them busy while it generates. A process the kernel puts on one of those cores waits behind
them: measured on 2 cores with a vLLM replica generating, a separate gRPC echo server
answered in 15 ms to 1.5 s at the median and 4-6 s at p99 when left to float, 7 ms / 17 ms
when kept on the free core. Envoy, the router, auth and the generation replica's own API
process (its event loop serves the gRPC calls, cancels included) are such processes. So on a
CPU-only machine the mesh binds the engine to all but `mesh_cpus` cores (telling vLLM so
explicitly) and keeps every other process of its own on the rest. With a GPU, or the sim
engine, nothing is pinned."""
import importlib.metadata
import os
from dataclasses import dataclass


@dataclass(frozen=True)
class CpuLayout:
    engine: tuple[int, ...]
    """Where vLLM's CPU worker runs its OpenMP threads (VLLM_CPU_OMP_THREADS_BIND)."""
    mesh: tuple[int, ...]
    """Where every other process runs: Envoy, control plane, router, auth, the generation
    replicas' API processes, the engine core's scheduler loop, and the caller."""

    def engine_env(self) -> dict[str, str]:
        return {"VLLM_CPU_OMP_THREADS_BIND": ",".join(map(str, self.engine))}


def vllm_runs_on_cpu() -> bool:
    try:
        importlib.metadata.distribution("vllm-cpu")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def cpu_layout(engine: str, mesh_cpus: int) -> CpuLayout | None:
    """The split for a mesh whose replicas run `engine`; None when nothing should be pinned
    (not vLLM on CPU, `mesh_cpus` 0, or too few cores to split)."""
    if engine != "vllm" or mesh_cpus <= 0 or not vllm_runs_on_cpu():
        return None
    allowed = sorted(os.sched_getaffinity(0))
    if len(allowed) <= mesh_cpus:
        return None
    return CpuLayout(engine=tuple(allowed[:-mesh_cpus]), mesh=tuple(allowed[-mesh_cpus:]))
