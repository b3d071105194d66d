# The drip engine and CLI. Used by docker-compose.yml's `drip` service, which
# passes DRIP_KAFKA_BOOTSTRAP and DRIP_DATABASE_URL (so scripts/infra.sh is not
# needed inside the container).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Only what the package build needs (not .venv/ or .drip/ from the host).
# README* is a glob so the build also works before a README exists.
COPY pyproject.toml README* ./
COPY contracts ./contracts
COPY domain ./domain
COPY projections ./projections
COPY services ./services
COPY campaigns ./campaigns
RUN pip install -e .  # editable: the demo reads campaigns/ beside the code

RUN useradd --create-home --uid 10001 drip
USER drip

CMD ["drip", "demo"]
