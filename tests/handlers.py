"""Channel handlers for the tests, named in MQ_CHANNEL_HANDLERS overrides."""


def explode_on_boom(message):
    """Fail on the message "boom", handle anything else."""
    if message.data == "boom":
        raise RuntimeError(f"handler refused {message.text!r} on {message.channel}")
