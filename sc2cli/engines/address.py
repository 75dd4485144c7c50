"""Where an engine listens and which protocol it speaks, from one URL: the protocol is in the scheme.

- `openai+http(s)://HOST:PORT/v1`: the OpenAI-compatible completions API (vLLM, TGI, llama.cpp's server);
- `llama+http(s)://HOST:PORT`: llama.cpp's native `POST /completion`.

Query parameters tune the client: `connect_timeout` and `token_timeout` (seconds; the second bounds the
wait for each streamed token, the first one included), `heal_top` (how many most likely first tokens token
healing asks for). Credentials never go in the URL: they come from `--engine-token` / SC2_ENGINE_TOKEN.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal
from urllib.parse import parse_qsl, urlsplit

from ..errors import InputError

Protocol = Literal["openai", "llama"]
PROTOCOLS: tuple[Protocol, ...] = ("openai", "llama")
CONNECT_TIMEOUT_S = 10.0
TOKEN_TIMEOUT_S = 60.0
HEAL_TOP = 20  # vLLM's default cap on logprobs


@dataclass(frozen=True)
class EngineAddress:
    protocol: Protocol
    tls: bool
    host: str
    port: int
    path: str  # the API's base path, without a trailing slash ("/v1" for openai, "" for llama)
    connect_timeout: float = CONNECT_TIMEOUT_S
    token_timeout: float = TOKEN_TIMEOUT_S
    heal_top: int = HEAL_TOP

    @property
    def root(self) -> str:
        """The server's own base path: vLLM and llama.cpp serve /tokenize beside /v1, not under it."""
        return self.path.removesuffix("/v1")

    def __str__(self) -> str:
        scheme = f"{self.protocol}+{'https' if self.tls else 'http'}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}{self.path}"


def parse_engine_url(url: str) -> EngineAddress:
    """An `--engine` value as an address; a wrong one is an InputError saying what is expected."""
    expected = "use openai+http://HOST:PORT/v1 or llama+http://HOST:PORT (https too)"
    parts = urlsplit(url.strip())
    protocol, _, transport = parts.scheme.partition("+")
    if protocol not in PROTOCOLS or transport not in ("http", "https") or not parts.hostname:
        raise InputError(f"--engine {_shown(url)!r}: {expected}")
    if parts.username or parts.password:
        raise InputError("--engine: no credentials in the URL; use --engine-token or SC2_ENGINE_TOKEN")
    try:
        port = parts.port or (443 if transport == "https" else 80)
    except ValueError:
        raise InputError(f"--engine {_shown(url)!r}: the port is not a number") from None
    options = _options(dict(parse_qsl(parts.query)))
    path = parts.path.rstrip("/")
    return EngineAddress(protocol, transport == "https", parts.hostname, port, path, **options)  # type: ignore[arg-type]


def _options(query: dict[str, str]) -> dict[str, float | int]:
    kinds = {"connect_timeout": float, "token_timeout": float, "heal_top": int}
    unknown = sorted(set(query) - set(kinds))
    if unknown:
        raise InputError(f"--engine: unknown parameter {unknown[0]!r} (known: {', '.join(kinds)})")
    options: dict[str, float | int] = {}
    for name, value in query.items():
        try:
            options[name] = kinds[name](value)
        except ValueError:
            raise InputError(f"--engine: {name} must be a number, got {value!r}") from None
        if options[name] <= 0:
            raise InputError(f"--engine: {name} must be > 0, got {value!r}")
    return options


def _shown(url: str) -> str:
    """The URL without anything that could be a credential (user:password@)."""
    parts = urlsplit(url.strip())
    return parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl() if "@" in parts.netloc else url
