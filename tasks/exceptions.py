"""Every exception mqsite raises, in one place, so views, commands and the
admin import them without reaching into the layers that raise them."""


class ForcedStop(SystemExit):
    """The second stop signal. Its own class so the worker, which treats a
    SystemExit raised by task code as that task's failure, lets it through."""
