# Leadscore worker image.
#
#   docker build -t leadscore .
#   docker run --rm -p 6066:6066 \
#     -e LEADSCORE_BROKER=kafka://kafka:9092 -e LEADSCORE_REDIS_URL=redis://redis:6379/0 leadscore
#
# The image runs `leadscore worker` by default; any other subcommand works too, e.g.
# `docker run --rm -v "$PWD/my-rules.yaml:/r.yaml:ro" leadscore rules check /r.yaml`.
# Every dependency ships manylinux wheels, so no compiler is needed in either stage.

# --- build: install the project and its dependencies into a virtualenv ------------------------
FROM python:3.11-slim AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/leadscore
ENV PATH=/opt/leadscore/bin:$PATH

WORKDIR /src
# pyproject.toml names README.md as the long description, so the build needs it.
COPY pyproject.toml README.md ./
COPY scoring ./scoring
COPY streams ./streams
RUN pip install .

# --- runtime: the virtualenv, the default rules, a non-root user -------------------------------
FROM python:3.11-slim

ENV PATH=/opt/leadscore/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    LEADSCORE_RULES=/etc/leadscore/rules.yaml \
    LEADSCORE_WEB_PORT=6066

# A numeric UID, so that Kubernetes' runAsNonRoot can verify it without a passwd lookup.
RUN groupadd --system --gid 10001 leadscore \
 && useradd --system --uid 10001 --gid leadscore --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin leadscore

COPY --from=build /opt/leadscore /opt/leadscore
# The bundled default rules; mount your own file over it (or set LEADSCORE_RULES).
COPY config/rules.yaml /etc/leadscore/rules.yaml

# The worker writes only to the temp dir (Faust's data directory): with a read-only root
# filesystem, give it a writable /tmp (see deploy/k8s/deployment.yaml).
WORKDIR /app
USER 10001:10001

EXPOSE 6066

# The process answers HTTP (no curl in the slim image, so Python does the GET). urlopen
# raises on a refused connection or an HTTP error status, which makes the check fail.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD python -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('LEADSCORE_WEB_PORT', '6066') + '/healthz', timeout=4)" || exit 1

ENTRYPOINT ["leadscore"]
CMD ["worker"]
