"""The one exception of adapter files: ``AdapterError``, shared by the file format and the
base fingerprint check, in a file of its own so that neither has to import the other for it."""


class AdapterError(ValueError):
    """A bad adapter file, config or request; the message names the file and the key."""
