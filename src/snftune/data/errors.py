"""The one exception type of the data layer, and the warning used by ``on_bad_image="skip"``."""


class DataError(ValueError):
    """Data on disk does not match what a reader expects.

    Messages say what was expected, what was found, and what to do about it.
    """


class DataWarning(UserWarning):
    """Something was skipped on request (``on_bad_image="skip"``); the message carries the count."""
