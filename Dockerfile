# The service image: API, worker, simulator and migrations (`irrigation <command>`).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install . && rm -rf src
# `irrigation migrate` and the readiness probe find alembic.ini and migrations/ here.
COPY alembic.ini ./
COPY migrations ./migrations

RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin irrigation \
    && mkdir /data && chown irrigation /data
# Uploaded history files wait here for the worker: api and worker share this volume.
ENV IRRIGATION_DATA_DIR=/data
USER irrigation

EXPOSE 8000 8081
CMD ["irrigation", "serve", "--host", "0.0.0.0"]
