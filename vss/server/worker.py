"""The app of one worker process of `vssnode vss-server --workers N`.

hypercorn starts each worker in a fresh interpreter and loads `vss.server.worker:app`.
The parent process has checked the configuration, printed any warning, and passed
the settings in VSS_SERVER_* variables (`Settings.to_env`); this module only rebuilds
the app from them, with the parent's log level.
"""

from vss.server.cli import app_from_env

app = app_from_env(warn=False)
