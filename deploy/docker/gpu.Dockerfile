# syntax=docker/dockerfile:1
# meshllm-gpu: the generation service on vLLM with CUDA (pyproject.toml's dependencies plus its
# `gpu` extra, vllm==0.32.0, which brings torch's CUDA build and CUDA's own libraries). The
# node needs the NVIDIA driver and container toolkit; the image needs no CUDA base image.
# From the repository root:
#
#   docker build -f deploy/docker/gpu.Dockerfile -t meshllm-gpu:0.1.0 .
#
# Nothing is fetched at run time: the tiny model is built into the image and Hugging Face is
# offline; a real model is mounted as a directory (deploy/k8s/README.md).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY pyproject.toml pyproject.toml
# The pins pyproject.toml declares: the mesh, vLLM, and the two stub generators (build only).
RUN python -m venv /opt/venv \
 && python -c 'import tomllib; p = tomllib.load(open("pyproject.toml", "rb"))["project"]; \
dev = [d for d in p["optional-dependencies"]["dev"] if d.startswith(("grpcio-tools==", "mypy-protobuf=="))]; \
print("\n".join(p["dependencies"] + p["optional-dependencies"]["gpu"] + dev))' > /tmp/requirements.txt \
 && /opt/venv/bin/pip install -r /tmp/requirements.txt
COPY . .
RUN PATH=/opt/venv/bin:$PATH bash scripts/gen_protos.sh /opt/venv/bin/python protos libs/meshllm/api \
 && PYTHONPATH=/app/libs:/app /opt/venv/bin/python -m services.generation.tiny_model \
      /app/.meshllm/models/tiny-llama \
 && /opt/venv/bin/python -m compileall -q libs services cli deploy \
 && printf '%s\n' /app/libs /app > /opt/venv/lib/python3.11/site-packages/meshllm.pth

FROM ${PYTHON_IMAGE}
RUN apt-get update \
 && apt-get install -y --no-install-recommends libgomp1 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 meshllm \
 && useradd --system --uid 10001 --gid meshllm --home-dir /tmp --shell /usr/sbin/nologin meshllm
COPY --from=build /opt/venv /opt/venv
COPY --from=build /app /app
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp XDG_CACHE_HOME=/tmp/cache HF_HOME=/tmp/cache/huggingface \
    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1
WORKDIR /app
USER 10001:10001
ENTRYPOINT ["python", "-m"]
CMD ["services.generation"]
