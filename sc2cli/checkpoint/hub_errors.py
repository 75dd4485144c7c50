"""huggingface_hub's exceptions as one-line errors that say what to do (gated, private, missing, offline,
unreachable, rate-limited, a full disk)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ..errors import InputError, Sc2Error
from .names import download_command


def network_errors() -> tuple[type[BaseException], ...]:
    """Transport errors of the HTTP library this huggingface_hub uses: httpx2 (2.x), httpx (1.x), requests."""
    names = {
        "httpx2": ("TransportError",),
        "httpx": ("TransportError",),
        "requests": ("ConnectionError", "Timeout"),
    }
    found = []
    for module_name, classes in names.items():
        module = sys.modules.get(module_name)
        found += [getattr(module, c) for c in classes if module is not None and hasattr(module, c)]
    return tuple(found)


def _has_token() -> bool:
    try:
        from huggingface_hub import get_token

        return get_token() is not None
    except Exception:
        return False


def _login_hint() -> str:
    return "log in with `hf auth login` (or `huggingface-cli login`) or set HF_TOKEN"


def endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


def _not_found(repo_id: str) -> Sc2Error:
    if _has_token():
        return InputError(f"{repo_id}: no such model on the hub, or your token cannot see it; check the name")
    return InputError(
        f"{repo_id}: no such model on the hub; check the name, or if it is private, {_login_hint()}"
    )


def _gated(repo_id: str) -> Sc2Error:
    page = f"{endpoint()}/{repo_id}"
    if _has_token():
        return Sc2Error(f"{repo_id} is gated and your account has no access yet; request it at {page}")
    return Sc2Error(f"{repo_id} is gated: accept its terms at {page}, then {_login_hint()}")


def _unreachable(repo_id: str, error: BaseException) -> Sc2Error:
    reason = str(error).splitlines()[0] if str(error) else type(error).__name__
    return Sc2Error(
        f"cannot reach the hub at {endpoint()} to fetch {repo_id} ({reason}); check the network connection "
        "(or HF_ENDPOINT), or use a model already in the cache"
    )


def _http_error(repo_id: str, error: Any) -> Sc2Error:
    status = error.response.status_code if getattr(error, "response", None) is not None else None
    if status == 401:
        if "invalid credentials" in str(error).lower():
            return Sc2Error(f"the hub rejected your token for {repo_id}; {_login_hint()} again")
        return _not_found(repo_id)
    if status == 403:
        return Sc2Error(f"{repo_id}: access forbidden; your token lacks read access to it ({_login_hint()})")
    if status == 404:
        return _not_found(repo_id)
    if status == 429:
        return Sc2Error(
            f"the hub is rate-limiting downloads of {repo_id}; wait a minute and run the command again"
        )
    return Sc2Error(f"the hub answered HTTP {status or '(no status)'} for {repo_id}; try again later")


@contextmanager
def hub_errors(repo_id: str, name: str, revision: str | None) -> Iterator[None]:
    """Turn huggingface_hub's exceptions into one-line Sc2Errors that say what to do."""
    try:
        yield
    except Exception as e:
        error = translate(e, repo_id, name, revision)
        if error is None:
            raise
        raise error from None


def translate(error: BaseException, repo_id: str, name: str, revision: str | None) -> Sc2Error | None:
    """The Sc2Error for a huggingface_hub failure, or None for one we do not know (a bug: keep the traceback)."""
    from huggingface_hub import errors as hf

    if isinstance(error, hf.GatedRepoError):
        return _gated(repo_id)
    if isinstance(error, hf.RevisionNotFoundError):
        return InputError(f"{repo_id} has no revision {revision!r} (expected a branch, tag or commit)")
    if isinstance(error, hf.RepositoryNotFoundError):
        return _not_found(repo_id)
    if isinstance(error, hf.OfflineModeIsEnabled):
        return Sc2Error(f"cannot download {repo_id}: offline mode is on (HF_HUB_OFFLINE); unset it and retry")
    if isinstance(error, hf.HfHubHTTPError):
        return _http_error(repo_id, error)
    if isinstance(error, (hf.LocalEntryNotFoundError, ValueError)) and error.__cause__ is not None:
        return translate(error.__cause__, repo_id, name, revision)  # a failed request, wrapped
    if isinstance(error, (hf.LocalEntryNotFoundError, *network_errors())):
        return _unreachable(repo_id, error)
    if isinstance(error, OSError):  # the size check after retries, a full disk, an unwritable cache
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        return Sc2Error(
            f"download of {repo_id} failed: {reason}; run `{download_command(name, revision)}` again"
        )
    return None
