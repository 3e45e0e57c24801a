"""A small Chrome DevTools Protocol harness over aiohttp's websocket client, for the page tests.

Starts Debian's chromium headless with a private profile, attaches to its page target and collects
what a user would see as console errors (``console.error``, uncaught exceptions, and the browser's own
error log: failed loads, CSP violations). Every wait is bounded; the browser's process group is killed
on exit whatever happened.

    async with Browser() as b:
        await b.navigate(url)
        await b.evaluate("document.title")
        png = await b.screenshot()
        assert not b.errors
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import os
import shutil
import signal
import tempfile
from pathlib import Path
from typing import Any

import aiohttp

CHROMIUM = os.environ.get("VERSUS_CHROMIUM", "/usr/bin/chromium")
FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--remote-debugging-port=0", "--no-first-run",
         "--no-default-browser-check", "--disable-extensions", "--disable-dev-shm-usage", "--mute-audio",
         "--hide-scrollbars", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--metrics-recording-only", "--password-store=basic")


class BrowserError(RuntimeError):
    """The browser failed to start, a command failed, or a wait ran out."""


class Browser:
    """One headless chromium with one page, driven over CDP."""

    def __init__(self, executable: str = CHROMIUM, *, start_timeout: float = 30.0, command_timeout: float = 30.0,
                 width: int = 1280, height: int = 900) -> None:
        self.executable = executable
        self.start_timeout = start_timeout
        self.command_timeout = command_timeout
        self.size = (width, height)
        #: Console errors, uncaught exceptions and error log entries, as readable one-liners.
        self.errors: list[str] = []
        #: Every console message and log entry (any level), for diagnosing a failure.
        self.log: list[str] = []
        self._profile = ""
        self._proc: asyncio.subprocess.Process | None = None
        self._session: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task | None = None
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future] = {}
        self._waiters: list[tuple[str, asyncio.Future]] = []

    # -- lifecycle -----------------------------------------------------------------------------

    async def __aenter__(self) -> Browser:
        try:
            await self._start()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _start(self) -> None:
        self._profile = tempfile.mkdtemp(prefix="versus-chromium-")
        self._proc = await asyncio.create_subprocess_exec(
            self.executable, *FLAGS, f"--user-data-dir={self._profile}",
            f"--window-size={self.size[0]},{self.size[1]}", "about:blank",
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL, start_new_session=True)
        port = await self._devtools_port()
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.command_timeout))
        ws_url = await self._page_websocket(port)
        self._ws = await self._session.ws_connect(ws_url, max_msg_size=0, heartbeat=None)
        self._reader = asyncio.create_task(self._read())
        for domain in ("Page.enable", "Runtime.enable", "Log.enable"):
            await self.send(domain)
        await self.send("Emulation.setDeviceMetricsOverride", width=self.size[0], height=self.size[1],
                        deviceScaleFactor=1, mobile=False)

    async def _devtools_port(self) -> int:
        """Read the port chromium chose from ``DevToolsActivePort`` in the profile (bounded wait)."""
        path = Path(self._profile) / "DevToolsActivePort"
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.start_timeout
        while loop.time() < deadline:
            if self._proc is not None and self._proc.returncode is not None:
                raise BrowserError(f"{self.executable} exited with {self._proc.returncode} before DevTools started")
            with contextlib.suppress(OSError, ValueError, IndexError):
                return int(path.read_text().splitlines()[0])
            await asyncio.sleep(0.1)
        raise BrowserError(f"DevTools did not start within {self.start_timeout:.0f} s")

    async def _page_websocket(self, port: int) -> str:
        assert self._session is not None
        base = f"http://127.0.0.1:{port}"
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.start_timeout
        while loop.time() < deadline:
            async with self._session.get(f"{base}/json/list") as resp:
                targets = await resp.json(content_type=None)
            pages = [t for t in targets if t.get("type") == "page" and t.get("webSocketDebuggerUrl")]
            if pages:
                return pages[0]["webSocketDebuggerUrl"]
            await asyncio.sleep(0.1)
        async with self._session.put(f"{base}/json/new?about:blank") as resp:
            return (await resp.json(content_type=None))["webSocketDebuggerUrl"]

    async def close(self) -> None:
        """Disconnect and kill the browser's whole process group; remove the profile."""
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader
        if self._ws is not None:
            with contextlib.suppress(Exception):
                await self._ws.close()
        if self._session is not None:
            await self._session.close()
        if self._proc is not None and self._proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._proc.pid, signal.SIGKILL)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._proc.wait(), 10)
        if self._profile:
            shutil.rmtree(self._profile, ignore_errors=True)
        self._reader = self._ws = self._session = self._proc = None

    # -- protocol ------------------------------------------------------------------------------

    async def send(self, method: str, timeout: float | None = None, **params: Any) -> dict:
        """Send one CDP command and wait (bounded) for its result; a CDP error raises BrowserError."""
        if self._ws is None:
            raise BrowserError("the browser is not running")
        call_id = next(self._ids)
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        self._pending[call_id] = future
        await self._ws.send_json({"id": call_id, "method": method, "params": params})
        try:
            reply = await asyncio.wait_for(future, timeout or self.command_timeout)
        except TimeoutError:
            raise BrowserError(f"{method}: no reply within {timeout or self.command_timeout:.0f} s") from None
        finally:
            self._pending.pop(call_id, None)
        if "error" in reply:
            raise BrowserError(f"{method}: {reply['error'].get('message')}")
        return reply.get("result", {})

    async def _read(self) -> None:
        assert self._ws is not None
        async for msg in self._ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                break
            data = msg.json()
            if "id" in data:
                future = self._pending.get(data["id"])
                if future is not None and not future.done():
                    future.set_result(data)
            else:
                self._event(data.get("method", ""), data.get("params", {}))
        for future in self._pending.values():
            if not future.done():
                future.set_exception(BrowserError("the DevTools connection closed"))

    def _event(self, method: str, params: dict) -> None:
        self._collect(method, params)
        for name, future in list(self._waiters):
            if name == method and not future.done():
                future.set_result(params)
        self._waiters = [(n, f) for n, f in self._waiters if not f.done()]

    def _collect(self, method: str, params: dict) -> None:
        if method == "Runtime.consoleAPICalled":
            text = " ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", []))
            self.log.append(f"console.{params.get('type')}: {text}")
            if params.get("type") in ("error", "assert"):
                self.errors.append(f"console.{params.get('type')}: {text}")
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            text = details.get("exception", {}).get("description") or details.get("text", "")
            self.log.append(f"exception: {text}")
            self.errors.append(f"exception: {text}")
        elif method == "Log.entryAdded":
            entry = params.get("entry", {})
            line = f"log.{entry.get('level')} ({entry.get('source')}): {entry.get('text')} {entry.get('url', '')}"
            self.log.append(line.strip())
            if entry.get("level") == "error":
                self.errors.append(line.strip())

    def expect(self, method: str) -> asyncio.Future:
        """A future for the next ``method`` event; create it *before* the action that causes the event."""
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        self._waiters.append((method, future))
        return future

    async def wait(self, future: asyncio.Future, timeout: float, what: str) -> dict:
        try:
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            raise BrowserError(f"{what}: not within {timeout:.0f} s") from None

    # -- what a test does ----------------------------------------------------------------------

    async def navigate(self, url: str, timeout: float = 60.0) -> None:
        """Open ``url`` and wait for its load event."""
        loaded = self.expect("Page.loadEventFired")
        result = await self.send("Page.navigate", url=url)
        if result.get("errorText"):
            raise BrowserError(f"navigate {url}: {result['errorText']}")
        await self.wait(loaded, timeout, f"load of {url}")

    async def evaluate(self, expression: str, timeout: float | None = None) -> Any:
        """Evaluate JavaScript in the page (promises awaited) and return its value."""
        result = await self.send("Runtime.evaluate", timeout=timeout, expression=expression, returnByValue=True,
                                 awaitPromise=True)
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            raise BrowserError(f"evaluate: {details.get('exception', {}).get('description') or details.get('text')}")
        return result.get("result", {}).get("value")

    async def act_and_wait_load(self, expression: str, timeout: float = 60.0) -> None:
        """Run JavaScript that navigates (a click on submit) and wait for the next page's load event."""
        loaded = self.expect("Page.loadEventFired")
        await self.evaluate(expression)
        await self.wait(loaded, timeout, f"load after {expression!r}")

    async def wait_for(self, condition: str, timeout: float = 30.0, interval: float = 0.2) -> Any:
        """Poll a JavaScript condition until it is truthy (bounded); return its value."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            value = await self.evaluate(condition)
            if value:
                return value
            if loop.time() >= deadline:
                raise BrowserError(f"{condition!r} still false after {timeout:.0f} s")
            await asyncio.sleep(interval)

    async def screenshot(self, max_height: int = 12000) -> bytes:
        """PNG of the whole page (up to ``max_height`` CSS pixels tall)."""
        metrics = await self.send("Page.getLayoutMetrics")
        content = metrics.get("cssContentSize") or metrics.get("contentSize", {})
        width = max(1, int(content.get("width", self.size[0])))
        height = max(1, min(int(content.get("height", self.size[1])), max_height))
        result = await self.send("Page.captureScreenshot", timeout=60, format="png", captureBeyondViewport=True,
                                 clip={"x": 0, "y": 0, "width": width, "height": height, "scale": 1})
        return base64.b64decode(result["data"])
