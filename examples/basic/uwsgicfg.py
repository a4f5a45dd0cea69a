"""Mules and farms of the basic example.

Compile with ``uwsgiconf compile > app.ini`` (or ``uwsgiconf-mules compile --format yaml``).
"""

from uwsgiconf_mules import Section

section = Section()
section.workers.set_mules_params(
    # Mules 1-3 are dispatch mules (they run offloaded calls); mule 4 runs our own script.
    mules=[None, None, None, "inbox.py"],
    # Farm "images": any one of mules 1 and 2 takes each call.
    farms=[section.workers.mule_farm("images", [1, 2])],
    harakiri_timeout=60,
)

uwsgi_configuration = section.as_configuration()
