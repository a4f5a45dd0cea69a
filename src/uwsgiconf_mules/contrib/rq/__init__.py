"""Farms routed to RQ: the sender workers and mules use (:mod:`.sender`, the engine module
``declarations.backends.ENGINES`` names), what runs each job in the RQ worker (:mod:`.jobs`,
public as ``uwsgiconf_mules.remote``) and the worker's process (:mod:`.worker`). Nothing here is
imported until a farm routed to RQ is used."""
