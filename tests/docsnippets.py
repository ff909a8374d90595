"""The Python snippets of the documentation: found in the pages, and run one by one.

``tests/test_docs.py`` states the conventions and runs the tests. This module is what they
share with the process each snippet runs in: the parser of the Markdown pages, the contexts a
fragment can run in (:data:`CONTEXTS`), and the runner itself, started as a script from the
repository's root::

    python tests/docsnippets.py PAGE:LINE                 # the snippet whose fence opens there
    python tests/docsnippets.py PAGE:LINE --context-only  # a serving snippet's context alone

A snippet's code is compiled under its page's name and line numbers, so a traceback points at
the line of the page.
"""

from __future__ import annotations

import ast
import inspect
import io
import re
import sys
import threading
import time
import tokenize
import types
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import zmq

from zmqrelay import AsyncClient, AsyncWorker, Broker, Endpoints, RemoteError

ROOT = Path(__file__).resolve().parent.parent
PAGES = (Path("README.md"), *sorted(path.relative_to(ROOT) for path in ROOT.glob("docs/*.md")))
"""The pages whose snippets run, relative to the repository's root."""

FENCE = re.compile(r"^(?P<fence>`{3,}|~{3,})\s*(?P<info>[^`]*)$")
MARKER = re.compile(r"^<!--\s*snippet:(?P<items>.*)-->\s*$")
RUN_CALLS = {("anyio", "run"), ("asyncio", "run")}


class SnippetError(Exception):
    """A snippet or its marker breaks the conventions; the message says how."""


@dataclass(frozen=True)
class Marker:
    """What the ``<!-- snippet: ... -->`` comment before a fence declares."""

    fragment: bool = False
    serves: bool = False
    name: str | None = None
    continues: str | None = None
    """The name of the snippet this one continues; ``""`` for the previous one."""
    needs: tuple[str, ...] = ()
    context: str | None = None
    errors: int = 0
    shows: str | None = None
    not_run: str | None = None

    @classmethod
    def parse(cls, items: str) -> Marker:
        """Read a marker's items, separated by commas (``not run:`` and ``shows=`` end it)."""
        options: dict[str, Any] = {}
        rest = items.strip()
        while rest:
            if rest.startswith("not run:"):
                options["not_run"] = rest.removeprefix("not run:").strip()
                if not options["not_run"]:
                    raise SnippetError("`not run:` needs a reason")
                break
            if rest.startswith("shows="):
                options["shows"] = rest.removeprefix("shows=")
                break
            item, _, rest = rest.partition(",")
            item, rest = item.strip(), rest.strip()
            key, has_value, value = item.partition("=")
            if (key, has_value) in {("fragment", ""), ("serves", "")}:
                options[key] = True
            elif key == "continues":
                options["continues"] = value
            elif key == "needs" and value:
                options["needs"] = tuple(value.split())
            elif key == "name" and value:
                options["name"] = value
            elif key == "in" and value:
                options["context"] = value
            elif key == "errors" and value.isdigit():
                options["errors"] = int(value)
            else:
                raise SnippetError(f"unknown marker item {item!r}")
        return cls(**options)


@dataclass(frozen=True)
class Snippet:
    """A ```python block of a page."""

    page: Path
    line: int
    """The line of its opening fence."""
    code: str
    marker: Marker = field(default_factory=Marker)
    ini: str | None = None
    """The last ```ini block above it on its page, the configuration its tests run with."""
    continued: tuple[Snippet, ...] = ()
    """The snippets it continues, the first first."""
    needed: tuple[Snippet, ...] = ()
    """The serving snippets it needs running."""

    def __str__(self) -> str:
        return f"{self.page}:{self.line}"

    @property
    def name(self) -> str:
        """Its name, or one made of its place: the file a test module is saved as."""
        if self.marker.name:
            return self.marker.name
        return f"test_{self.page.stem.replace('-', '_')}_{self.line}".lower()

    def tree(self, *, drop_run_calls: bool = False) -> ast.Module:
        """Its code, parsed with the page's line numbers; top-level ``await`` allowed."""
        tree = compile(
            self.code,
            str(self.page),
            "exec",
            flags=ast.PyCF_ONLY_AST | ast.PyCF_ALLOW_TOP_LEVEL_AWAIT,
            dont_inherit=True,
        )
        assert isinstance(tree, ast.Module)
        ast.increment_lineno(tree, self.line)
        if drop_run_calls:
            tree.body = [statement for statement in tree.body if not is_run_call(statement)]
        return tree

    @property
    def kind(self) -> str:
        """How it runs: ``not run``, ``serves``, ``fragment``, ``pytest`` or ``program``."""
        kind = self._kind()
        marker = self.marker
        misplaced = {
            "fragment and serves": marker.fragment and marker.serves,
            "in=": marker.context is not None and kind not in {"fragment", "serves"},
            "needs=": bool(marker.needs) and kind not in {"fragment", "program"},
            "continues": marker.continues is not None and kind not in {"fragment", "pytest"},
            "errors= and shows=": (marker.errors or marker.shows) and kind != "pytest",
        }
        for item, wrong in misplaced.items():
            if wrong and kind != "not run":
                raise SnippetError(
                    f"{self}: {item} does not apply to a snippet of its kind, {kind}"
                )
        return kind

    def _kind(self) -> str:
        if self.marker.not_run is not None:
            return "not run"
        if self.marker.serves:
            return "serves"
        if self.marker.fragment:
            return "fragment"
        tree = self.tree()
        if any(
            isinstance(statement, ast.FunctionDef | ast.AsyncFunctionDef)
            and statement.name.startswith("test_")
            for statement in tree.body
        ):
            return "pytest"
        if is_async_at_top_level(tree):
            raise SnippetError(
                f"{self}: it awaits at top level: declare it a fragment, with its context"
                " (<!-- snippet: fragment, ... -->)"
            )
        if not any(does_something(statement) for statement in tree.body):
            raise SnippetError(
                f"{self}: it only defines names: declare it a fragment, with its context"
                " (<!-- snippet: fragment, ... -->), or make it a program that runs them"
            )
        return "program"

    def test_count(self) -> int:
        """How many test functions it defines, with those of the snippets it continues."""
        return sum(
            isinstance(statement, ast.FunctionDef | ast.AsyncFunctionDef)
            and statement.name.startswith("test_")
            for snippet in (*self.continued, self)
            for statement in snippet.tree().body
        )

    def imported_modules(self) -> set[str]:
        """The top-level module names its code imports."""
        names: set[str] = set()
        for node in ast.walk(self.tree()):
            if isinstance(node, ast.Import):
                names.update(alias.name.partition(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names.add(node.module.partition(".")[0])
        return names

    def expected_output(self) -> list[str]:
        """What its ``print(...)`` calls show in a trailing comment, in order of the lines."""
        comments = {
            token.start[0]: token.string.removeprefix("#").strip()
            for token in tokenize.generate_tokens(io.StringIO(self.code).readline)
            if token.type == tokenize.COMMENT
        }
        lines = sorted(
            node.end_lineno - self.line
            for node in ast.walk(self.tree())
            if isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id == "print"
            and node.end_lineno is not None
        )
        return [comments[line] for line in lines if line in comments]


def is_run_call(statement: ast.stmt) -> bool:
    """Whether the statement is ``anyio.run(...)`` or ``asyncio.run(...)``."""
    return (
        isinstance(statement, ast.Expr)
        and isinstance(statement.value, ast.Call)
        and isinstance(statement.value.func, ast.Attribute)
        and isinstance(statement.value.func.value, ast.Name)
        and (statement.value.func.value.id, statement.value.func.attr) in RUN_CALLS
    )


def is_async_at_top_level(tree: ast.Module) -> bool:
    """Whether the module awaits outside any function (which only a fragment may)."""

    def visit(node: ast.AST) -> bool:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            return False
        if isinstance(node, ast.Await | ast.AsyncWith | ast.AsyncFor):
            return True
        if isinstance(node, ast.comprehension) and node.is_async:
            return True
        return any(visit(child) for child in ast.iter_child_nodes(node))

    return visit(tree)


def does_something(statement: ast.stmt) -> bool:
    """Whether a top-level statement acts, rather than import or define a name."""
    definitions = (
        ast.Import,
        ast.ImportFrom,
        ast.FunctionDef,
        ast.AsyncFunctionDef,
        ast.ClassDef,
        ast.Assign,
        ast.AnnAssign,
    )
    docstring = isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Constant)
    return not isinstance(statement, definitions) and not docstring


def read_page(page: Path) -> list[Snippet]:
    """The ```python blocks of a page (relative to the repository's root), in order."""
    lines = (ROOT / page).read_text(encoding="utf-8").splitlines()
    snippets: list[Snippet] = []
    ini: str | None = None
    index = 0
    while index < len(lines):
        opening = FENCE.match(lines[index])
        if not opening:
            if lines[index].lstrip().startswith("<!-- snippet"):
                following = lines[index + 1] if index + 1 < len(lines) else ""
                if not following.startswith("```python"):
                    raise SnippetError(f"{page}:{index + 1}: a marker not followed by ```python")
                if not MARKER.match(lines[index]):
                    raise SnippetError(f"{page}:{index + 1}: a marker on more than one line")
            index += 1
            continue
        fence, info = opening["fence"], opening["info"].strip()
        end = index + 1
        while end < len(lines) and lines[end].strip() != fence:
            end += 1
        body = "\n".join(lines[index + 1 : end]) + "\n"
        if info == "ini":
            ini = body
        elif info == "python":
            previous = MARKER.match(lines[index - 1]) if index else None
            marker = Marker.parse(previous["items"]) if previous else Marker()
            snippet = Snippet(page, index + 1, body, marker, ini)
            snippets.append(resolve(snippet, snippets))
        index = end + 1
    return snippets


def resolve(snippet: Snippet, earlier: list[Snippet]) -> Snippet:
    """The snippet with the earlier ones it continues and needs."""
    named = {other.marker.name: other for other in earlier if other.marker.name}
    continued: tuple[Snippet, ...] = ()
    if snippet.marker.continues is not None:
        name = snippet.marker.continues
        if not name and not earlier:
            raise SnippetError(f"{snippet}: nothing above to continue")
        if name and name not in named:
            raise SnippetError(f"{snippet}: no snippet named {name!r} above it on its page")
        base = named[name] if name else earlier[-1]
        continued = (*base.continued, base)
    needed = []
    for name in snippet.marker.needs:
        if name not in named or not named[name].marker.serves:
            raise SnippetError(f"{snippet}: no serving snippet named {name!r} above it")
        needed.append(named[name])
    if snippet.marker.context is not None and snippet.marker.context not in CONTEXTS:
        raise SnippetError(f"{snippet}: no context {snippet.marker.context!r} in docsnippets.py")
    return Snippet(
        snippet.page,
        snippet.line,
        snippet.code,
        snippet.marker,
        snippet.ini,
        continued,
        tuple(needed),
    )


def find(snippet_id: str) -> Snippet:
    """The snippet whose opening fence is at ``page:line``."""
    page, _, line = snippet_id.rpartition(":")
    for snippet in read_page(Path(page)):
        if snippet.line == int(line):
            return snippet
    raise SnippetError(f"no ```python block opens at {snippet_id}")


# -- Contexts ---------------------------------------------------------------------------------
# A fragment runs inside the context its marker names (`in=NAME`): an async context manager
# that gets the namespace the fragment runs in. It adds the names the fragment takes from its
# page, serves what it talks to, and may check, once the fragment has run, what it left. For
# a serving snippet, the context is the other side: it runs, alone, while the snippet serves.

Context = Callable[[dict[str, Any]], AbstractAsyncContextManager[None]]
CONTEXTS: dict[str, Context] = {}

FRONTEND, BACKEND = "tcp://127.0.0.1:5559", "tcp://127.0.0.1:5560"


def context(name: str) -> Callable[[Context], Context]:
    """Register a context under the name a marker gives it."""

    def register(function: Context) -> Context:
        CONTEXTS[name] = function
        return function

    return register


@context("none")
@asynccontextmanager
async def nothing(namespace: dict[str, Any]) -> AsyncIterator[None]:
    """No context: the fragment needs nothing but what it continues."""
    yield


async def shout(request: bytes) -> bytes:
    return request.upper()


@context("unstarted-broker-and-worker")
@asynccontextmanager
async def unstarted_broker_and_worker(namespace: dict[str, Any]) -> AsyncIterator[None]:
    """``anyio``, a relay ``broker`` on ports 5559 and 5560 and a ``worker``, neither started.

    Afterwards the ``endpoints`` the snippet got from ``start()`` must be the broker's.
    """
    broker = Broker(frontend=FRONTEND, backend=BACKEND)
    worker = AsyncWorker(BACKEND, shout)
    namespace.update(anyio=anyio, broker=broker, worker=worker)
    try:
        yield
        assert namespace["endpoints"] == Endpoints(FRONTEND, BACKEND)
    finally:
        await worker.aclose()
        await broker.aclose()


@context("shout-service")
@asynccontextmanager
async def shout_service(namespace: dict[str, Any]) -> AsyncIterator[None]:
    """A relay broker on ports 5559 and 5560, with a worker that answers in capitals."""
    async with Broker(frontend=FRONTEND, backend=BACKEND), AsyncWorker(BACKEND, shout):
        yield


@context("asks-hello")
@asynccontextmanager
async def asks_hello(namespace: dict[str, Any]) -> AsyncIterator[None]:
    """A relay broker on ports 5559 and 5560 whose client asks ``b"Hello"`` and ``b"Goodbye"``.

    The worker serving must answer ``b"World"``, then raise ``ValueError``.
    """
    async with (
        Broker(frontend=FRONTEND, backend=BACKEND),
        AsyncClient(FRONTEND, timeout=10.0) as client,
    ):
        yield
        assert await client.request(b"Hello") == b"World"
        try:
            await client.request(b"Goodbye")
        except RemoteError as exc:
            error = exc
        else:
            raise AssertionError("the worker answered b'Goodbye'")
        assert error.type_name == "ValueError"


@context("asks-load-balancing-broker")
@asynccontextmanager
async def asks_load_balancing_broker(namespace: dict[str, Any]) -> AsyncIterator[None]:
    """A load-balancing broker on ports 5559 and 5560 whose client asks ``b"hello"``.

    The worker serving must answer ``b"HELLO"``.
    """
    async with (
        Broker(frontend=FRONTEND, backend=BACKEND, mode="load-balancing"),
        AsyncClient(FRONTEND, timeout=10.0) as client,
    ):
        yield
        assert await client.request(b"hello") == b"HELLO"


@context("serves-handle")
@asynccontextmanager
async def serves_handle(namespace: dict[str, Any]) -> AsyncIterator[None]:
    """``lookup(request, timeout=...)``, the application's code; then ``handle`` serves.

    Once the snippet has defined ``handle``, a worker runs it, and a client asks with a timeout
    of 5 seconds, then without one: ``lookup`` must have been given the time left, then None.
    """
    given: list[float | None] = []

    async def lookup(request: bytes, *, timeout: float | None) -> bytes:
        given.append(timeout)
        return b"found " + request

    namespace["lookup"] = lookup
    yield
    async with (
        Broker(frontend=FRONTEND, backend=BACKEND),
        AsyncWorker(BACKEND, namespace["handle"]),
        AsyncClient(FRONTEND) as client,
    ):
        assert await client.request(b"apple", timeout=5.0) == b"found apple"
        assert await client.request(b"pear", timeout=None) == b"found pear"
    assert len(given) == 2
    assert given[0] is not None
    assert 4.0 < given[0] <= 5.0
    assert given[1] is None


async def count(request: bytes) -> AsyncIterator[bytes]:
    for number in range(int(request)):
        yield b"%d" % number


@context("count-service")
@asynccontextmanager
async def count_service(namespace: dict[str, Any]) -> AsyncIterator[None]:
    """A load-balancing broker whose service ``count`` streams, and its ``client``."""
    async with (
        Broker(frontend=FRONTEND, backend=BACKEND, mode="load-balancing"),
        AsyncWorker(BACKEND, count, service="count"),
        AsyncClient(FRONTEND, timeout=10.0) as client,
    ):
        namespace["client"] = client
        yield


@context("slow-count-service")
@asynccontextmanager
async def slow_count_service(namespace: dict[str, Any]) -> AsyncIterator[None]:
    """``anyio``, ``time``, and a ``client`` of a service ``count`` served by ``slow_count``."""
    namespace.update(anyio=anyio, time=time)
    async with (
        Broker(frontend=FRONTEND, backend=BACKEND, mode="load-balancing"),
        AsyncWorker(BACKEND, namespace["slow_count"], service="count"),
        AsyncClient(FRONTEND, timeout=10.0) as client,
    ):
        namespace["client"] = client
        yield


@context("majortomo-broker")
@asynccontextmanager
async def majortomo_broker(namespace: dict[str, Any]) -> AsyncIterator[None]:
    """majortomo's Majordomo broker on port 5555, a ``resize`` handler and a ``photo``.

    Afterwards the ``thumbnail`` must be what ``resize`` made of the photo.
    """
    from majortomo.broker import Broker as MajortomoBroker

    async def resize(request: bytes) -> bytes:
        return b"small " + request

    namespace.update(resize=resize, photo=b"photo")
    zmq_context = zmq.Context()
    zmq_context.linger = 0
    broker = MajortomoBroker(
        bind="tcp://127.0.0.1:5555", heartbeat_interval=0.2, zmq_context=zmq_context
    )
    thread = threading.Thread(target=broker.run, name="majortomo-broker")
    thread.start()
    try:
        yield
        assert namespace["thumbnail"] == b"small photo"
    finally:
        broker.stop()  # type: ignore[no-untyped-call]  # majortomo is not typed
        await anyio.to_thread.run_sync(thread.join)
        zmq_context.term()


# -- The runner -------------------------------------------------------------------------------


async def execute(snippet: Snippet, namespace: dict[str, Any], *, continued: bool) -> None:
    """Run a snippet's code in ``namespace``, awaiting it if it awaits at top level.

    A continued snippet's ``anyio.run(...)`` and ``asyncio.run(...)`` are left out: what it
    hands on is its imports and definitions.
    """
    code = compile(
        snippet.tree(drop_run_calls=continued),
        str(snippet.page),
        "exec",
        flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT,
        dont_inherit=True,
    )
    result = eval(code, namespace)  # the documentation's own code
    if inspect.iscoroutine(result):
        await result


async def run_fragment(snippet: Snippet, namespace: dict[str, Any]) -> None:
    """Run what a fragment continues, then the fragment inside its context."""
    for earlier in snippet.continued:
        await execute(earlier, namespace, continued=True)
    async with CONTEXTS[snippet.marker.context or "none"](namespace):
        await execute(snippet, namespace, continued=False)


async def run_context_only(snippet: Snippet, namespace: dict[str, Any]) -> None:
    """Run a serving snippet's context, alone: the other side of what it serves."""
    async with CONTEXTS[snippet.marker.context or "none"](namespace):
        pass


def main(argv: list[str]) -> None:
    """Run the snippet named ``page:line`` (or only its context) as the ``__main__`` module."""
    snippet = find(argv[0])
    module = types.ModuleType("__main__")
    module.__file__ = str(ROOT / snippet.page)
    sys.modules["__main__"] = module
    namespace = module.__dict__
    if argv[1:] == ["--context-only"]:
        anyio.run(run_context_only, snippet, namespace)
    elif snippet.kind == "fragment":
        anyio.run(run_fragment, snippet, namespace)
    else:
        exec(compile(snippet.tree(), str(snippet.page), "exec", dont_inherit=True), namespace)


if __name__ == "__main__":
    main(sys.argv[1:])
