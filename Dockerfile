# dv4d on a CUDA GPU node: `docker build -t dv4d .` then
#   docker run --gpus all -v $PWD/videos:/videos -v $PWD/out:/out -v $HOME/.cache/huggingface:/root/.cache/huggingface \
#       dv4d annotate /videos -o /out --preset default
# The image is also what a Prefect docker/kubernetes work pool runs (see README, "Scale-out"): the entrypoint
# runs dv4d for `docker run IMAGE annotate ...` and passes `prefect ...` / `python ...` commands of a worker through.
# torch 2.14.1 wheels (cu130) bundle cuDNN and cuBLAS; the base image brings the CUDA runtime and driver hooks.
FROM nvidia/cuda:13.0.1-runtime-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    PREFECT_SERVER_ANALYTICS_ENABLED=false DO_NOT_TRACK=1
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.12 python3.12-venv ffmpeg libusb-1.0-0 libgomp1 libgl1 \
    && rm -rf /var/lib/apt/lists/*
RUN python3.12 -m venv /opt/dv4d
ENV PATH=/opt/dv4d/bin:$PATH

WORKDIR /src
# Dependencies first (cached layer): torch/torchvision from PyPI are CUDA builds.
COPY pyproject.toml README.md ./
COPY ba ba
COPY models models
COPY pipeline pipeline
COPY flows flows
RUN pip install --upgrade pip && pip install .

RUN printf '#!/bin/sh\ncase "$1" in\n  prefect|python|python3|sh|bash) exec "$@" ;;\n  *) exec dv4d "$@" ;;\nesac\n' \
        > /usr/local/bin/dv4d-entrypoint && chmod +x /usr/local/bin/dv4d-entrypoint
WORKDIR /work
ENTRYPOINT ["dv4d-entrypoint"]
CMD ["--help"]
