"""Integrations (L4), each importing the layers below it and never another integration: the Django
task backend (:mod:`.django`), RQ (:mod:`.rq`: the sender, the jobs, the worker's process) and the
test modes with their pytest plugin (:mod:`.testing`). Their public paths are the face modules
``uwsgiconf_mules.django``, ``uwsgiconf_mules.remote``, ``uwsgiconf_mules.testing`` and
``uwsgiconf_mules._pytest_plugin`` (see docs/architecture.md)."""
