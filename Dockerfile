# The worker image: Debian bookworm's Python 3.11, GDAL and GDAL Python bindings (nothing is compiled),
# and this package with its other dependencies installed from a wheelhouse (the build needs no Python
# package index):
#
#   ./scripts/wheelhouse && docker build -t modelrunner .
#
# (podman: the same, with `podman build --format docker`, which keeps the HEALTHCHECK; see doc/container.md).

# What every stage runs on: Debian's Python, GDAL bindings and numpy (python3-gdal is built against it).
FROM debian:bookworm-slim AS runtime
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      python3 python3-gdal python3-numpy ca-certificates \
 && apt-get clean && rm -rf /var/lib/apt/lists/*

# Installs the wheelhouse into a virtual environment that sees Debian's packages, and this package beside it
# (its own layer, so that an update of the code ships a layer of a megabyte or two). pip and the wheels stay
# in this stage: only what they installed goes on.
FROM runtime AS install
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3-pip python3-venv \
 && apt-get clean && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv --system-site-packages --without-pip /opt/modelrunner
ENV PIP_NO_INDEX=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
COPY build/wheelhouse/deps /wheels/deps
RUN /opt/modelrunner/bin/python -m pip install -q --find-links /wheels/deps \
      -r /wheels/deps/requirements.txt -c /wheels/deps/constraints.txt
COPY build/wheelhouse/app /wheels/app
# The checks: every requirement met (GDAL's by Debian), numpy Debian's own, the worker imports.
RUN /opt/modelrunner/bin/python -m pip install -q --no-deps --target /opt/app /wheels/app/*.whl \
 && rm -rf /opt/app/bin \
 && PYTHONPATH=/opt/app /opt/modelrunner/bin/python -m pip check \
 && PYTHONPATH=/opt/app /opt/modelrunner/bin/python -c "import numpy, osgeo.gdal_array, modelrunner.worker; \
assert numpy.__file__.startswith('/usr/lib/python3/'), 'numpy must come from Debian, not ' + numpy.__file__"

FROM runtime
RUN useradd --uid 1000 --user-group --create-home --home-dir /home/modelrunner modelrunner
COPY --from=install /opt/modelrunner /opt/modelrunner
COPY --from=install /opt/app /opt/modelrunner/lib/python3.11/site-packages
WORKDIR /home/modelrunner
COPY bin ./bin
# python3 is the environment's; MR_HEARTBEAT_FILE turns on the worker's liveness file, which the
# HEALTHCHECK reads (stale after MR_HEARTBEAT_MAX_AGE, 600 s by default: more than the longest region).
ENV PATH=/opt/modelrunner/bin:$PATH PYTHONUNBUFFERED=1 MALLOC_ARENA_MAX=2 \
    MR_HEARTBEAT_FILE=/tmp/modelrunner.heartbeat
USER modelrunner
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 CMD ["python3", "-m", "modelrunner.liveness"]
# SIGTERM: the worker stops taking messages and hands back unfinished work within MR_STOP_TIMEOUT (30 s):
# give the container that long to stop (ECS stopTimeout, docker run --stop-timeout 30).
STOPSIGNAL SIGTERM
ENTRYPOINT ["python3", "bin/oversightml-mr-entry-point.py"]
