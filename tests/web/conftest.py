"""Fixtures for the web tests: the API as a subprocess (the README's run command), nginx in
front of it from the repo's template, and Debian's Chromium driven by Playwright.

The nginx template is the one docker-compose mounts (deploy/nginx.conf.template); it is
rendered here the way the nginx image's envsubst step does, so tests and deployment share it.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest
from bench.server import ServerProcess, free_port

REPO = Path(__file__).resolve().parents[2]
FRONTEND = REPO / "frontend"
DEPLOY = REPO / "deploy"
NGINX_TEMPLATE = DEPLOY / "nginx.conf.template"
NGINX_MAIN = DEPLOY / "nginx.conf"
PLACEHOLDERS = ("API_UPSTREAM", "LISTEN_PORT", "FRONTEND_ROOT")


def query(page) -> dict[str, str]:
    """The page URL's query string as a dict (the UI's state)."""
    return {k: v[0] for k, v in parse_qs(urlparse(page.url).query).items()}


def images(base: str) -> dict[str, str]:
    """Image name -> id, from the server's listing."""
    with urllib.request.urlopen(f"{base}/api/images") as response:
        return {i["name"]: i["id"] for i in json.load(response)}


def wait_http(url: str, timeout: float, expect: int = 200) -> None:
    """Poll ``url`` until it answers ``expect``; raise TimeoutError with the last failure."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == expect:
                    return
                last = f"status {response.status}"
        except urllib.error.HTTPError as err:
            last = f"status {err.code}"
            err.close()
        except OSError as err:
            last = str(err)
        time.sleep(0.25)
    raise TimeoutError(f"{url} did not answer {expect} within {timeout}s: {last}")


def render_template(text: str, values: dict[str, str]) -> str:
    """Substitute ``${NAME}`` for the known placeholders only, like the image's envsubst filter."""
    missing = [name for name in PLACEHOLDERS if name not in values]
    if missing:
        raise ValueError(f"expected values for {', '.join(PLACEHOLDERS)}; missing {missing}")
    out = text
    for name in PLACEHOLDERS:
        out = out.replace("${" + name + "}", values[name])
    left = re.findall(r"\$\{\w+\}", out)
    if left:
        raise ValueError(f"unrendered placeholders left in the nginx template: {left}")
    return out


def nginx_prefix(prefix: Path, *, api_upstream: str, listen_port: int, frontend_root: Path) -> Path:
    """Lay out a self-contained nginx prefix (main config + rendered server block); return the
    main config path, to run as ``nginx -e stderr -p PREFIX -c CONF -g 'daemon off;'``."""
    (prefix / "conf.d").mkdir(parents=True, exist_ok=True)
    (prefix / "tmp").mkdir(exist_ok=True)
    server = render_template(
        NGINX_TEMPLATE.read_text(),
        {
            "API_UPSTREAM": api_upstream,
            "LISTEN_PORT": str(listen_port),
            "FRONTEND_ROOT": str(frontend_root),
        },
    )
    (prefix / "conf.d" / "default.conf").write_text(server)
    conf = prefix / "nginx.conf"
    shutil.copyfile(NGINX_MAIN, conf)
    return conf


def nginx_command(prefix: Path, conf: Path, *extra: str) -> list[str]:
    binary = shutil.which("nginx") or "/usr/sbin/nginx"
    return [binary, "-e", "stderr", "-p", str(prefix), "-c", str(conf), *extra]


CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
SCREENSHOTS = REPO / "artifacts" / "screenshots"


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


@pytest.fixture(scope="session")
def nginx_layout() -> Callable[..., Path]:
    """``nginx_prefix`` for tests that only render and check the config."""
    return nginx_prefix


def serve(data: Path, env: dict[str, str] | None = None) -> Iterator[str]:
    """``convscope serve`` on 127.0.0.1 with data folder ``data`` (the one server helper,
    bench/server.py); yields its URL and stops it afterwards."""
    server = ServerProcess(data, data / "serve.log", env)
    try:
        server.wait_ready(timeout=180)
    except (RuntimeError, TimeoutError) as exc:
        server.stop(timeout=15)
        pytest.fail(f"convscope did not become ready: {exc}")
    try:
        yield server.url
    finally:
        server.stop(timeout=15)


@pytest.fixture(scope="session")
def api_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``convscope serve --host 127.0.0.1 --port PORT`` with a throwaway data dir."""
    yield from serve(tmp_path_factory.mktemp("convscope-data"))


@pytest.fixture(scope="session")
def nginx_url(api_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """nginx from deploy/nginx.conf.template in front of the API, as a plain process."""
    if not (shutil.which("nginx") or Path("/usr/sbin/nginx").exists()):
        pytest.fail("nginx is not installed: scripts/test installs it (apt-get install nginx)")
    prefix = tmp_path_factory.mktemp("nginx")
    port = free_port()
    conf = nginx_prefix(
        prefix,
        api_upstream=api_url.removeprefix("http://"),
        listen_port=port,
        frontend_root=REPO / "frontend",
    )
    log = (prefix / "nginx.log").open("wb")
    proc = subprocess.Popen(
        nginx_command(prefix, conf, "-g", "daemon off;"), stdout=log, stderr=subprocess.STDOUT
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/readyz", timeout=20)
    except TimeoutError:
        _stop(proc)
        log.close()
        pytest.fail(f"nginx did not start:\n{(prefix / 'nginx.log').read_text()}")
    yield url
    _stop(proc)
    log.close()


@pytest.fixture(params=["direct", "nginx"])
def base_url(request: pytest.FixtureRequest) -> str:
    """The UI served by the API itself, and through the nginx front."""
    return str(request.getfixturevalue("api_url" if request.param == "direct" else "nginx_url"))


@pytest.fixture(scope="session")
def browser() -> Iterator[object]:
    if not Path(CHROMIUM).exists():
        pytest.fail(
            f"{CHROMIUM} is not installed: scripts/test installs it (apt-get install chromium)"
        )
    from playwright import sync_api

    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


class Console:
    """Console errors, uncaught page errors and requests that left the origin."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.requests: list[str] = []
        self.allowed: list[str] = []

    def allow(self, fragment: str) -> None:
        self.allowed.append(fragment)

    def unexpected(self) -> list[str]:
        return [e for e in self.errors if not any(a in e for a in self.allowed)]


@pytest.fixture
def console() -> Console:
    return Console()


@pytest.fixture
def new_page(browser, console: Console, request: pytest.FixtureRequest):
    """Factory for pages in fresh contexts (no shared history or cache); checks the console."""
    contexts = []

    def make(width: int = 1280, height: int = 800):
        context = browser.new_context(viewport={"width": width, "height": height})
        contexts.append(context)
        page = context.new_page()
        page.set_default_timeout(60_000)
        page.on("console", lambda m: console.errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: console.errors.append(f"pageerror: {e}"))
        page.on("request", lambda r: console.requests.append(r.url))
        return page

    yield make
    for context in contexts:
        context.close()
    assert console.unexpected() == [], f"console errors in {request.node.name}"


@pytest.fixture
def page(new_page):
    return new_page()


@pytest.fixture
def shoot(request: pytest.FixtureRequest):
    """Save a screenshot under artifacts/screenshots/ (gitignored) for a human to look at."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)

    def take(page, name: str, *, full_page: bool = False) -> Path:
        suffix = request.node.callspec.id if hasattr(request.node, "callspec") else ""
        path = SCREENSHOTS / f"{name}{'-' + suffix if suffix else ''}.png"
        page.screenshot(path=str(path), full_page=full_page)
        return path

    return take
