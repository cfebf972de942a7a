# One image for every role: migrate, inference worker, training worker, beat.
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2
RUN useradd --create-home ser
WORKDIR /app
COPY pyproject.toml README.md alembic.ini ./
COPY ser_worker ser_worker
COPY cli cli
COPY migrations migrations
RUN pip install --no-cache-dir ".[flower]"
USER ser
