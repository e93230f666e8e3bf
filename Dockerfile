# syntax=docker/dockerfile:1
# pacer: real-time budget pacing service.
#   docker build -t pacer .
#   docker run -p 8080:8080 -v pacer-data:/var/lib/pacer pacer
# Single instance: embedded SQLite in /var/lib/pacer (keep it on a volume). Fleets: set PACER_STORE=redis://...

############################ builder: wheels only ############################
FROM python:3.11-slim AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src

# Dependency wheels first, from pyproject.toml alone, so this layer is reused until the dependencies change.
# (All dependencies ship manylinux wheels for amd64/arm64, so no compiler is needed here either.)
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > requirements.txt \
 && pip wheel -w /wheels -r requirements.txt

# Then the project itself. pyproject.toml names README.md as the package readme; the wildcard keeps the build
# working while it is absent (BuildKit allows an empty wildcard match).
COPY pyproject.toml README.md* ./
COPY pacer/ ./pacer/
RUN pip wheel --no-deps -w /wheels .

############################ runtime ############################
FROM python:3.11-slim AS runtime
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1

# Fixed uid/gid so volume ownership and Kubernetes securityContext (runAsUser/fsGroup 10001) line up.
RUN groupadd --system --gid 10001 pacer \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/pacer --shell /usr/sbin/nologin pacer \
 && mkdir -p /var/lib/pacer /var/lib/pacer-log \
 && chown pacer:pacer /var/lib/pacer /var/lib/pacer-log \
 && chmod 0700 /var/lib/pacer

# Wheels are bind-mounted from the builder rather than COPYed, so they never become an image layer.
# --no-index: install exactly what the builder resolved, nothing fetched at this stage.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links=/wheels pacer

# Spend-curve artifacts: not a Python package, so not in the wheel. Root-owned: the service only reads them.
COPY models/ /opt/pacer/models/

# Host/port are also set here (not only in CMD) so `docker run pacer serve --workers 2` still listens on all
# interfaces instead of the 127.0.0.1 default. State (SQLite db, generated operator token) lives on the volume.
ENV PACER_HOST=0.0.0.0 \
    PACER_PORT=8080 \
    PACER_STORE=sqlite:////var/lib/pacer/pacer.db \
    PACER_OPERATOR_TOKEN_FILE=/var/lib/pacer/operator-token \
    PACER_MODELS_DIR=/opt/pacer/models \
    PACER_LOG_FORMAT=json

WORKDIR /var/lib/pacer
# Declared after the chown above so a fresh volume is initialised owned by pacer.
VOLUME /var/lib/pacer

# Numeric user: lets Kubernetes' runAsNonRoot verify the user without a runAsUser override.
USER 10001:10001

EXPOSE 8080

# slim has no curl/wget; urlopen raises (non-zero exit) on connection errors and non-2xx answers.
# Liveness only (/healthz); /readyz (store reachable) is for load balancers / Kubernetes readiness.
HEALTHCHECK --interval=10s --timeout=3s --start-period=15s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2)"]

# Exec form: pacer is PID 1 and gets SIGTERM directly for a graceful shutdown.
ENTRYPOINT ["pacer"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8080"]
