"""The WSGI entry point: ``gunicorn wsgi:app`` or ``flask --app wsgi <command>`` (``ledger <command>`` too).

A configuration error is one paragraph on stderr and exit status 78 for ``flask --app wsgi``. Under gunicorn it
is raised as it is: ``gunicorn.conf.py``'s ``on_starting`` has already refused it before any port was bound,
and a gunicorn started without that file reports it as ``Error: ...`` and stops rather than respawn workers.
"""

import sys

from config import ConfigurationError, exit_with
from ledger import create_app

try:
    app = create_app()
except ConfigurationError as error:
    if "gunicorn" in sys.modules:
        raise
    exit_with(error)
