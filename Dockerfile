# lit-mcmc on the official CUDA build of PyTorch. Build from the repository root:
#   docker build -t lit-mcmc .
# Run on the GPUs with the shared assets (datasets, weights) at /data and run outputs kept on the host:
#   docker run --rm --gpus all --user "$(id -u):$(id -g)" -v /path/to/data:/data -v "$PWD/runs:/workspace/runs" \
#       lit-mcmc fit --config configs/toy2d/train_gmm_score.yaml --trainer.accelerator gpu
# CUDA 13 needs NVIDIA driver >= 580; with an older driver build on the CUDA 12.6 image of the same PyTorch:
#   docker build --build-arg BASE_IMAGE=pytorch/pytorch:2.14.1-cuda12.6-cudnn9-runtime -t lit-mcmc .
ARG BASE_IMAGE=pytorch/pytorch:2.14.1-cuda13.0-cudnn9-runtime
FROM ${BASE_IMAGE}

# The image's Python is the system interpreter (PEP 668), so pip must be allowed to install into it.
# LIT_MCMC_SHARED: where lit_mcmc.assets looks for shared datasets and weights (mount them there).
# MPLCONFIGDIR: matplotlib needs a writable cache, also when the container runs under an arbitrary --user.
ENV PIP_BREAK_SYSTEM_PACKAGES=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    LIT_MCMC_SHARED=/data \
    MPLCONFIGDIR=/tmp/matplotlib

WORKDIR /workspace

# The package before the configs: editing a config does not reinstall the dependencies.
# torch and torchvision come with the base image; pip keeps them as they satisfy pyproject's requirements.
COPY pyproject.toml README.md ./
COPY lit_mcmc ./lit_mcmc
COPY callbacks ./callbacks
RUN pip install --no-cache-dir .

COPY configs ./configs

# A non-root user (UID 10001: Ubuntu images already use 1000) owning runs/, where the configs write their output.
RUN groupadd --gid 10001 litmcmc \
    && useradd --create-home --uid 10001 --gid 10001 litmcmc \
    && mkdir -p /workspace/runs /data \
    && chown 10001:10001 /workspace/runs
USER 10001:10001

VOLUME ["/data"]
ENTRYPOINT ["lit-mcmc"]
CMD ["--help"]
