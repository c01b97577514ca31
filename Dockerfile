# rthub images (plain Dockerfile: no BuildKit features, so the classic builder works too).
#   target prod (also the default): the services, no test extras, runs as an unprivileged user (uid 10001)
#   target test: prod + the test extras, the repository's tests/docs/compose.yaml and Debian's chromium,
#                for compose.yaml's `tests` profile (runs as root: the fault drills use the docker socket)
ARG PYTHON_IMAGE=python:3.12-slim

FROM ${PYTHON_IMAGE} AS base
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
WORKDIR /app

FROM base AS prod
COPY pyproject.toml README.md ./
COPY hub hub
COPY portal portal
COPY lms_publisher lms_publisher
# openedx: the hub decodes Open edX Events from the event bus (RTHUB_OPENEDX_TOPICS) with openedx-events' schemas
RUN pip install -q ".[server,openedx]" && rm -rf build ./*.egg-info
# Directories that compose.yaml mounts volumes on: created here so a fresh named volume takes this owner.
RUN mkdir -p /data/nats-auth /operator /nats-conf /creds/hub /creds/deliverer /creds/publisher /creds/tests \
    /creds/admin \
 && chown -R 10001:10001 /data /operator /nats-conf /creds && chmod 700 /data /data/nats-auth /operator
ENV HOME=/data
USER 10001:10001
CMD ["rthub", "--help"]

FROM base AS test
# chromium first: the slowest layer, independent of the code, so code changes keep it cached
RUN apt-get update -qq \
 && apt-get install -y -qq --no-install-recommends chromium fonts-liberation libatomic1 >/dev/null \
 && rm -rf /var/lib/apt/lists/*
COPY pyproject.toml README.md ./
COPY hub hub
COPY portal portal
COPY lms_publisher lms_publisher
RUN pip install -q ".[test]" && rm -rf build ./*.egg-info
COPY . .
CMD ["python", "-m", "pytest", "-q", "tests/compose"]

# The default target (plain `docker build .`): the production image.
FROM prod AS release
