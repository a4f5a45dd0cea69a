"""Entry script of dispatch mules: ``mule = <path of this file>``.

The builders declare every dispatch mule with this file's path. uWSGI runs a ``.py`` mule as
``__main__`` -- also under ``--lazy-apps``, where a ``package.module:callable`` mule crashes
uWSGI 2.0.x (its Python loaders are not set up in mules then). Imported under its own name
(the config's ``shared-import``, in the master before the fork, when there are dispatch mules) it
only loads the loop, so that a mule forked from the master imports nothing more.
"""

from uwsgiconf_mules.mule.loop import mule_loop

if __name__ == "__main__":  # pragma: no cover - runs inside a uWSGI mule
    mule_loop()
