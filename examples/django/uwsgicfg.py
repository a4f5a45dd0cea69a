"""uWSGI config of the Django example: farm "mail" of two dispatch mules runs the shop's tasks.

Compile with ``uwsgiconf compile > site.ini`` and run
``uwsgi --ini site.ini --http-socket 127.0.0.1:8000 --module mysite.wsgi:application``
(add ``--lazy-apps`` to load the app in each worker instead of the master).
"""

from uwsgiconf_mules import Section

section = Section()
# In the config, not only in mysite/wsgi.py: under --lazy-apps mules never run the WSGI module,
# and dispatch mules call django.setup() when this variable is set.
section.env("DJANGO_SETTINGS_MODULE", "mysite.settings")
section.workers.set_mules_params(farms=section.workers.mule_farm("mail", 2))
# The store of the tasks' results (TaskResult.refresh(), backend.get_result(id)).
section.workers.set_mules_params(results=True)

uwsgi_configuration = section.as_configuration()
