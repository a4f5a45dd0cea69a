"""URLs of the Django example."""

from django.urls import path
from shop import views

urlpatterns = [
    path("signup", views.signup),
    path("count", views.count),
    path("result", views.result),
    path("ping", views.ping),
]
