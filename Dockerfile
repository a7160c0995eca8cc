# fairat: the one image every Kubeflow component (and `fairat` itself) runs in.
#
# GPU-ready without a CUDA base image: torch==2.14.1 from PyPI on linux/x86_64 is the CUDA 13 build
# and brings its CUDA, cuDNN and NCCL libraries as pinned wheels (constraints.txt), so the node only
# needs an NVIDIA driver new enough for CUDA 13. The same image runs on CPU nodes.
#
# Layers, cheapest to invalidate last: system setup, then the pinned dependencies (they change when
# pyproject.toml or constraints.txt change), then the project source (changes on every commit).
#   docker build -t ghcr.io/fairat/fairat:0.1.0 .
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
FROM ${PYTHON_IMAGE}

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

# Numeric, so Kubernetes can verify runAsNonRoot without reading /etc/passwd.
USER 1000:1000
WORKDIR /home/fairat
CMD ["fairat", "--help"]
