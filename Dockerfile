# One image for every envelope-mq service: producer, consumer and the KMS emulator.
# PYTHON_IMAGE: any image with python3.11 and pip first on PATH and useradd; CI
# points it at one built from Debian's packages (scripts/containers.sh).
ARG PYTHON_IMAGE=python:3.11-slim
FROM ${PYTHON_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
# Metadata first, so that a code change does not invalidate the layer cache of pip's
# dependency resolution more than it must.
COPY pyproject.toml README.md ./
COPY shared/ shared/
COPY producer/ producer/
COPY consumer/ consumer/
COPY kms_emulator/ kms_emulator/
COPY src/ src/
# The emulator extra: the same image runs `envelope-mq kms-emulator` (YAML seeds).
RUN pip install '.[emulator]' && rm -rf /src

# Never run as root: nothing here needs it.
RUN useradd --system --uid 10001 --no-create-home emq
USER emq
WORKDIR /home/emq

CMD ["envelope-mq"]
