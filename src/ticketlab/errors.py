"""The one exception type that reaches users as a one-line message."""


class UserError(Exception):
    """Bad input from the user: the CLI prints `ticketlab: error: <message>` and exits with code 2.

    The message says what was wrong and what is accepted, on one line.
    """


def unknown_name(kind: str, name: str, valid) -> UserError:
    """The standard error for a name that is not in a registry; lists the valid names."""
    return UserError(f"unknown {kind} {name!r}; valid: {', '.join(sorted(valid))}")


class Fault(Exception):
    """A fault of the machine or its file system, not of the command (no permission, a read-only file system,
    a full disk, ...): the CLI prints `ticketlab: error: <message>` and exits with code 3.

    The message names the path and what to do, on one line."""


# what to do about an OSError on one of the user's paths, by errno name (the rest: ADVICE_DEFAULT)
ADVICE = {
    "ENOSPC": "the disk is full: free some space or choose another --out, then run the same command again to resume",
    "EDQUOT": "the disk quota is used up: free some space or choose another --out, then run the same command again to resume",
    "EFBIG": "the file is larger than this file system allows: choose another --out",
    "EROFS": "the file system is read-only: choose another --out",
    "EACCES": "no permission: make it writable (chmod u+w) or choose another --out",
    "EPERM": "no permission: make it writable (chmod u+w) or choose another --out",
    "ENOTDIR": "a part of this path is a file, not a folder: choose another path",
    "EISDIR": "this is a folder, a file was expected: choose another path",
    "EEXIST": "something of that name is in the way: move it or choose another path",
    "ENAMETOOLONG": "the path is too long: choose a shorter --out",
    "ENOLCK": "this file system does not support file locks (needed for one writer per run folder): choose another --out",
    "EIO": "the disk reported an input/output error: check the machine's disk, then run the same command again to resume",
}
ADVICE_DEFAULT = "check the path and the machine, then run the same command again to resume"


def os_fault(e: OSError, path=None) -> Fault:
    """A one-line Fault for an OSError on `path` (default: the error's own file name)."""
    import errno
    import os

    name = errno.errorcode.get(e.errno or 0, "")
    where = path if path is not None else e.filename
    reason = e.strerror or (os.strerror(e.errno) if e.errno else str(e) or type(e).__name__)
    head = f"{where}: " if where is not None else ""
    return Fault(f"{head}{reason}{f' ({name})' if name else ''}; {ADVICE.get(name, ADVICE_DEFAULT)}")
