"""The one model of the example: a row per welcome, written by a task in a mule."""

from django.db import models


class Welcome(models.Model):
    """A welcome sent: to whom, by which kind of task, from which mule."""

    email = models.CharField(max_length=200)
    via = models.CharField(max_length=20)
    mule = models.IntegerField()
