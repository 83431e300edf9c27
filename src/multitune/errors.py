"""The one exception type a user should ever see, and how it is shown.

Anything the user can fix (a config key, a file, a row, a label) is raised as `UserError`; the command
line prints its message and exits non-zero without a traceback. Anything else is a bug in multitune and
keeps its traceback.
"""

from __future__ import annotations

from pathlib import Path


class UserError(Exception):
    """A problem in the user's config, data or environment, with where it is and how to fix it.

    `what` says what is wrong, `where` points at the file / line / row / key, `fix` says what to do.
    """

    def __init__(self, what: str, *, where: str | None = None, fix: str | None = None):
        self.what = what
        self.where = where
        self.fix = fix
        super().__init__(self.render())

    def render(self) -> str:
        lines = [self.what if not self.where else f"{self.where}: {self.what}"]
        if self.fix:
            lines.append(f"  fix: {self.fix}")
        return "\n".join(lines)


class DamagedFile(UserError):
    """A file that multitune (or a library it uses) wrote whole but that is now cut short, empty or not what
    its name says: what an interrupted copy or sync leaves behind. `path` names it, `reason` says what is
    wrong with it; the message says it is damaged or incomplete, and `fix` (by default: copy it again)
    what to do."""

    def __init__(self, path: str | Path, reason: str, *, fix: str | None = None):
        self.path, self.reason = Path(path), reason
        super().__init__(f"damaged or incomplete file: {reason}", where=str(path),
                         fix=fix or "copy it again from where it was written (an interrupted copy or sync leaves "
                                    "files cut short)")

    def with_fix(self, fix: str) -> DamagedFile:
        """The same problem with the fix that fits where the file was found."""
        return DamagedFile(self.path, self.reason, fix=fix)


# Exit statuses the command line uses, so scripts and launchers can tell them apart.
EXIT_USER_ERROR = 2
EXIT_PREEMPTED = 75  # EX_TEMPFAIL: stopped on a signal after saving a checkpoint; run again to resume
EXIT_ABORTED = 130


def hub_error(e: BaseException, what: str, repo_id: str) -> UserError:
    """Turn a Hugging Face Hub failure into a message that says what to do.

    `what` is "model" or "dataset". Looks through the exception's causes for the Hub's own error types:
    a gated repository (accept the licence, log in), a missing or private one, a missing revision, or
    no network and nothing in the local cache.
    """
    from huggingface_hub import errors as hf

    causes = list(_causes(e))
    url = f"https://huggingface.co/{'datasets/' if what == 'dataset' else ''}{repo_id}"
    login = "log in with `huggingface-cli login` or set HF_TOKEN"
    if _any(causes, hf.GatedRepoError):  # before RepositoryNotFoundError: it is one
        return UserError(f"{what} {repo_id!r} is gated: its licence must be accepted before download",
                         fix=f"accept the terms at {url} with your account, then {login}")
    if _any(causes, hf.RepositoryNotFoundError):
        return UserError(f"{what} {repo_id!r} was not found on the Hub, or it is private",
                         fix=f"check the id; if it is private, {login} with an account that can read it")
    if _any(causes, hf.RevisionNotFoundError):
        return UserError(f"{what} {repo_id!r} has no such revision", fix="check the branch, tag or commit")
    if _any(causes, hf.LocalEntryNotFoundError) or any(no_connection(c) for c in causes):
        return UserError(
            f"could not reach the Hugging Face Hub for {what} {repo_id!r}, and it is not in the local cache",
            fix="check the network (or unset HF_HUB_OFFLINE), or give a local path instead of a Hub id",
        )
    root = causes[-1]
    return UserError(f"could not load {what} {repo_id!r}: {type(root).__name__}: {root}")


def no_connection(e: BaseException) -> bool:
    """No answer from the Hub: offline mode, a refused or dropped connection, a host name that does not
    resolve, a timeout, or any transport error of the HTTP library huggingface_hub uses."""
    import socket

    from huggingface_hub import errors as hf

    if isinstance(e, ConnectionError | socket.gaierror | TimeoutError):  # OfflineModeIsEnabled is one
        return True
    transport = getattr(hf, "HTTPError", None)  # that library's base error; statuses are HfHubHTTPError
    return transport is not None and isinstance(e, transport) and not isinstance(e, hf.HfHubHTTPError)


def _any(causes: list[BaseException], kind: type[BaseException]) -> bool:
    return any(isinstance(c, kind) for c in causes)


def _causes(e: BaseException):
    seen: set[int] = set()
    c: BaseException | None = e
    while c is not None and id(c) not in seen:
        seen.add(id(c))
        yield c
        c = c.__cause__ or c.__context__
