"""``/signup?email=...&via=decorator|task|async``: queues a welcome and answers at once; ``/count?email=``
queues a task with a result and answers its id, ``/result?id=`` reads it (in any worker); ``/ping``."""

import os

from django.http import HttpResponse, JsonResponse

from . import tasks


def signup(request):
    email = request.GET["email"]
    via = request.GET.get("via", "decorator")
    if via == "decorator":
        queued = tasks.welcome(email)
    elif via == "task":
        queued = tasks.welcome_task.enqueue(email).status == "READY"
    else:
        queued = tasks.welcome_async.enqueue(email).status == "READY"
    return JsonResponse({"queued": queued})


def count(request):
    return JsonResponse({"id": tasks.count_welcomes.enqueue(request.GET.get("email", "")).id, "pid": os.getpid()})


def result(request):
    found = tasks.count_welcomes.get_backend().get_result(request.GET["id"])
    return JsonResponse({"status": found.status, "pid": os.getpid(),
                         "value": found.return_value if found.status == "SUCCESSFUL" else None,
                         "errors": [error.exception_class_path for error in found.errors]})


def ping(request):
    return HttpResponse("pong")
