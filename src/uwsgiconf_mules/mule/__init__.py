"""What runs in a dispatch mule only: its loop (:mod:`.loop`), its queues (:mod:`.queues`) and its
start-up (:mod:`.startup`). The entry script uWSGI runs is ``uwsgiconf_mules/dispatch_mule.py``."""
