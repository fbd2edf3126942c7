# syntax=docker/dockerfile:1
# wpc-backend: one image for every `wpc` sub-command (listener, enrollment, notifier, web, migrate, ...).
#   docker build -t ghcr.io/wpc-pilot/wpc-backend:0.1.0 .
# The tag follows `version` in pyproject.toml; tests/unit/test_deploy.py checks that the
# compose file and the k8s manifests use exactly that tag.

# --- build: install the project and its pinned dependencies into a venv ------------------
FROM python:3.11-slim AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
# The whole context (trimmed by .dockerignore): `pip install .` needs pyproject.toml,
# the README it names, and the packages it lists.
COPY . .
RUN python -m venv /opt/wpc \
 && /opt/wpc/bin/pip install .

# --- runtime: the venv only, no sources, no build tools ----------------------------------
FROM python:3.11-slim

# A fixed numeric uid/gid: Kubernetes can only verify `runAsNonRoot` against a number.
RUN groupadd --system --gid 10001 wpc \
 && useradd --system --uid 10001 --gid wpc --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin wpc

COPY --from=build /opt/wpc /opt/wpc

# PYTHONDONTWRITEBYTECODE: pip compiled the .pyc at install time, and the root filesystem
# is read-only in Kubernetes. PYTHONUNBUFFERED: logs reach `docker logs`/kubectl at once.
ENV PATH=/opt/wpc/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

# /tmp is the only place the process may write (an emptyDir in Kubernetes).
WORKDIR /tmp
USER 10001:10001

# Defaults of ListenerSettings.mllp_port (MLLP, HL7 v2 over TCP), .listener_http_port,
# EnrollmentSettings.enrollment_http_port (`wpc enrollment`: care team API, probes, metrics) and
# NotifierSettings.notifier_http_port (`wpc notifier`: its API, probes, metrics) and
# WebSettings.web_port (`wpc web`: the care team's web app). Each sub-command listens only on
# its own; EXPOSE is documentation, it publishes nothing.
EXPOSE 2575 8080 8081 8082 8084

# No HEALTHCHECK here: the image also runs one-shot commands (`wpc migrate`) that serve no
# HTTP, and the HTTP port differs per sub-command; the services' health checks live in
# compose and in the k8s probes.
# Exec form, so `wpc` is PID 1 and receives SIGTERM itself (stop accepting, drain, exit).
ENTRYPOINT ["wpc"]
CMD ["listener"]
