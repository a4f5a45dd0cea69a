"""``/signup?email=...&via=decorator|task|async``: queues a welcome and answers at once; ``/ping``."""

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


def ping(request):
    return HttpResponse("pong")
