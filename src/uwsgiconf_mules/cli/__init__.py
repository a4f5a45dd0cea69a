"""``uwsgiconf-mules``: compile uwsgiconf modules to ini or uWSGI YAML, and check declarations.

One module per command (:mod:`.compile`, :mod:`.check`, :mod:`.record`, :mod:`.worker`,
:mod:`.top`, :mod:`.spool`), each thin over the layer that owns the data; :mod:`.common` holds the
command group and what the commands share.

Errors follow uwsgiconf's command: a configuration error is one red line on stderr and exit
code 1; a usage error (unknown option, missing file) exits 2.
"""

from __future__ import annotations

from . import check as _check, compile as _compile, record as _record, spool as _spool, top as _top, worker as _worker
from .check import summary, uwsgi_summary
from .common import cli

__all__ = ["main", "summary", "uwsgi_summary"]

_COMMANDS = (_check, _compile, _record, _spool, _top, _worker)  # each registers its command with the group


def main() -> None:
    """Entry point of the ``uwsgiconf-mules`` command."""
    cli()
