# The Smartflow gateway (and its Celery worker): an unprivileged user, the data folder at /data.
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 SMARTFLOW_DATA_DIR=/data
WORKDIR /app
RUN groupadd --system --gid 10001 smartflow \
 && useradd --system --uid 10001 --gid smartflow --no-create-home --shell /usr/sbin/nologin smartflow \
 && mkdir /data && chown smartflow:smartflow /data
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt
COPY . .
USER smartflow:smartflow
EXPOSE 7777 7778
# The slim image has no curl: Python asks /health on the proxy port (503 when the database or cache is down).
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('SMARTFLOW_PROXY_PORT', '7777'), timeout=4)"]
# Exec form: the server is PID 1's child under `init`, or PID 1 itself, and gets SIGTERM to drain.
CMD ["python", "manage.py", "serve"]
