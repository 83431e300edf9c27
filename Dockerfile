# syntax=docker/dockerfile:1
# multitune for CUDA GPUs: RunPod pods and Instant Clusters, or any machine with the NVIDIA container toolkit.
#
#   docker build -t multitune:0.1.0 .
#   docker run --gpus all --env-file .env -v "$PWD/workspace:/workspace" multitune:0.1.0          # train
#   docker run --gpus all -p 8000:8000 -v "$PWD/workspace:/workspace" multitune:0.1.0 \
#       serve /workspace/runs/my-run --host 0.0.0.0                                              # serve
#
# docs/deploy.md has the RunPod steps. The install mirrors the package's own (Makefile): torch pinned and
# installed first, then multitune with its extras, at the versions in constraints.txt (the pins the test suite passed with).

ARG CUDA_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04
FROM ${CUDA_IMAGE}

# The CUDA build of torch must match the base image's CUDA major version and the host driver (CUDA 12.8
# needs driver >= 570; choose RunPod machines with "CUDA 12.8" or newer).
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
ARG EXTRAS=wandb,qlora

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    WORKSPACE=/workspace \
    HF_HOME=/workspace/.cache/huggingface \
    MULTITUNE_CACHE=/workspace/.cache/multitune \
    TOKENIZERS_PARALLELISM=false

RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv python3-dev build-essential git ca-certificates tini \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv /opt/venv

# torch first, alone, from the index of its CUDA build: the layer is large and rarely changes.
RUN pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX_URL}"

WORKDIR /opt/multitune
COPY pyproject.toml README.md ./
COPY constraints.txt constraints.txt
COPY src src
RUN pip install --constraint constraints.txt ".[${EXTRAS}]" \
 && python -c "import multitune, torch, transformers, peft, accelerate; print('multitune', multitune.__version__, 'torch', torch.__version__)"
COPY configs configs
COPY docker/entrypoint.sh /usr/local/bin/multitune-entrypoint

# Runs, caches and the Hub download cache live on the network volume, so a restarted pod finds them.
VOLUME ["/workspace"]
EXPOSE 8000
# tini reaps zombies and passes SIGTERM on, so a preempted run saves a checkpoint before it stops.
ENTRYPOINT ["/usr/bin/tini", "--", "/usr/local/bin/multitune-entrypoint"]
CMD ["train"]
