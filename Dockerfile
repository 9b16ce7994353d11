# The worker container: Debian's GDAL, the bindings built against it, and this package.
FROM python:3.11-slim-bookworm

RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends gdal-bin libgdal-dev build-essential \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /home/modelrunner
COPY pyproject.toml README.md LICENSE ./
COPY src ./src
COPY bin ./bin
# numpy first and no build isolation: the GDAL build must see numpy, or osgeo.gdal_array is left out.
RUN pip install --no-cache-dir "numpy<2.5" setuptools wheel \
 && pip install --no-cache-dir --no-build-isolation "GDAL==$(gdal-config --version)" \
 && pip install --no-cache-dir . \
 && python -c "from osgeo import gdal_array" \
 && apt-get purge -y build-essential && apt-get autoremove -y

RUN useradd --system --uid 1000 modelrunner
USER modelrunner
ENV PYTHONUNBUFFERED=1 MALLOC_ARENA_MAX=2
# SIGTERM: the worker stops taking messages and hands back unfinished work within MR_STOP_TIMEOUT (30 s).
STOPSIGNAL SIGTERM
ENTRYPOINT ["python3", "bin/oversightml-mr-entry-point.py"]
