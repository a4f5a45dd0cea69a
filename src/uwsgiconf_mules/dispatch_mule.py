"""Entry script of dispatch mules: ``mule = <path of this file>``; see :mod:`uwsgiconf_mules.mule.startup`.

uWSGI compiles it in each mule (a mule writes the pages of what it allocates): keep it short.
"""

import gc

if __name__ == "__main__":  # pragma: no cover - a uWSGI mule, forked from the master
    gc.freeze()  # first: a collection now would write in every page of the master's objects

from uwsgiconf_mules.mule import startup as _startup
from uwsgiconf_mules.mule.loop import mule_loop

if __name__ == "__main__":  # pragma: no cover - runs inside a uWSGI mule
    _startup.frozen()
    mule_loop()
else:  # the config's shared-import: in the master, before the fork
    _startup.in_master()
