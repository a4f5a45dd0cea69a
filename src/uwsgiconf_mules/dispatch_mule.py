"""Entry script of dispatch mules: ``mule = <path of this file>``.

The builders declare every dispatch mule with this file's path. uWSGI runs a ``.py`` mule as
``__main__`` -- also under ``--lazy-apps``, where a ``package.module:callable`` mule crashes
uWSGI 2.0.x (its Python loaders are not set up in mules then). Imported under its own name
(the config's ``shared-import``, in the master before the fork, when there are dispatch mules) it
only loads the loop, so that a mule forked from the master imports nothing more. Run as the mule's
script, it first moves every object the master made to the collector's permanent generation
(``gc.freeze()``): the mule's collections then never write to the pages of those objects, which stay
shared with the master instead of being copied into the mule (benchmarks/README.md). Imported in the
master, it also has a mule whose first collection comes before that freeze it first
(:func:`uwsgiconf_mules.mule.startup.freeze_at_first_collection`).
"""

import gc

if __name__ == "__main__":  # pragma: no cover - a uWSGI mule, forked from the master
    gc.freeze()  # before anything allocates: a collection now would copy every page of the master's objects

from uwsgiconf_mules.mule import startup as _startup
from uwsgiconf_mules.mule.loop import mule_loop

if __name__ == "__main__":  # pragma: no cover - a uWSGI mule, forked from the master
    _startup.frozen()
else:  # imported in the master (the config's shared-import), before the fork
    _startup.freeze_at_first_collection()

if __name__ == "__main__":  # pragma: no cover - runs inside a uWSGI mule
    mule_loop()
