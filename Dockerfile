# TicketBlitz server image: slim, non-root. Embedded default unless TICKETBLITZ_DATABASE_URL,
# TICKETBLITZ_REDIS_URL and TICKETBLITZ_KAFKA_BOOTSTRAP point at PostgreSQL, Redis and Kafka.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY pyproject.toml setup.py README.md LICENSE ./
COPY ticketblitz ./ticketblitz
COPY static ./static
# not editable: the page (static/) is installed as package data, so the image serves it from site-packages
RUN pip install . && rm -rf /app/ticketblitz /app/static /app/build

RUN useradd --system --uid 10001 --home-dir /app ticketblitz \
    && mkdir -p /data && chown ticketblitz /data
USER ticketblitz

ENV TICKETBLITZ_HOST=0.0.0.0 \
    TICKETBLITZ_PORT=8000 \
    TICKETBLITZ_DATA_DIR=/data
VOLUME ["/data"]
EXPOSE 8000

HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2)"]

# exec form: the server is PID 1 and gets SIGTERM itself (stop intake, drain, exit 0)
CMD ["ticketblitz", "serve", "--demo"]
