"""The one exception type that means "the user gave us something wrong"."""


class UserError(Exception):
    """Bad input (config, data, model, CLI). The CLI prints it as one line and exits with code 2."""
