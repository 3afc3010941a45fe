# HematoVision for a lab server: gunicorn + whitenoise; PostgreSQL and Redis from compose.yaml.
FROM python:3.11-slim-bookworm
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    DJANGO_DEBUG=0 HEMATOVISION_VAR_DIR=/var/lib/hematovision \
    TF_CPP_MIN_LOG_LEVEL=2
WORKDIR /app
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt
COPY . .
RUN useradd --system --home /var/lib/hematovision hematovision \
    && mkdir -p /var/lib/hematovision && chown hematovision /var/lib/hematovision \
    && DJANGO_SECRET_KEY=build-only DJANGO_ALLOWED_HOSTS=build python manage.py collectstatic --noinput \
    && HEMATOVISION_ML_CACHE=/app/var/cache/ml python -m ml.export \
    && chown -R hematovision /app/var
ENV HEMATOVISION_ML_CACHE=/app/var/cache/ml
USER hematovision
EXPOSE 8000
CMD ["gunicorn", "-c", "deploy/gunicorn.conf.py", "hematovision_site.wsgi"]
