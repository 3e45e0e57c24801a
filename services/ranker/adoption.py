"""Adoption read live from the Hugging Face Hub: downloads (last 30 days) and likes (no gRPC here).

Why the ranker reads it: the ranker computes the scores, and its store (SQLite, or PostgreSQL shared by
every replica) is where a reading can be kept with its URL and time; gateways hold no database.

- :class:`HubReader` asks the Hub API once per model (``HfApi.model_info(hub_id, expand=["downloads",
  "likes"])``), through ``huggingface_hub``, so ``HF_ENDPOINT`` names the hub and ``HF_HUB_OFFLINE`` stops
  every request. Each figure becomes a :class:`Reading`: model, figure, value, the URL read, the time read.
- :class:`HubAdoption` serves Score: a stored reading younger than ``max_age_s`` is used as it is;
  otherwise the hub is asked, under a deadline (``timeout_s``) a comparison never waits past, and the
  answer is stored. When the hub cannot be read (reading off, offline mode, unreachable, an error), the
  last stored reading is used and shown with its age, or the figure is "not read (offline)". A failed
  read is not retried for ``retry_s``. Nothing is ever guessed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from urllib.parse import quote, urlencode

from services.ranker.schema import CatalogEntry, Scale

log = logging.getLogger(__name__)

#: The Hub API's field → (catalog signal name, unit, how it scales to 0..100).
FIGURES = {
    "downloads": ("hf_downloads_30d", "downloads in the last 30 days", Scale(kind="log10", max=1e8)),
    "likes": ("hf_likes", "likes", Scale(kind="log10", max=1e4)),
}
NAMES = tuple(name for name, _, _ in FIGURES.values())
UNIT = {name: unit for name, unit, _ in FIGURES.values()}
SCALE = {name: scale for name, _, scale in FIGURES.values()}
OFFLINE = "not read (offline)"


@dataclass(frozen=True)
class Reading:
    """One figure read from the hub: the URL it came from and when (Unix seconds)."""

    model_id: str
    name: str
    value: float
    url: str
    read_at: float


@dataclass(frozen=True)
class Adoption:
    """What Score knows of one model's adoption: its latest readings (fresh or old) and, when the hub was
    not read just now, why (``status``, e.g. "not read (offline): HF_HUB_OFFLINE is set")."""

    readings: tuple[Reading, ...] = ()
    status: str = ""


class HubUnread(Exception):
    """The hub was not read; the message says why, in the words the page shows."""


def model_info_url(endpoint: str, hub_id: str) -> str:
    """The URL ``HfApi.model_info(hub_id, expand=[...])`` requests."""
    query = urlencode([("expand", field) for field in FIGURES])
    return f"{endpoint.rstrip('/')}/api/models/{quote(hub_id, safe='/')}?{query}"


class HubReader:
    """Reads one model's figures from the Hub API (blocking: run it off the event loop)."""

    def __init__(self, timeout_s: float, endpoint: str | None = None) -> None:
        self.timeout_s = timeout_s
        self._endpoint = endpoint  # None: huggingface_hub's own (HF_ENDPOINT, else huggingface.co)

    @property
    def endpoint(self) -> str:
        from huggingface_hub import constants

        return self._endpoint or constants.ENDPOINT

    def offline_reason(self) -> str:
        """Why no request may be made at all ('' when the hub may be asked)."""
        from huggingface_hub import constants

        return f"{OFFLINE}: HF_HUB_OFFLINE is set" if constants.is_offline_mode() else ""

    def read(self, model_id: str, hub_id: str) -> list[Reading]:
        """The model's figures, read now. Raises :class:`HubUnread` saying why they could not be."""
        import httpx2
        from huggingface_hub import HfApi
        from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

        url = model_info_url(self.endpoint, hub_id)
        try:
            info = HfApi(endpoint=self.endpoint).model_info(hub_id, expand=list(FIGURES), timeout=self.timeout_s)
        except OfflineModeIsEnabled as exc:
            raise HubUnread(f"{OFFLINE}: HF_HUB_OFFLINE is set") from exc
        except HfHubHTTPError as exc:
            status = exc.response.status_code if exc.response is not None else "no status"
            raise HubUnread(f"not read: the hub answered {url} with HTTP {status}") from exc
        except httpx2.TimeoutException as exc:
            raise HubUnread(f"{OFFLINE}: {url} did not answer within {self.timeout_s:g} s") from exc
        except (httpx2.TransportError, OSError) as exc:
            raise HubUnread(f"{OFFLINE}: cannot reach {url} ({_first_line(exc)})") from exc
        read_at = time.time()
        out = []
        for field, (name, _, _) in FIGURES.items():
            value = getattr(info, field, None)
            if isinstance(value, int | float) and value >= 0:
                out.append(Reading(model_id, name, float(value), url, read_at))
        if not out:
            raise HubUnread(f"not read: the hub's answer at {url} holds no downloads or likes")
        return out


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


#: An awaitable call on the store's thread: ``await db(store.method, *args)``.
DbCall = Callable[..., Awaitable]


class HubAdoption:
    """Adoption for Score: stored readings, refreshed from the hub under a deadline, never a guess."""

    def __init__(self, reader: HubReader, *, enabled: bool, max_age_s: float, retry_s: float,
                 clock: Callable[[], float] = time.time) -> None:
        self.reader = reader
        self.enabled = enabled
        self.max_age_s = max_age_s
        self.retry_s = retry_s
        self.clock = clock
        self._pool = ThreadPoolExecutor(4, thread_name_prefix="ranker-hub")
        self._failed: dict[str, tuple[float, str]] = {}  # model id → (when, why), so a dead hub is asked rarely

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def for_models(self, entries: Sequence[CatalogEntry], db: DbCall, store) -> dict[str, Adoption]:
        """Each entry's adoption (``store`` is the MatchStore; ``db`` runs its methods on the store's thread)."""
        hubbed = [e for e in entries if e.hub_id]
        latest: dict[tuple[str, str], Reading] = {}
        for r in await db(store.adoption_readings, [e.id for e in hubbed]):
            latest[(r.model_id, r.name)] = r
        results = await asyncio.gather(*(self._one(e, latest, db, store) for e in hubbed))
        return {e.id: a for e, a in zip(hubbed, results, strict=True)}

    async def _one(self, entry: CatalogEntry, latest: dict, db: DbCall, store) -> Adoption:
        stored = tuple(latest[(entry.id, n)] for n in NAMES if (entry.id, n) in latest)
        now = self.clock()
        if len(stored) == len(NAMES) and all(now - r.read_at < self.max_age_s for r in stored):
            return Adoption(stored)
        why = self._why_not(entry.id, now)
        if not why:
            try:
                fresh = await self._read(entry)
            except HubUnread as exc:
                why = str(exc)
                self._failed[entry.id] = (now, why)
                log.info("adoption not read", extra={"model": entry.id, "reason": why})
            else:
                self._failed.pop(entry.id, None)
                await db(store.record_readings, fresh)
                kept = {r.name: r for r in (*stored, *fresh)}
                return Adoption(tuple(kept[n] for n in NAMES if n in kept))
        return Adoption(stored, why)

    def _why_not(self, model_id: str, now: float) -> str:
        if not self.enabled:
            return f"{OFFLINE}: reading the hub is off (RANKER_READ_HUB / --read-hub)"
        if reason := self.reader.offline_reason():
            return reason
        failed = self._failed.get(model_id)
        if failed and now - failed[0] < self.retry_s:
            return failed[1] + f" (not asked again for {self.retry_s:g} s)"
        return ""

    async def _read(self, entry: CatalogEntry) -> list[Reading]:
        loop = asyncio.get_running_loop()
        deadline = self.reader.timeout_s + 1.0  # name resolution is outside the client's own timeout
        try:
            return await asyncio.wait_for(loop.run_in_executor(self._pool, self.reader.read, entry.id, entry.hub_id),
                                          deadline)
        except TimeoutError as exc:
            raise HubUnread(f"{OFFLINE}: {model_info_url(self.reader.endpoint, entry.hub_id)} did not answer "
                            f"within {deadline:g} s") from exc
