"""Every ```python block of README.md and docs/*.md runs as the page shows it.

The snippets are read from the pages at test time, never copied here; each is one test, named
``page:line`` after its opening fence, and runs in a process of its own with a deadline, with
the worktree's ``src`` first on the path and warnings as errors. What a snippet is decides how
it runs:

- **A program** (top-level code that does something, such as ``anyio.run(main)``) runs as it
  is. It must exit with status 0. A ``print(...)`` whose line ends in a comment shows its
  output there, as in ``print(await client.request(b"hello"))  # b'HELLO'``: the program must
  print, in that order, lines that end with those comments' texts.
- **A test module** (it defines ``test_...`` functions) runs with pytest, as the docs tell the
  user to run it: ``-W error``, with the last ```ini block above it on its page as
  ``pytest.ini``. Every test it defines must pass. It is saved as ``NAME.py`` (see ``name=``
  below), so another module can import it (``from test_inventory import stock_level``): the
  named modules it imports are saved beside it.
- **Anything else** needs a marker: an HTML comment on the line right before the fence
  (invisible on the page), with items separated by commas::

      <!-- snippet: fragment, continues, in=count-service -->

  ``fragment``
      Code that is not a program: it awaits at top level (``async with ...``), or only
      defines names. It runs in an event loop (``anyio.run``) as module code that may await at
      top level, as in ``python -m asyncio``: in the namespace of the snippets it continues,
      inside its context. Its ``print`` comments are checked as a program's.
  ``continues`` or ``continues=NAME``
      It goes on from the snippet above it (or the one named ``NAME``, above it on its page):
      a fragment runs after that snippet's code, without its ``anyio.run(...)`` or
      ``asyncio.run(...)`` call, in the same namespace; a test module is appended to it and
      saved under its name.
  ``in=CONTEXT``
      A fragment runs inside a context of ``tests/docsnippets.py``'s ``CONTEXTS``, which gives
      it the names it takes from its page (``client``, ``lookup``, ...), serves what it talks
      to, and may check afterwards what it did. Add one there when none fits.
  ``serves`` (with ``name=NAME``)
      A program that serves until it is stopped (a broker, a worker). Its own test starts it,
      waits for its ``print`` comments, runs its context (``in=CONTEXT``) as the other side,
      then stops it with SIGINT, as Ctrl-C would: it must exit within a deadline.
  ``needs=NAME [NAME...]``
      The serving snippets above it on its page that must be running while it runs; they are
      started first (each once it has printed its ``print`` comments) and stopped afterwards.
  ``name=NAME``
      A name for ``continues``, ``needs`` and imports to refer to.
  ``errors=N`` and ``shows=TEXT`` (test modules)
      The module shows a failure on purpose: pytest must report ``N`` errors (its tests still
      pass), and its output must contain ``TEXT`` (the rest of the marker).
  ``not run: REASON``
      The snippet cannot run (it needs a host of its own, say). Its test is skipped, with the
      reason, so that the list stays in sight; keep it short.

A snippet whose marker does not fit it fails its test, saying why; a marker that cannot be read,
or names a snippet or a context that is not there, stops the collection of this module, naming
its page and line.

Snippets may bind the fixed ports of the docs (5559 and 5560 on the loopback, 5555 for a
Majordomo broker): the tests run one at a time, and every process a test starts has exited,
its ports released, before the test ends. Nothing waits by sleeping: background snippets are
waited for by the lines they print, and brokers hold requests until a worker connects.
"""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import IO

import pytest

import docsnippets
from docsnippets import ROOT, Snippet

pytest_plugins = ["pytester"]

SRC = ROOT / "src"
RUNNER = Path(docsnippets.__file__).resolve()
RUN_DEADLINE = 30.0
START_DEADLINE = 15.0
STOP_DEADLINE = 10.0

SNIPPETS = [snippet for page in docsnippets.PAGES for snippet in docsnippets.read_page(page)]

pytestmark = [
    pytest.mark.timeout(90),
    pytest.mark.skipif(sys.platform == "win32", reason="serving snippets stop on SIGINT"),
]


def environment() -> dict[str, str]:
    """The environment of a snippet's process: this checkout's package first on the path."""
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(SRC), path]))}


def command(snippet: Snippet, *args: str) -> list[str]:
    """The command that runs a snippet with warnings as errors.

    Not those a serving snippet's sockets raise when SIGINT ends it with them open: what an
    interrupted program leaves open is the interpreter's to close.
    """
    serves = ["-W", "ignore::ResourceWarning"] if snippet.kind == "serves" and not args else []
    return [sys.executable, "-u", "-W", "error", *serves, str(RUNNER), str(snippet), *args]


def check_output(snippet: Snippet, lines: list[str]) -> None:
    """The lines include, in order, one ending with each of the snippet's ``print`` comments."""
    remaining = iter(lines)
    for expected in snippet.expected_output():
        if not any(line.rstrip().endswith(expected) for line in remaining):
            pytest.fail(
                f"{snippet} should print a line ending with {expected!r}; it printed: {lines}"
            )


class Serving:
    """A serving snippet running in the background, its output read line by line."""

    def __init__(self, snippet: Snippet) -> None:
        self.snippet = snippet
        self.process = subprocess.Popen(
            command(snippet),
            cwd=ROOT,
            env=environment(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self._stdout: queue.Queue[str | None] = queue.Queue()
        self._stderr: list[str | None] = []
        assert self.process.stdout is not None
        assert self.process.stderr is not None
        self._readers = [
            threading.Thread(target=self._read, args=(self.process.stdout, self._stdout.put)),
            threading.Thread(target=self._read, args=(self.process.stderr, self._stderr.append)),
        ]
        for reader in self._readers:
            reader.start()

    @staticmethod
    def _read(stream: IO[str], put: Callable[[str | None], None]) -> None:
        for line in stream:
            put(line.rstrip("\n"))
        put(None)

    @property
    def stderr(self) -> str:
        return "\n".join(line for line in self._stderr if line is not None)

    def wait_until_ready(self) -> None:
        """Wait until it has printed what its ``print`` comments show."""
        deadline = time.monotonic() + START_DEADLINE
        for expected in self.snippet.expected_output():
            while not (self.lines and self.lines[-1].endswith(expected)):
                try:
                    line = self._stdout.get(timeout=max(deadline - time.monotonic(), 0.0))
                except queue.Empty:
                    pytest.fail(
                        f"{self.snippet} printed no line ending with {expected!r} in time;"
                        f" it printed: {self.lines}"
                    )
                if line is None:
                    self.stop()
                    pytest.fail(
                        f"{self.snippet} exited with {self.process.returncode}: {self.lines}"
                        f"\n{self.stderr}"
                    )
                self.lines.append(line)

    def stop(self) -> int | None:
        """Stop it as Ctrl-C would; kill it past the deadline. Its exit status, or None."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout=STOP_DEADLINE)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=STOP_DEADLINE)
            return None
        finally:
            for reader in self._readers:
                reader.join(timeout=STOP_DEADLINE)
            for stream in (self.process.stdout, self.process.stderr):
                if stream is not None:
                    stream.close()
        return self.process.returncode

    def check_stopped(self) -> None:
        """It stopped on SIGINT in time, by the ``KeyboardInterrupt`` and nothing else."""
        returncode = self.stop()
        assert returncode is not None, f"{self.snippet} did not stop within {STOP_DEADLINE} s"
        interrupted = returncode == -signal.SIGINT and self.stderr.rstrip().endswith(
            "KeyboardInterrupt"
        )
        assert returncode == 0 or interrupted, (
            f"{self.snippet} exited with {returncode} on SIGINT:\n{self.stderr}"
        )


@contextmanager
def serving(*snippets: Snippet) -> Iterator[list[Serving]]:
    """Run serving snippets for the block, each ready before the next starts; stop them all."""
    with ExitStack() as stack:
        started: list[Serving] = []
        for snippet in snippets:
            background = Serving(snippet)
            stack.callback(background.stop)
            background.wait_until_ready()
            started.append(background)
        yield started
        for background in reversed(started):
            background.check_stopped()


def run(snippet: Snippet, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the snippet (or its context only) to its end, in a process of its own."""
    result = subprocess.run(
        command(snippet, *args),
        cwd=ROOT,
        env=environment(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=RUN_DEADLINE,
        check=False,
    )
    assert result.returncode == 0, (
        f"{snippet} exited with {result.returncode}\n{result.stdout}\n{result.stderr}"
    )
    # What Python cannot raise (a warning in a finalizer: a socket left open) it only prints.
    assert "Exception ignored" not in result.stderr, result.stderr
    return result


def run_with_pytest(snippet: Snippet, pytester: pytest.Pytester) -> None:
    """Run a test module with pytest, its page's configuration and its named imports beside."""
    if snippet.ini is not None:
        pytester.makefile(".ini", pytest=snippet.ini)
    named = {other.name: other for other in SNIPPETS if other.page == snippet.page}
    parts = (*snippet.continued, snippet)
    for module in set().union(*(part.imported_modules() for part in parts)) & named.keys():
        pytester.makepyfile(**{module: source(named[module])})
    path = pytester.makepyfile(**{parts[0].name: source(snippet)})
    # Hypothesis's plugin, which the docs' readers need not have, takes a second to load.
    options = ["-p", "no:cacheprovider", "-p", "no:hypothesispytest", "-W", "error"]
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setenv("PYTHONPATH", environment()["PYTHONPATH"])
        result = pytester.runpytest_subprocess(*options, str(path), timeout=RUN_DEADLINE)
    output = f"{result.stdout.str()}\n{result.stderr.str()}"
    try:
        reported = result.parseoutcomes()
    except ValueError:
        pytest.fail(f"{snippet}: pytest reported no outcome:\n{output}")
    outcomes = {key: reported.get(key, 0) for key in ("passed", "failed", "errors", "skipped")}
    expected = {"passed": snippet.test_count(), "errors": snippet.marker.errors}
    assert outcomes == {**expected, "failed": 0, "skipped": 0}, output
    if snippet.marker.shows is not None:
        assert snippet.marker.shows in output, output


def source(snippet: Snippet) -> str:
    """A test module's source: the modules it continues, then its own code."""
    return "\n\n".join(part.code for part in (*snippet.continued, snippet))


@pytest.mark.parametrize("snippet", SNIPPETS, ids=str)
def test_snippet(snippet: Snippet, request: pytest.FixtureRequest) -> None:
    try:
        kind = snippet.kind
    except docsnippets.SnippetError as exc:
        pytest.fail(str(exc), pytrace=False)
    if kind == "not run":
        pytest.skip(f"{snippet} is not run: {snippet.marker.not_run}")
    if kind == "pytest":
        run_with_pytest(snippet, request.getfixturevalue("pytester"))
    elif kind == "serves":
        with serving(snippet):
            if snippet.marker.context:
                run(snippet, "--context-only")
    else:
        with serving(*snippet.needed):
            result = run(snippet)
        check_output(snippet, result.stdout.splitlines())


def test_every_python_block_is_found() -> None:
    """No ```python block escapes the reader, wherever it stands (indented, in a list, ...)."""
    for page in docsnippets.PAGES:
        text = (ROOT / page).read_text(encoding="utf-8")
        blocks = re.findall(r"^\s*(?:```|~~~)\s*\{?python", text, flags=re.MULTILINE)
        found = [snippet for snippet in SNIPPETS if snippet.page == page]
        assert len(found) == len(blocks), page
