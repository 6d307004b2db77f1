FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /app
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt
COPY . .
RUN SECRET_KEY=collectstatic python manage.py collectstatic --noinput -v 0
EXPOSE 8000
CMD ["gunicorn", "-c", "python:sparkops.gunicorn_conf", "sparkops.wsgi", "-b", "0.0.0.0:8000", "-w", "3", "--worker-class", "gthread", "--threads", "32"]
