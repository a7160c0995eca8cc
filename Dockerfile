# fairat: the one image every Kubeflow component (and `fairat` itself) runs in.
#
# GPU-ready without a CUDA base image: torch==2.14.1 from PyPI on linux/x86_64 is the CUDA 13.0
# build (torch.__version__ 2.14.1+cu130) and brings its CUDA, cuDNN and NCCL libraries as pinned
# wheels (constraints.txt). What a GPU node needs (also in the io.fairat.* labels below):
#   - an NVIDIA driver R580 or newer (CUDA 13.0's minimum on Linux; older drivers fail with "the
#     NVIDIA driver on your system is too old", and training then refuses to start);
#   - a GPU of compute capability 7.5 or newer (Turing, Ampere, Ada, Hopper, Blackwell): CUDA 13
#     builds carry no kernels for Maxwell, Pascal or Volta.
# The same image runs on CPU nodes (a task that requested GPUs refuses to run on CPU).
#
# Layers, cheapest to invalidate last: system setup, then the pinned dependencies (they change when
# pyproject.toml or constraints.txt change), then the project source (changes on every commit).
# Tag the image with the commit it is built from, so that a new commit is a new tag and no node
# keeps running old code under a reused tag; compile/submit with --image ...:{commit} to match:
#   docker build -t ghcr.io/fairat/fairat:$(git rev-parse --short=12 HEAD) \
#     --build-arg GIT_COMMIT=$(git rev-parse HEAD) .
#
# Base image: pinned by tag here. No digest is written in this file because none could be looked
# up where it was written; pin one for a reproducible build (the digest of the tag today):
#   docker buildx imagetools inspect python:3.11-slim-bookworm      # "Digest: sha256:..."
#   docker build --build-arg PYTHON_IMAGE=python:3.11-slim-bookworm@sha256:<that digest> ...
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
FROM ${PYTHON_IMAGE}

LABEL org.opencontainers.image.title="fairat" \
      org.opencontainers.image.description="fair adversarial training: the Kubeflow components and the fairat CLI" \
      io.fairat.torch="2.14.1+cu130" \
      io.fairat.cuda="13.0" \
      io.fairat.nvidia-driver="R580 or newer" \
      io.fairat.gpu="compute capability 7.5 or newer (Turing and later)"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HOME=/home/fairat

# A fixed non-root user. The KFP v2 launcher stages artifacts under /gcs, /minio and /s3 at the
# root of the file system; owning them lets it do so without root on backends that do not mount
# scratch volumes there.
RUN groupadd --gid 1000 fairat \
    && useradd --uid 1000 --gid fairat --home-dir /home/fairat --create-home \
       --shell /usr/sbin/nologin fairat \
    && mkdir -p /gcs /minio /s3 /opt/fairat \
    && chown fairat:fairat /gcs /minio /s3 /opt/fairat

WORKDIR /opt/fairat

# Dependencies only: the runtime and build requirements named in pyproject.toml, at the versions
# constraints.txt pins. Editing the source never reruns this layer.
COPY pyproject.toml constraints.txt ./
RUN python -c 'import tomllib; p = tomllib.load(open("pyproject.toml", "rb")); print("\n".join(p["build-system"]["requires"] + p["project"]["dependencies"]))' > /tmp/requirements.txt \
    && pip install --no-cache-dir -c constraints.txt -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# The project: the package, the Kubeflow components and pipeline, the default params.
COPY README.md params.yaml ./
COPY fairat ./fairat
COPY components ./components
COPY pipelines ./pipelines
RUN pip install --no-cache-dir --no-deps --no-build-isolation . \
    && rm -rf build ./*.egg-info

# The commit the source came from, last: a new commit invalidates no earlier layer.
ARG GIT_COMMIT=unknown
LABEL org.opencontainers.image.revision="${GIT_COMMIT}"

# Numeric, so Kubernetes can verify runAsNonRoot without reading /etc/passwd.
USER 1000:1000
WORKDIR /home/fairat
CMD ["fairat", "--help"]
