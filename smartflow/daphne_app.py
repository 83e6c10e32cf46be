"""daphne as an installed app, without importing its server at start-up.

It is listed for its ASGI `runserver` (ahead of staticfiles' WSGI one). daphne's own AppConfig
imports daphne.server, and with it Twisted and Autobahn: ~19 MiB and ~0.5 s in every process, though
`manage.py serve` runs uvicorn unless told `--server daphne`. Its runserver imports them when run."""
from django.apps import AppConfig


class DaphneConfig(AppConfig):
    name = "daphne"
    verbose_name = "Daphne"
