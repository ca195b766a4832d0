"""Secrets: what must never reach the evidence store, and what stands in for them.

A campaign meets secrets three ways: as a flag's value on a server command line
(`--api-key K`, `--hf-token=T`, `-hft T`), as the credentials of a URL
(`http://user:pw@host`), and as the value of an environment variable that holds
a key (the config's `api_key_env`, `LLAMA_API_KEY`, `HF_TOKEN`); llama-server's
keys also as a comma-separated list (`--api-key A,B`) and in a key file
(`--api-key-file F`, `LLAMA_ARG_API_KEY_FILE`), which is read to learn them.

The evidence writer applies what follows to every row before it is stored, the
collector to every line it prints while a campaign runs, and to the server and
device logs it keeps on disk once their processes have stopped.

Where the structure shows, it is enough: `redact_argv` replaces a secret flag's
value (the flag stays, so the command line still reads right) and `redact_url` a
URL's credentials. Elsewhere (a server log that prints its arguments or its
environment, an output or a 401 body that echoes the key) only the value itself
is recognisable, so `Secrets.find` collects the values from everything a
campaign was configured with, and `Secrets` replaces them in any text.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any
from urllib.parse import unquote

REDACTED = "(redacted)"

# A secret this short is replaced in argv values but not in free text: "ab" or
# "42" occurs by chance in outputs, logs and numbers, and replacing every
# occurrence would destroy the evidence without hiding anything worth hiding.
MIN_TEXT_SECRET = 4

# A flag or variable name holds a secret when one of its words ends with one of
# these (`--hf-token`, `--apikey`, `LLAMA_API_KEY`); whole words, so that
# `--image-max-tokens` or `TOKENIZERS_PARALLELISM` are not taken for one.
_SECRET_WORDS = ("token", "key", "secret", "password", "passwd")
# ... unless its last word says the value is where the secret lives, not the
# secret (`--api-key-file`, `--ssl-key-file`): that path is kept.
_LOCATION_WORDS = ("file", "path", "dir")
# Secret flags whatever the rule above says (llama-server's short `-hft`).
_SECRET_FLAGS = frozenset({"--api-key", "--hf-token", "-hft"})
# llama-server's API keys (flag and variable alike): a comma-separated list, each
# key accepted alone, so each can turn up alone in a log or a 401 body.
_KEY_LISTS = frozenset({"--api-key", "LLAMA_API_KEY"})
# ... or a file of them, one a line, `#` starting a comment (llama.cpp common/arg.cpp).
# Its keys are secrets the command line never shows, so the file is read (only to
# learn what to hide; its path is kept as given).
_KEY_FILES = frozenset({"--api-key-file", "LLAMA_ARG_API_KEY_FILE"})
_KEY_FILE_MAX_BYTES = 1 << 20

_URL_CREDENTIALS = re.compile(r"\b([a-z][a-z0-9+.-]*://)([^\s/?#@]+)@", re.IGNORECASE)
_ENV_NAME = re.compile(r"[A-Z][A-Z0-9_]*")
_TEXT_FLAG = re.compile(r"(?<!\S)(-{1,2}[A-Za-z][\w-]*)(?:=|\s+)(?!--)(\S+)")


def secret_name(name: str) -> bool:
    """Whether a flag (`--hf-token`) or environment variable (`HF_TOKEN`) holds a secret."""
    if name in _SECRET_FLAGS:
        return True
    words = [w for w in re.split(r"[-_]+", name.lower()) if w]
    if not words or words[-1] in _LOCATION_WORDS:
        return False
    return any(w.endswith(_SECRET_WORDS) for w in words)


def _is_flag(arg: str) -> bool:
    return arg.startswith("-") and len(arg) > 1 and not arg[1:2].isdigit()


def _flag_value(flag: str, value: str, read_files: bool) -> tuple[str, list[str]]:
    """What stands stored for a secret or key-file flag's value, and the secrets in it."""
    if flag in _KEY_FILES:
        return value, key_file_secrets(value) if read_files else []
    return REDACTED, [value, *value.split(",")] if flag in _KEY_LISTS else [value]


def key_file_secrets(path: str) -> list[str]:
    """The keys in an `--api-key-file` as llama-server reads them (none if unreadable:
    the server then fails to start and says so itself)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as keys:
            text = keys.read(_KEY_FILE_MAX_BYTES)
    except OSError:
        return []
    found = []
    for line in text.split("\n"):
        if line and not line.startswith("#"):
            found += [line, line.rstrip("\r")]  # a CRLF file: the server keeps the CR
    return found


def launched_server_key(argv: Sequence[str], env: Mapping[str, str]) -> str | None:
    """The API key a server launched with `argv` and `env` will require, as llama-server
    reads its settings (`--api-key A,B` / LLAMA_API_KEY: any key of the list;
    `--api-key-file F` / LLAMA_ARG_API_KEY_FILE: any key in the file): the first one,
    for the tool to send. None when the command sets no key."""
    keys: list[str] = []
    for i, arg in enumerate(argv):
        flag, eq, value = arg.partition("=")
        if flag not in ("--api-key", "--api-key-file"):
            continue
        value = value if eq else (argv[i + 1] if i + 1 < len(argv) else "")
        keys = value.split(",") if flag == "--api-key" else key_file_secrets(value)[::2]
        break
    else:
        if env.get("LLAMA_API_KEY"):
            keys = env["LLAMA_API_KEY"].split(",")
        elif env.get("LLAMA_ARG_API_KEY_FILE"):
            keys = key_file_secrets(env["LLAMA_ARG_API_KEY_FILE"])[::2]
    return next((k.strip() for k in keys if k.strip()), None)


def _scan_argv(argv: Sequence[str], read_files: bool = False) -> tuple[list[str], list[str]]:
    """`argv` with secret flag values and URL credentials replaced, and those secrets
    (`read_files`: with the keys of any key file it names)."""
    out: list[str] = []
    found: list[str] = []
    pending: str | None = None  # a flag whose value is the next argument
    for arg in argv:
        # A value that looks like the next flag is one: the flag before had none.
        if pending is not None and not arg.startswith("--"):
            stored, secrets = _flag_value(pending, arg, read_files)
            out.append(stored)
            found += secrets
            pending = None
            continue
        pending = None
        flag, eq, value = arg.partition("=")
        if _is_flag(flag) and (flag in _KEY_FILES or secret_name(flag)):
            if eq:
                stored, secrets = _flag_value(flag, value, read_files)
                out.append(f"{flag}={stored}")
                found += secrets
            else:
                out.append(arg)
                pending = flag
            continue
        if any(c.isspace() for c in arg):
            # One argument that is itself a command line (`sh -c "server --api-key K"`).
            arg, inner = _scan_command_text(arg, read_files)
            found += inner
        found += url_secrets(arg)
        out.append(redact_url(arg))
    return out, found


def _scan_command_text(text: str, read_files: bool = False) -> tuple[str, list[str]]:
    found: list[str] = []

    def replace(match: re.Match[str]) -> str:
        flag = match.group(1)
        if flag not in _KEY_FILES and not secret_name(flag):
            return match.group(0)
        stored, secrets = _flag_value(flag, match.group(2), read_files)
        found.extend(secrets)
        start, end = match.span(2)
        whole = match.group(0)
        offset = match.start(0)
        return whole[: start - offset] + stored + whole[end - offset :]

    return _TEXT_FLAG.sub(replace, text), found


def redact_argv(argv: Sequence[str]) -> list[str]:
    """`argv` as it may be stored: the value of every secret flag replaced, in
    `--flag value` and `--flag=value` form alike, and every URL's credentials."""
    return _scan_argv(argv)[0]


def redact_url(text: str) -> str:
    """`text` with the credentials of every URL in it replaced
    (`http://user:pw@host` -> `http://(redacted)@host`)."""
    if "@" not in text:
        return text
    return _URL_CREDENTIALS.sub(lambda m: f"{m.group(1)}{REDACTED}@", text)


def url_secrets(text: str) -> list[str]:
    """The secret of every URL with credentials in `text`: its password, or its
    user where there is none (`https://TOKEN@host`); also percent-decoded."""
    if "@" not in text:
        return []
    found = []
    for match in _URL_CREDENTIALS.finditer(text):
        user, _, password = match.group(2).partition(":")
        secret = password or user
        found += [secret, unquote(secret)]
    return found


class Secrets:
    """Known secret values, replaced by REDACTED wherever they occur in text.

    One compiled alternation, longest value first, so that one pass over a text
    finds them all; with no value long enough for text (see MIN_TEXT_SECRET)
    every method returns its input untouched, at the cost of one test.
    """

    __slots__ = ("_in_text", "_pattern", "values")

    def __init__(self, values: Iterable[str] = ()) -> None:
        self.values = frozenset(v for v in values if v and v.strip())
        self._in_text = sorted(
            (v for v in self.values if len(v) >= MIN_TEXT_SECRET), key=lambda v: (-len(v), v)
        )
        self._pattern = (
            re.compile("|".join(map(re.escape, self._in_text))) if self._in_text else None
        )

    @classmethod
    def find(cls, *documents: Any, values: Iterable[str | None] = ()) -> Secrets:
        """The secrets in `documents` (a config as plain data, a command line, an
        environment): every secret flag value of every list of strings, every URL's
        credentials, every value of a mapping key named like a secret variable
        (`HF_TOKEN`), each key of an API key list and of a key file it names
        (`--api-key A,B`, `--api-key-file F`, read here); plus `values` as they are
        (the API key; None is skipped)."""
        found = [v for v in values if v is not None]
        for document in documents:
            found += _found(document)
        return cls(found)

    def __bool__(self) -> bool:
        return self._pattern is not None

    def __or__(self, other: Secrets) -> Secrets:
        return Secrets(self.values | other.values)

    def __repr__(self) -> str:
        return f"Secrets({len(self.values)} values)"  # never the values themselves

    def found_in(self, text: str) -> bool:
        """Whether any known secret (long enough for text) occurs in `text`."""
        return self._pattern is not None and self._pattern.search(text) is not None

    def text(self, text: str, cut: bool = False) -> str:
        """`text` with every known secret replaced. `cut`: the text was cut short (a
        summary line), so it may end inside a secret; a tail that is the start of one
        (MIN_TEXT_SECRET characters or more) is replaced too."""
        if self._pattern is None:
            return text
        text = self._pattern.sub(REDACTED, text)
        if cut:
            tail = max(
                (
                    n
                    for secret in self._in_text
                    for n in range(MIN_TEXT_SECRET, len(secret))
                    if text.endswith(secret[:n])
                ),
                default=0,
            )
            if tail:
                text = text[:-tail] + REDACTED
        return text

    def value(self, value: Any) -> Any:
        """A JSON-like value with every known secret replaced in its strings (keys too)."""
        if self._pattern is None:
            return value
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, Mapping):
            return {self.value(k): self.value(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [self.value(v) for v in value]
        return value

    def stream(self, pieces: Sequence[str | None]) -> list[str | None]:
        """Pieces of one text (a response's streamed chunks), with every known
        secret replaced as if in the joined text: a secret that arrived split over
        several pieces is caught too. The marker goes in the piece where the secret
        starts; the rest of it is cut from the pieces after, which keep their place
        (and their time), so the pieces still join to the redacted text."""
        if self._pattern is None:
            return list(pieces)
        joined = "".join(p for p in pieces if p)
        spans = [m.span() for m in self._pattern.finditer(joined)]
        if not spans:
            return list(pieces)
        out: list[str | None] = []
        start = 0
        for piece in pieces:
            if not piece:
                out.append(piece)
                continue
            end = start + len(piece)
            out.append(_cut(joined, start, end, spans))
            start = end
        return out


def _cut(joined: str, start: int, end: int, spans: Sequence[tuple[int, int]]) -> str:
    """joined[start:end] with each span replaced: REDACTED where a span begins."""
    parts: list[str] = []
    at = start
    for s, e in spans:
        if e <= start or s >= end:
            continue
        parts.append(joined[at : max(s, start)])
        if s >= start:
            parts.append(REDACTED)
        at = min(e, end)
    parts.append(joined[at:end])
    return "".join(parts)


def _found(document: Any) -> Iterator[str]:
    if isinstance(document, str):
        yield from url_secrets(document)
        yield from _scan_command_text(document, read_files=True)[1]
    elif isinstance(document, Mapping):
        for key, value in document.items():
            named = isinstance(key, str) and _ENV_NAME.fullmatch(key) is not None
            if named and isinstance(value, str) and (key in _KEY_FILES or secret_name(key)):
                yield from _flag_value(key, value, read_files=True)[1]
            yield from _found(value)
    elif isinstance(document, (list, tuple)):
        if all(isinstance(item, str) for item in document):
            yield from _scan_argv(document, read_files=True)[1]
        else:
            for item in document:
                yield from _found(item)
