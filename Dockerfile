# Multi-stage: build a wheel, then install it into a slim image that runs as a non-root user.
# Verified by hand with docker/verify.sh (not in CI; our machines can't pull python:3.12-slim, so it
# builds a stand-in: Debian bookworm with CPython 3.12): this file built unchanged from a git
# archive, then the container ran its migrations as uid 10001, answered /healthz and /readyz, took
# a POST with a token from `workshop token create`, served the essay page and feeds, reported
# healthy, stopped on `docker stop` in 1-2 s with exit code 0 (`exec` below makes `workshop serve`
# PID 1, so SIGTERM reaches it; without it: killed after 10 s, exit code 137), and kept its data
# in /data across containers.
FROM python:3.12-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY app ./app
COPY templates ./templates
COPY static ./static
COPY migrations ./migrations
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.12-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    WORKSHOP_DATABASE_URL=sqlite:////data/workshop.db
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels \
    && useradd --create-home --uid 10001 workshop \
    && mkdir /data && chown workshop /data
USER workshop
WORKDIR /data
VOLUME /data
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=3s --start-period=10s \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2)"
CMD ["sh", "-c", "workshop db upgrade && exec workshop serve --host 0.0.0.0 --port 8000 --workers ${WORKSHOP_WORKERS:-2}"]
