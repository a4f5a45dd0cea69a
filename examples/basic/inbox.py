"""A programmed mule (mule 4): consumes plain text messages sent with ``Mule(4).send(...)``."""

from tasks import note

from uwsgiconf_mules.runtime import Mule

while True:
    message = Mule.get_message()  # blocks; uWSGI signals are handled while waiting
    note("inbox", message=message)
