"""Settings of the Django example: one app (``shop``), sqlite, tasks run by uWSGI mules."""

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = "example-only-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]

INSTALLED_APPS = [
    "uwsgiconf_mules.django",  # the system check of the task backend
    "shop",
]
ROOT_URLCONF = "mysite.urls"
WSGI_APPLICATION = "mysite.wsgi.application"
USE_TZ = True

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("EXAMPLE_DB", str(BASE_DIR / "db.sqlite3")),
    },
}

# django.tasks (Django 6) or the django-tasks backport: queue "mail" is the uWSGI farm "mail".
TASKS = {
    "default": {
        "BACKEND": "uwsgiconf_mules.django.MulesBackend",
        "QUEUES": ["mail"],
    },
}
