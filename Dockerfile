# Multi-stage: build a wheel, then install it into a slim image that runs as a non-root user.
# (No Docker engine runs on the development machines: this file is untested here.)
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
