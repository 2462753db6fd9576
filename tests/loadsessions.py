"""Several pathologists at once: the app served on loopback and N browser sessions diagnosing real images.

Shared by the load test (``tests/test_load.py``) and the load bench (``bench/load.py``). Each session is a
Playwright browser context of one chromium (its own cookies, hence its own Streamlit session) that, round after
round, opens Diagnose, uploads 4 BreakHis images and waits until every image shows its verdict card and its
heat map. A round's *verdict latency* is the time from the upload to the last card and heat map drawn.

What counts as an error (each is listed with the session and round): an exception box on the page, a traceback
in the page text, an uncaught JavaScript error, a round that did not finish in time, and a *lost result* (an
uploaded image without its card, or a card naming another image). The server's log is read for tracebacks
(:func:`server_tracebacks`); the server's memory and CPU time, and the browser's CPU time, are sampled with
:class:`ProcessSampler`.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from servers import free_port, stop, wait_for

REPO = Path(__file__).resolve().parents[1]
IMAGES_PER_ROUND = 4
ROUND_TIMEOUT_S = 300.0
"""A round that has not shown every verdict and heat map after this long is an error (seconds)."""
PAGE_TIMEOUT_MS = 180_000
SIGN_IN_PASSWORDLESS_FIELD = "input[name=sub]"
"""The mock OpenID provider's sign-in form: the user's subject, no password."""
TRACEBACK = "Traceback (most recent call last)"


@dataclass
class ServedApp:
    """The app (and the mock sign-in provider where sign-in is on) running on loopback ports.

    Attributes:
        url: the app's address, ``http://127.0.0.1:<port>``.
        server: the ``streamlit run app.py`` process.
        log_path: its stdout and stderr.
        users: the e-mail addresses sessions sign in with (viewers in the roles file); empty without sign-in.
        provider: the mock OpenID Connect provider's process, or None without sign-in.
    """

    url: str
    server: subprocess.Popen
    log_path: Path
    users: list[str]
    provider: subprocess.Popen | None = None

    def stop(self) -> None:
        stop(self.server)
        if self.provider is not None:
            stop(self.provider)


def sign_in_available() -> bool:
    """Whether the mock OpenID Connect provider and Streamlit's sign-in (Authlib) are installed."""
    import warnings

    try:
        with warnings.catch_warnings():  # their deprecation notices about their own dependencies
            warnings.simplefilter("ignore")
            import authlib  # noqa: F401
            import oidc_provider_mock  # noqa: F401
    except ImportError:
        return False
    return True


def serve_app(runs_root: Path, data_root: Path, folder: Path, users: int = 0) -> ServedApp:
    """Start ``streamlit run app.py`` on a free loopback port (with a mock sign-in provider and ``users`` viewers
    when ``users`` > 0) and wait until it answers. Logs go to ``folder``; the caller stops it (``.stop()``)."""
    provider = None
    options: list[str] = []
    env = {**os.environ, "BREAKHIS_RUNS": str(runs_root), "BREAKHIS_DATA_ROOTS": str(data_root),
           "TF_CPP_MIN_LOG_LEVEL": "2"}
    port = free_port()
    emails = [f"pathologist{index + 1}@lab.example" for index in range(users)]
    if users:
        provider_port = free_port()
        provider_log = folder / "provider.log"
        with open(provider_log, "w") as log:
            provider = subprocess.Popen(
                [sys.executable, "-m", "oidc_provider_mock", "--host", "127.0.0.1", "--port", str(provider_port)],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        issuer = f"http://127.0.0.1:{provider_port}"
        try:
            wait_for(f"{issuer}/.well-known/openid-configuration", provider, provider_log)
        except BaseException:
            stop(provider)
            raise
        secrets = folder / "secrets.toml"
        secrets.write_text(
            "[auth]\n"
            f'redirect_uri = "http://127.0.0.1:{port}/oauth2callback"\n'
            'cookie_secret = "a-load-test-cookie-secret-of-enough-length"\n'
            'client_id = "breakhis-load"\nclient_secret = "breakhis-load-secret"\n'
            f'server_metadata_url = "{issuer}/.well-known/openid-configuration"\n'
        )
        roles = folder / "roles.toml"
        roles.write_text("viewer = [" + ", ".join(f'"{email}"' for email in emails) + "]\n")
        env["BREAKHIS_ROLES"] = str(roles)
        options = ["--secrets.files", str(secrets)]
    log_path = folder / "streamlit.log"
    command = [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true",
               "--server.address", "127.0.0.1", "--server.port", str(port), "--server.fileWatcherType", "none",
               "--browser.gatherUsageStats", "false", *options]
    with open(log_path, "w") as log:
        server = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL, start_new_session=True)
    app = ServedApp(f"http://127.0.0.1:{port}", server, log_path, emails, provider)
    try:
        wait_for(f"{app.url}/_stcore/health", server, log_path)
    except BaseException:
        app.stop()
        raise
    return app


def server_tracebacks(log_path: Path) -> list[str]:
    """Each traceback the server wrote to its log, with the line that ends it (the exception)."""
    lines = log_path.read_text(errors="replace").splitlines()
    found = []
    for index, line in enumerate(lines):
        if TRACEBACK in line:
            end = next((j for j in range(index + 1, len(lines)) if lines[j] and not lines[j][0].isspace()), index)
            found.append(lines[end].strip() or line.strip())
    return found


# ----------------------------------------------------------------------------- memory


BROWSER_PROGRAMS = ("chromium", "chrome", "node")
"""Process names (``/proc/PID/comm``) of the browser and of Playwright's driver, counted as the browser's CPU."""
TICKS_PER_S = os.sysconf("SC_CLK_TCK")


def _children() -> dict[int, list[int]]:
    """Parent pid → its child pids, for every process now."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as handle:
                    parent = int(handle.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry))
    return children


def _tree(pid: int, children: dict[int, list[int]]) -> list[int]:
    """``pid`` and all its descendants."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo += children.get(current, [])
    return found


def _rss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as handle:
            return next((int(line.split()[1]) for line in handle if line.startswith("VmRSS:")), 0)
    except OSError:
        return 0


def _cpu(pid: int) -> tuple[tuple[int, int], float] | None:
    """((pid, start time), CPU seconds used so far, user + system, all threads) of a live process, else None."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (pid, int(fields[19])), (int(fields[11]) + int(fields[12])) / TICKS_PER_S


def _name(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as handle:
            return handle.read().strip()
    except OSError:
        return ""


def tree_rss_mib(pid: int) -> float:
    """Resident memory of process ``pid`` and all its descendants, in MiB (0.0 once it is gone)."""
    return sum(_rss_kib(member) for member in _tree(pid, _children())) / 1024


class ProcessSampler:
    """Samples, every ``interval_s`` seconds in a thread, the server's process tree (resident memory and CPU time)
    and the browser's processes under ``browser_parent`` (CPU time; see ``BROWSER_PROGRAMS``).

    Since the last :meth:`reset`: ``peak_mib`` is the server tree's highest resident memory (MiB),
    :meth:`cpu_s` the CPU seconds each side used (a process living less than one interval is missed).
    """

    def __init__(self, server_pid: int, browser_parent: int, interval_s: float = 0.5):
        self.server_pid, self.browser_parent, self.interval_s = server_pid, browser_parent, interval_s
        self.peak_mib = 0.0
        self._used: dict[str, dict[tuple[int, int], float]] = {"server": {}, "browser": {}}
        self._baseline: dict[tuple[int, int], float] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        children = _children()
        server = _tree(self.server_pid, children)
        browser = [pid for pid in _tree(self.browser_parent, children)
                   if pid not in server and _name(pid).startswith(BROWSER_PROGRAMS)]
        rss_mib = sum(_rss_kib(pid) for pid in server) / 1024
        with self._lock:
            self.peak_mib = max(self.peak_mib, rss_mib)
            for side, pids in (("server", server), ("browser", browser)):
                for key, seconds in filter(None, map(_cpu, pids)):
                    self._used[side][key] = max(seconds, self._used[side].get(key, 0.0))

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval_s)

    def reset(self) -> None:
        self._sample()
        with self._lock:
            self.peak_mib = tree_rss_mib(self.server_pid)
            self._baseline = {key: seconds for used in self._used.values() for key, seconds in used.items()}

    def cpu_s(self, side: str) -> float:
        """CPU seconds used by ``side`` ("server" or "browser") since the last :meth:`reset`."""
        self._sample()
        with self._lock:
            return sum(seconds - self._baseline.get(key, 0.0) for key, seconds in self._used[side].items())

    def __enter__(self) -> "ProcessSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


# ----------------------------------------------------------------------------- browser sessions


@dataclass
class SessionResult:
    """One browser session's rounds: verdict latency (seconds) per finished round and every error seen."""

    session: int
    latencies_s: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def rounds(self) -> int:
        return len(self.latencies_s)


def round_images(images: list[Path], session: int, round_index: int, sessions: int) -> list[Path]:
    """The 4 images of a session's round: consecutive rounds of a session never upload the same set."""
    start = (round_index * sessions + session) * IMAGES_PER_ROUND
    return [images[(start + offset) % len(images)] for offset in range(IMAGES_PER_ROUND)]


async def _wait_idle(page) -> None:
    await page.wait_for_function("() => !document.querySelector('[data-testid=\"stStatusWidget\"]')",
                                 timeout=PAGE_TIMEOUT_MS)


async def _sign_in(page, url: str, user: str) -> None:
    await page.goto(url)
    await page.get_by_role("button", name="Sign in").click(timeout=PAGE_TIMEOUT_MS)
    await page.locator(SIGN_IN_PASSWORDLESS_FIELD).fill(user, timeout=60_000)
    await page.get_by_role("button", name="Authorize").click()
    await page.get_by_text(f"{user} · viewer").wait_for(timeout=PAGE_TIMEOUT_MS)


async def _diagnose_round(page, url: str, images: list[Path]) -> float:
    """Open Diagnose, upload ``images``, wait for every verdict card and heat map; the verdict latency (s).

    Raises:
        AssertionError: a lost result (a card missing or naming another image) or an exception on the page.
    """
    await page.goto(f"{url}/diagnose")
    await page.get_by_role("heading", name="Diagnose").first.wait_for(timeout=PAGE_TIMEOUT_MS)
    await _wait_idle(page)
    started = time.monotonic()
    await page.locator("input[type=file]").first.set_input_files([str(path) for path in images])
    for path in images:
        await page.locator("[data-testid='stMarkdownContainer']", has_text=f"{path.name} ·").first.wait_for(
            timeout=ROUND_TIMEOUT_S * 1000)
    await page.wait_for_function(  # the original and its heat-map overlay, decoded, for every image
        "n => [...document.querySelectorAll('[data-testid=\"stImage\"] img')]"
        ".filter(i => i.complete && i.naturalWidth > 0).length >= n", arg=2 * len(images),
        timeout=ROUND_TIMEOUT_S * 1000)
    await _wait_idle(page)
    latency = time.monotonic() - started
    exceptions = await page.locator("[data-testid='stException']").count()
    assert exceptions == 0, f"{exceptions} exception box(es) on Diagnose"
    main_text = await page.inner_text("[data-testid='stMain']")
    assert "Traceback" not in main_text, "a traceback on Diagnose"
    cards = await page.locator("[data-testid='stMarkdownContainer']", has_text="P(malignant) ").all_inner_texts()
    named = sorted(text.split(" · ")[0].strip() for text in cards if " · " in text)
    expected = sorted(path.name for path in images)
    assert named == expected, f"lost result: cards {named}, uploaded {expected}"
    heat_maps = await page.get_by_text(": evidence for “", exact=False).count()  # each heat map's caption
    assert heat_maps == len(images), f"lost result: {heat_maps} heat map(s) for {len(images)} image(s)"
    return latency


async def _session(browser, url: str, session: int, sessions: int, images: list[Path], user: str | None,
                   deadline: float, max_rounds: int) -> SessionResult:
    result = SessionResult(session)
    context = await browser.new_context(viewport={"width": 1400, "height": 900})
    page = await context.new_page()
    page.on("pageerror", lambda error: result.errors.append(f"session {session}: JavaScript error: {error}"))
    try:
        if user:
            await _sign_in(page, url, user)
        for round_index in range(max_rounds):
            if time.monotonic() >= deadline:
                break
            try:
                result.latencies_s.append(
                    await _diagnose_round(page, url, round_images(images, session, round_index, sessions)))
            except AssertionError as exc:
                result.errors.append(f"session {session} round {round_index + 1}: {exc}")
            except Exception as exc:  # Playwright's timeouts and a closed page: the round is lost
                result.errors.append(f"session {session} round {round_index + 1}: {type(exc).__name__}: "
                                     f"{str(exc).splitlines()[0] if str(exc) else ''}")
    except Exception as exc:  # the sign-in failed: this session diagnosed nothing
        result.errors.append(f"session {session}: sign-in failed: {type(exc).__name__}: {str(exc).splitlines()[0]}")
    finally:
        await context.close()
    return result


def run_sessions(app: ServedApp, chromium: str, sessions: int, images: list[Path], duration_s: float,
                 max_rounds: int) -> list[SessionResult]:
    """``sessions`` browser sessions diagnosing at once, each round after round until ``duration_s`` seconds
    have passed (a round under way finishes) or it has done ``max_rounds`` rounds."""
    from playwright.async_api import async_playwright

    async def main() -> list[SessionResult]:
        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(executable_path=chromium,
                                                       args=["--no-sandbox", "--disable-dev-shm-usage"])
            try:
                deadline = time.monotonic() + duration_s
                return list(await asyncio.gather(*(
                    _session(browser, app.url, index + 1, sessions, images,
                             app.users[index] if app.users else None, deadline, max_rounds)
                    for index in range(sessions))))
            finally:
                await browser.close()

    return asyncio.run(main())
