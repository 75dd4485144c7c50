"""Chunks editors send (llama.cpp's `input_extra`): a bounded ring per repository, searched with BM25,
offered again to later requests of a warm server, and scored with the index's chunks in auto context."""

from __future__ import annotations

import http.client
import json
import threading
import uuid
from collections.abc import Iterator

import pytest

from sc2cli.completion.events import Done, Event, Timings, Usage
from sc2cli.completion.prompt import Document, layout, render
from sc2cli.completion.request import CompletionRequest
from sc2cli.repo.context import auto_context, editor_chunks
from sc2cli.repo.recent import RecentChunks, ring_for

from .conftest import make_repo


def _unique() -> str:
    return f"name_{uuid.uuid4().hex[:10]}"  # the global ring is the process's: tests must not meet there


def test_the_ring_keeps_the_newest_chunks_once_each():
    ring = RecentChunks(capacity=3)
    ring.add(Document(f"f{i}.py", f"value_{i} = {i}\n") for i in range(5))
    assert [s.path for s in ring.chunks()] == ["f4.py", "f3.py", "f2.py"]
    ring.add([Document("f2.py", "value_2 = 2\n")])  # seen again: newest, not twice
    assert [s.path for s in ring.chunks()] == ["f2.py", "f4.py", "f3.py"]


def test_the_ring_ranks_by_bm25_and_skips_what_shares_nothing():
    ring = RecentChunks()
    ring.add([Document("a.py", "def parse_header(line):\n    return line\n"),
              Document("b.py", "def parse_header(raw):\n    return parse_header_fields(raw)\n"),
              Document("c.py", "unrelated = 1\n")])  # fmt: skip
    found = ring.search(["parse_header_fields", "raw"], 5)
    assert [s.path for _, s in found] == ["b.py"]
    assert [s.path for _, s in ring.search(["parse_header"], 5, exclude={"b.py"})] == ["a.py"]


def test_a_chunk_sent_once_comes_back_for_a_later_cursor_that_resembles_it():
    name = _unique()
    chunk = Document("geometry.py", f"def {name}(rect):\n    return 2 * (rect.width + rect.height)\n")
    assert editor_chunks(None, "x = 1\n", "", [chunk], 1000) == ()  # nothing seen before
    again = editor_chunks(None, f"def describe(rect):\n    return {name}(", "", [], 1000)
    assert [(d.path, d.text) for d in again] == [(chunk.path, chunk.text)]
    assert again[0].origin.startswith("recent")
    assert editor_chunks(None, f"y = {name}(", "", [chunk], 1000) == ()  # sent now: not twice
    assert editor_chunks(None, f"y = {name}(", "", [], 5) == ()  # no room


def test_auto_context_scores_chunks_editors_sent_with_the_index(tmp_path):
    name = _unique()
    repo = make_repo(tmp_path / "r", {"a.py": "def alpha():\n    return 1\n", "main.py": "x = 1\n"})
    ring_for(repo.resolve()).add([Document("notes.py", f"def {name}(a, b):\n    return a - b\n")])
    chosen = auto_context(repo / "main.py", f"total = {name}(", "", 2000, index_budget_s=None)
    assert [(d.path, d.origin.split(":")[0]) for d in chosen.documents] == [("notes.py", "recent")]


class FakeEngine:
    """What the server needs of an engine; it keeps each prompt's text (control tokens included)."""

    name = "fake"
    default_budget = 4096
    limit = 16384

    def __init__(self) -> None:
        self.prompts: list[str] = []

    def describe(self) -> dict[str, object]:
        return {"model": self.name, "default_budget": self.default_budget}

    def stream(self, request: CompletionRequest, cancelled=None) -> Iterator[Event]:
        self.prompts.append(render(layout(request.task)))
        yield Done("", (), (), "eos", Usage(1, 0, 0), Timings(), model=self.name)


@pytest.fixture
def server():
    from http.server import ThreadingHTTPServer

    from sc2cli.serve.http import Handler
    from sc2cli.serve.service import ServerOptions, Service

    engine = FakeEngine()
    handler = type("Bound", (Handler,), {"service": Service(engine, ServerOptions())})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    yield httpd.server_address[1], engine
    httpd.shutdown()
    httpd.server_close()


def _infill(port: int, body: dict) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("POST", "/infill", json.dumps(body), {"Content-Type": "application/json"})
    status = conn.getresponse().status
    conn.close()
    return status


def test_infill_offers_a_chunk_an_earlier_request_sent(server):
    port, engine = server
    name = _unique()
    text = f"def {name}(rect):\n    return 2 * (rect.width + rect.height)\n"
    first = {"input_prefix": "import os\n", "input_suffix": "", "n_predict": 4,
             "input_extra": [{"filename": "geometry.py", "text": text}]}  # fmt: skip
    assert _infill(port, first) == 200
    second = {
        "input_prefix": f"def describe(rect):\n    return {name}(",
        "input_suffix": "\n",
        "n_predict": 4,
    }
    assert _infill(port, second) == 200
    assert engine.prompts[0].count(text) == 1  # its own chunk, once
    assert f"<file_sep>geometry.py\n{text}" in engine.prompts[1]
    unrelated = {"input_prefix": "import sys\n", "input_suffix": "", "n_predict": 4}
    assert _infill(port, unrelated) == 200 and name not in engine.prompts[2]
