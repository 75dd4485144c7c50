"""Every test runs with its own config folder, Hugging Face cache, sc2 cache and server runtime folder, with none of the
user's SC2_* settings and no llama.cpp, and never reaches the network."""

from __future__ import annotations

import signal

import pytest

from sc2cli.settings import ENV_PREFIX, KEYS

# What a user's shell may set that would change what the tests run (a setting, a token, tracebacks).
USER_VARIABLES = [ENV_PREFIX + key.upper() for key in KEYS] + [
    "SC2_SERVER_TOKEN",
    "SC2_CLIENT_ID",
    "SC2_DEBUG",
    "SC2_KERNELS",  # a forced kernel path
    "SC2_ENGINE_TOKEN",
]


def pytest_configure(config):
    """Started from a script's background job, pytest inherits SIGINT ignored, and so would every sc2 it
    starts (ignored signals survive exec): the Ctrl-C tests need the disposition a terminal gives. A
    handled signal resets to the default in a child, where Python turns it into KeyboardInterrupt."""
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(autouse=True)
def isolated_environment(tmp_path_factory, monkeypatch):
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("SC2_CONFIG_DIR", str(home / "config"))
    monkeypatch.setenv("SC2_CACHE_DIR", str(home / "cache"))  # kernel measurements, packed weights
    monkeypatch.setenv("HF_HOME", str(home / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(home / "hf" / "hub"))
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # discard port: nothing reaches the real hub
    monkeypatch.setenv("SC2_CACHE_DIR", str(home / "cache"))  # repository indexes, never the user's cache
    monkeypatch.setenv("SC2_RUNTIME_DIR", str(home / "run"))  # a warm server of the user's is never used
    for name in USER_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(
        "SC2_LLAMA_CPP", "none"
    )  # a llama.cpp on the user's PATH is never run by the bench tests
