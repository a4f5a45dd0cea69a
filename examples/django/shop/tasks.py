"""The shop's tasks, both ways: the project's decorator, and Django's ``@task`` with the mules backend."""

import logging

from uwsgiconf_mules.runtime import Farm, Mule

from .models import Welcome

try:
    from django.tasks import task  # Django 6
except ImportError:  # Django 4.2 to 5.x: the django-tasks backport
    from django_tasks import task

log = logging.getLogger(__name__)


@Farm("mail").offload()
def welcome(email: str) -> None:
    """Runs in a mule of farm "mail"."""
    Welcome.objects.create(email=email, via="decorator", mule=Mule.get_current_id())
    log.info("welcomed %s", email)


@task(queue_name="mail")
def welcome_task(email: str) -> None:
    """``welcome_task.enqueue(email)``: runs in a mule of farm "mail" (the ``TASKS`` backend)."""
    Welcome.objects.create(email=email, via="task", mule=Mule.get_current_id())
    log.info("welcomed %s", email)


@task(queue_name="mail")
def count_welcomes(email: str) -> dict:
    """A task with a return value: ``backend.get_result(id)`` reads it in any worker (a results store
    is declared in uwsgicfg.py)."""
    if not email:
        raise ValueError("no email")
    return {"email": email, "welcomes": Welcome.objects.filter(email=email).count(), "mule": Mule.get_current_id()}


@task(queue_name="mail")
async def welcome_async(email: str) -> None:
    """An ``async def`` task: the mule runs it to completion."""
    await Welcome.objects.acreate(email=email, via="async", mule=Mule.get_current_id())
    log.info("welcomed %s", email)
