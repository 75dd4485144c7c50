"""A tiny persistent job queue on SQLite, with retries, exponential backoff and a worker loop."""

import json
import logging
import random
import sqlite3
import time
from contextlib import contextmanager

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    payload TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending',
    attempts INTEGER NOT NULL DEFAULT 0,
    run_after REAL NOT NULL DEFAULT 0,
    last_error TEXT
);
CREATE INDEX IF NOT EXISTS jobs_ready ON jobs (status, run_after);
"""

PENDING, RUNNING, DONE, FAILED = "pending", "running", "done", "failed"


class JobQueue:
    def __init__(self, path=":memory:", max_attempts=5, base_delay=1.0):
        self.conn = sqlite3.connect(path)
        self.conn.row_factory = sqlite3.Row
        self.conn.executescript(SCHEMA)
        self.max_attempts = max_attempts
        self.base_delay = base_delay
        self.handlers = {}

    def close(self):
        self.conn.close()

    @contextmanager
    def transaction(self):
        try:
            yield self.conn
            self.conn.commit()
        except Exception:
            self.conn.rollback()
            raise

    def register(self, name):
        """Decorator: `@queue.register("send_email")` makes a function the handler of a job type."""

        def decorator(func):
            self.handlers[name] = func
            return func

        return decorator

    def enqueue(self, name, payload=None, delay=0.0):
        with self.transaction() as conn:
            cursor = conn.execute(
                "INSERT INTO jobs (name, payload, run_after) VALUES (?, ?, ?)",
                (name, json.dumps(payload or {}), time.time() + delay),
            )
            return cursor.lastrowid

    def claim(self):
        """Mark the oldest ready job as running and return it, or None if nothing is ready."""
        with self.transaction() as conn:
            row = conn.execute(
                "SELECT * FROM jobs WHERE status = ? AND run_after <= ? ORDER BY id LIMIT 1",
                (PENDING, time.time()),
            ).fetchone()
            if row is None:
                return None
            conn.execute(
                "UPDATE jobs SET status = ?, attempts = attempts + 1 WHERE id = ?",
                (RUNNING, row["id"]),
            )
            return dict(row)

    def complete(self, job_id):
        with self.transaction() as conn:
            conn.execute("UPDATE jobs SET status = ? WHERE id = ?", (DONE, job_id))

    def fail(self, job_id, attempts, error):
        if attempts >= self.max_attempts:
            status, run_after = FAILED, 0
        else:
            delay = self.base_delay * 2 ** (attempts - 1)
            delay *= random.uniform(0.8, 1.2)
            status, run_after = PENDING, time.time() + delay
        with self.transaction() as conn:
            conn.execute(
                "UPDATE jobs SET status = ?, run_after = ?, last_error = ? WHERE id = ?",
                (status, run_after, str(error), job_id),
            )
        return status

    def run_one(self):
        job = self.claim()
        if job is None:
            return False
        handler = self.handlers.get(job["name"])
        if handler is None:
            self.fail(job["id"], self.max_attempts, f"no handler for {job['name']}")
            return True
        try:
            handler(**json.loads(job["payload"]))
        except Exception as exc:
            status = self.fail(job["id"], job["attempts"] + 1, exc)
            log.warning("job %s (%s) failed: %s; now %s", job["id"], job["name"], exc, status)
        else:
            self.complete(job["id"])
            log.info("job %s (%s) done", job["id"], job["name"])
        return True

    def work(self, poll_interval=0.5, stop_when_idle=False):
        while True:
            if self.run_one():
                continue
            if stop_when_idle:
                return
            time.sleep(poll_interval)

    def counts(self):
        rows = self.conn.execute("SELECT status, COUNT(*) AS n FROM jobs GROUP BY status").fetchall()
        return {row["status"]: row["n"] for row in rows}

    def failed_jobs(self):
        rows = self.conn.execute(
            "SELECT id, name, attempts, last_error FROM jobs WHERE status = ? ORDER BY id", (FAILED,)
        )
        return [dict(row) for row in rows]

    def retry_failed(self):
        with self.transaction() as conn:
            cursor = conn.execute(
                "UPDATE jobs SET status = ?, attempts = 0, run_after = 0 WHERE status = ?", (PENDING, FAILED)
            )
            return cursor.rowcount


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    queue = JobQueue(base_delay=0.01)

    @queue.register("greet")
    def greet(name):
        print(f"Hello, {name}!")

    @queue.register("flaky")
    def flaky(chance):
        if random.random() < chance:
            raise RuntimeError("temporary failure")

    for who in ("Ada", "Grace", "Linus"):
        queue.enqueue("greet", {"name": who})
    queue.enqueue("flaky", {"chance": 0.5})
    queue.work(stop_when_idle=True)
    print(queue.counts())
