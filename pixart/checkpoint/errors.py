class CheckpointError(ValueError):
    """A file or folder that cannot be loaded as asked; the message names it and says what to do."""
