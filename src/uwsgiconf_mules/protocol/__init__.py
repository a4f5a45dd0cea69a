"""What crosses between processes, pure and cheap to import: the signed envelope of a call
(:mod:`.envelope`), the spool of calls kept on disk (:mod:`.spool`) and what a socket can carry
(:mod:`.limits`). Nothing here imports ``uwsgi`` at module level, uwsgiconf or jinja2."""
