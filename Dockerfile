# checkpoint-worker image. The base is a build argument so any official python:3.x-slim (or a
# local stand-in with the same layout) works:
#   docker build --build-arg PYTHON_IMAGE=python:3.11-slim -t checkpoint-worker:local .
ARG PYTHON_IMAGE=python:3.12-slim
FROM ${PYTHON_IMAGE} AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# A C compiler for the parsing kernel (service/core/_kernel.c); the final stage has none.
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
# The final stage copies this venv as it is, so it lives at the same path in both stages.
RUN python -m venv /opt/venv
WORKDIR /src

# Dependencies first, from pyproject.toml alone: editing the code does not reinstall them.
COPY pyproject.toml ./
RUN python -c "import tomllib; project = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
        print('\n'.join(project['dependencies']))" > requirements.txt \
    && /opt/venv/bin/pip install -r requirements.txt

COPY README.md setup.py ./
COPY service ./service
# Not editable: the image needs no source tree. pip compiles the bytecode here, since the
# running container cannot write it; pip itself is not needed at run time.
RUN /opt/venv/bin/pip install --no-deps . \
    && /opt/venv/bin/python -m pip uninstall --yes pip setuptools
# The entry point that holds stop signals until the worker listens for them (see the file).
COPY deploy/docker/hold_stop_signals.c ./
RUN gcc -O2 -Wall -Werror -o /opt/venv/bin/hold-stop-signals hold_stop_signals.c


FROM ${PYTHON_IMAGE}

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1

# A fixed numeric uid, so `runAsNonRoot` checks and volume ownership are predictable.
RUN groupadd --system --gid 10001 worker \
    && useradd --system --uid 10001 --gid worker --home-dir /data --no-create-home \
        --shell /usr/sbin/nologin worker \
    && mkdir /data && chown worker:worker /data

COPY --from=builder /opt/venv /opt/venv

# The data directory (numbers.txt, checkpoint.json, result.json, the lock). A named volume
# mounted here starts as a copy of this directory, so it is owned by the worker user.
WORKDIR /data
VOLUME ["/data"]
USER 10001:10001

# Healthy: a worker holds the lock and its event loop touched it recently (service/health.py).
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
    CMD ["checkpoint-worker", "healthcheck"]

# Exec form: the worker is PID 1 and receives SIGTERM itself, saves its checkpoint and exits 0.
# It starts with its stop signals blocked, so a stop sent before it listens is not dropped (as
# the kernel drops PID 1's signals of default action) but waits for it: a graceful stop too.
STOPSIGNAL SIGTERM
ENTRYPOINT ["hold-stop-signals", "checkpoint-worker"]
CMD ["run"]
