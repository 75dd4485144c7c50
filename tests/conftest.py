"""Every test runs with its own config folder, Hugging Face cache and sc2 cache, and never reaches the network."""

from __future__ import annotations

import signal

import pytest


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
    monkeypatch.setenv("HF_HOME", str(home / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(home / "hf" / "hub"))
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # discard port: nothing reaches the real hub
    monkeypatch.setenv("SC2_CACHE_DIR", str(home / "cache"))  # repository indexes, never the user's cache
    for name in (
        "SC2_MODEL",
        "SC2_DEVICE",
        "SC2_DTYPE",
        "SC2_ATTN",
        "SC2_MAX_TOKENS",
        "SC2_PROMPT_BUDGET",
        "SC2_OFFLINE",
    ):
        monkeypatch.delenv(name, raising=False)
