# chat-gateway image: `docker build -t chat-gateway .`
#
# Two stages: the build stage installs the project (runtime dependencies only, no dev
# extras) into a virtualenv; the final stage copies that venv onto a clean slim image and
# runs as an unprivileged user. The command is exec-form so that `chatgw` is PID 1 and gets
# SIGTERM itself: it then drains (README "Operations"; CHATGW_DRAIN_SECONDS, default 20 s),
# so the orchestrator's stop timeout must be longer than that (compose: stop_grace_period;
# Kubernetes: terminationGracePeriodSeconds). uvicorn installs its own SIGTERM/SIGINT
# handlers and chatgw starts no children without --workers, so no init (tini) is needed.

FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY gateway ./gateway
COPY modules ./modules
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir .

FROM python:3.11-slim
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    CHATGW_CONFIG=/etc/chatgw/routes.yaml \
    CHATGW_PORT=8080 \
    CHATGW_ADMIN_PORT=9000 \
    CHATGW_DRAIN_SECONDS=20
RUN groupadd --system --gid 10001 chatgw \
    && useradd --system --uid 10001 --gid chatgw --home-dir /var/lib/chatgw \
       --shell /usr/sbin/nologin chatgw \
    && install -d -o chatgw -g chatgw -m 0750 /var/lib/chatgw
COPY --from=build /opt/venv /opt/venv
COPY routes.yaml /etc/chatgw/routes.yaml
# The working directory is the only writable place the gateway needs (the embedded SQLite
# default when DATABASE_URL is unset); with a read-only root filesystem mount a volume here.
WORKDIR /var/lib/chatgw
USER 10001:10001
EXPOSE 8080 9000
STOPSIGNAL SIGTERM
# No curl in slim: ask the admin listener's /ready with the standard library (503 while
# starting or draining makes urlopen raise, hence a non-zero exit).
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as u; u.urlopen('http://127.0.0.1:%s/ready' % os.environ.get('CHATGW_ADMIN_PORT', '9000'), timeout=2)"]
CMD ["chatgw", "serve", "--host", "0.0.0.0", "--admin-host", "0.0.0.0"]
