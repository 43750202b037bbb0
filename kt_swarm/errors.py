"""The one exception type that means "the user gave us something wrong"."""


class UserError(Exception):
    """Bad input (config, data, model, CLI). The CLI prints it as one line and exits with code 2."""


def printable(text: str) -> str:
    """`text` as one printable line: control characters (line breaks of every kind included, which
    a file name can hold) written as escapes."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (or its type): third-party errors in one line."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def one_line(e: BaseException, limit: int = 300) -> str:
    """A whole multi-line message on one line, capped: for errors whose first line says nothing
    (load_state_dict's is 'Error(s) in loading state_dict')."""
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


class ParticipantLost(UserError):
    """A participant's process died (not an error in its code): the run may restart it and go on."""

    def __init__(self, message: str, index: int):
        super().__init__(message)
        self.index = index

    def __reduce__(self):  # it crosses from actors to the driver: keep the index
        return type(self), (str(self), self.index)
