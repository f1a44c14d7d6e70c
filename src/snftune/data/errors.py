"""The one exception type of the data layer, and its one warning type."""


class DataError(ValueError):
    """Data on disk does not match what a reader expects.

    Messages say what was expected, what was found, and what to do about it.
    """


class DataWarning(UserWarning):
    """Data that loads but deserves a word: images skipped on request (``on_bad_image="skip"``) or a
    list that names an image more than once. The message carries the counts."""
