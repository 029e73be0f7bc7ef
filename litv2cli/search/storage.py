"""Where a search's studies live: resolving `--storage`, opening it, and naming its failures.

SQLite in the output directory by default, any Optuna RDB URL, or an append-only journal file
(`journal:PATH` or `*.log`) for many workers on a shared filesystem, where SQLite's locking is
unsafe. A URL with a password can come from the environment (`--storage env:NAME`, or
`LITV2_STORAGE`) so that it shows in neither `ps` nor the shell's history, and the password never
reaches a printed line, a log or a recipe (`redact`, `mask_secret`). A database that goes away
mid-search surfaces deep in Optuna, wrapped in its own errors; `lost_storage` tells that from a
bug so that the search ends with one line instead of a traceback, the study kept in the database.
"""

from __future__ import annotations

import json
import os
import random
import re
import time
import warnings
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import optuna

from litv2cli.errors import UserError

STORAGE_ENV = "LITV2_STORAGE"  # the storage URL when --storage is not given
ENV_PREFIX = "env:"  # --storage env:NAME reads the URL from the environment variable NAME
# Errors (lower case) of processes creating or using one database at once, worth another try.
# Any error is retried while a new SQLite file is being created; others are final.
TRANSIENT = ("locked", "busy", "already exists", "unique constraint", "duplicate key", "schema has changed",
             "no longer compatible", "deadlock detected", "could not serialize access")
# scheme://user:password@ as SQLAlchemy parses it: the password runs to the first '@'.
_CREDENTIALS = re.compile(r"([A-Za-z][\w+.-]*://[^:/@]*:)([^@]*)@")


def default_storage_url(output: Path) -> str:
    return f"sqlite:///{Path(output).resolve() / 'search.db'}"


def resolve_storage_url(storage: str | None, output: Path) -> str:
    """The storage URL of a search: `storage` itself, the URL in the environment variable it names
    (`env:NAME`), else `$LITV2_STORAGE`, else SQLite in `output`."""
    if storage is None:
        return os.environ.get(STORAGE_ENV) or default_storage_url(output)
    if not storage.startswith(ENV_PREFIX):
        return storage
    name = storage.removeprefix(ENV_PREFIX)
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise UserError(f"--storage {storage}: give the name of an environment variable that holds the URL "
                        f"(--storage env:{STORAGE_ENV})")
    url = os.environ.get(name, "").strip()
    if not url:
        raise UserError(f"--storage {storage}: the environment variable {name} is not set or empty; export the "
                        "storage URL in it")
    return url


def redact(url: str) -> str:
    """The URL with any password replaced, for logs and recipes' provenance."""
    return _CREDENTIALS.sub(r"\1***@", url)


def mask_secret(text: str, url: str) -> str:
    """`text` with `url`'s password replaced wherever it appears: in a URL, or quoted alone in
    a driver's or SQLAlchemy's message."""
    text = redact(text)
    match = _CREDENTIALS.search(url)
    if match and match.group(2):
        for secret in {match.group(2), unquote(match.group(2))}:
            text = text.replace(secret, "***")
    return text


def open_storage(url: str) -> optuna.storages.BaseStorage:
    """An Optuna storage for `url`: `journal:PATH` or `*.log` -> journal file, else an RDB URL."""
    from optuna.storages import JournalStorage, RDBStorage
    from optuna.storages.journal import JournalFileBackend

    if url.startswith("journal:") or (url.endswith(".log") and "://" not in url):
        path = Path(url.removeprefix("journal:")).expanduser()
        if not path.parent.is_dir():
            raise UserError(f"--storage {url}: directory {path.parent} does not exist")
        _check_journal(path, url)
        try:
            storage = JournalStorage(JournalFileBackend(str(path)))
            storage.get_all_studies()  # replays the log: a damaged one fails here, not mid-search
        except OSError as exc:
            raise UserError(f"cannot open storage {url}: {exc.strerror or exc}") from None
        except Exception as exc:
            raise UserError(f"cannot open storage {url}: not a readable Optuna journal ({_one_line(exc, url)})") \
                from None
        return storage
    if "://" not in url:
        raise UserError(f"--storage {mask_secret(url, 'x://' + url)!r}: give an Optuna storage URL "
                        "(sqlite:///file.db, postgresql+psycopg://...), a journal file (journal:PATH or PATH.log), "
                        "or env:NAME for a URL in an environment variable")
    engine_kwargs: dict[str, Any] = {}
    new_database = False  # a new SQLite file: other processes may be creating its tables right now
    if url.startswith("sqlite"):
        # Several local processes share one SQLite file: wait for its lock instead of failing.
        engine_kwargs["connect_args"] = {"timeout": 300}
        database = Path(url.split(":///", 1)[-1])
        if url.count("/") >= 3 and not database.parent.is_dir():
            raise UserError(f"--storage {url}: directory {database.parent} does not exist")
        new_database = not database.exists() or (database.is_file() and database.stat().st_size == 0)
    else:
        # A server restarted between two trials (or a connection dropped by a firewall while a
        # point was measured) costs a reconnect, not the search.
        engine_kwargs["pool_pre_ping"] = True
    last_error: Exception | None = None
    for attempt in range(5):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return RDBStorage(url, engine_kwargs=engine_kwargs)
        except ImportError as exc:
            raise UserError(f"--storage {redact(url)}: its database driver is not installed "
                            f"({mask_secret(str(exc), url)})") from None
        except Exception as exc:  # sqlalchemy's OperationalError and friends
            last_error = exc
            if not new_database and not any(sign in str(exc).lower() for sign in TRANSIENT):
                break  # not a database, no server, bad credentials: trying again will not help
            time.sleep(0.5 + random.random() * attempt)
    raise UserError(f"cannot open storage {redact(url)}: {_one_line(last_error, url)}")


def lost_storage(exc: BaseException, url: str) -> UserError | None:
    """The one-line error for `exc` if a failing database caused it (anywhere in its chain: Optuna
    wraps the driver's error, and Optuna 5 turns a failure inside its `tell` into an
    UnboundLocalError raised while handling it); None for any other exception."""
    from sqlalchemy.exc import DBAPIError

    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, DBAPIError):
            return UserError(f"lost storage {redact(url)}: {_one_line(cause.orig or cause, url)}; the study is "
                             "kept there: run the same command again once the database is reachable")
        cause = cause.__cause__ or cause.__context__
    return None


def _check_journal(path: Path, url: str) -> None:
    """Refuse a path that is not an Optuna journal before Optuna appends to it: its reader skips a
    first line without a newline, and the next write would then corrupt that file for good."""
    if path.is_dir():
        raise UserError(f"cannot open storage {url}: {path} is a directory, not a journal file")
    if not path.exists() or path.stat().st_size == 0:
        return
    try:
        with path.open("rb") as file:
            head = file.read(1 << 16)
    except OSError as exc:
        raise UserError(f"cannot open storage {url}: {exc.strerror or exc}") from None
    first = head.split(b"\n", 1)[0]
    try:
        record = json.loads(first) if b"\n" in head else None
    except ValueError:
        record = None
    if not isinstance(record, dict) or "op_code" not in record:
        raise UserError(f"cannot open storage {url}: {path} is not an Optuna journal file (its first line is not a "
                        "journal record); left unchanged")


def _one_line(exc: BaseException | None, url: str) -> str:
    """`exc` as one line without the password: SQLAlchemy adds the statement and a link on lines of
    their own, psycopg a hint."""
    if exc is None:
        return "unknown error"
    text = " ".join(str(exc).split("(Background on this error")[0].split()) or "(no message)"
    return mask_secret(f"{type(exc).__name__}: {text[:300]}", url)
