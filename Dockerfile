FROM python:3.11-slim
WORKDIR /app
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt
COPY . .
ENV SMARTFLOW_DATA_DIR=/data
EXPOSE 7777 7778
CMD ["python", "manage.py", "serve"]
