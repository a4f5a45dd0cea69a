"""Entry script of dispatch mules: ``mule = <path of this file>``; see :mod:`uwsgiconf_mules.mule.startup`.

uWSGI compiles it in each mule (a mule writes the pages of what it allocates): keep it short.
"""

import gc

if __name__ == "__main__":  # pragma: no cover - a uWSGI mule, forked from the master
    gc.freeze()  # first: a collection now would write in every page of the master's objects

from uwsgiconf_mules.mule.loop import mule_loop
from uwsgiconf_mules.mule.startup import frozen, in_master  # from a module: no import machinery in Python

if __name__ == "__main__":  # pragma: no cover - runs inside a uWSGI mule
    frozen()
    mule_loop()
else:  # the config's shared-import: in the master, before the fork
    in_master()
