"""The console: server-rendered pages (aiohttp + Jinja2) and the same data as JSON, over the
gateway's public API. Admin scope: every page and JSON endpoint asks for a token with the
`admin` scope (HTTP Basic - any user name, the token as password - or a Bearer header) unless
no keys are configured; /healthz and /readyz stay open for probes."""

from __future__ import annotations

import asyncio
import binascii
import logging
import signal
import ssl
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, unquote_to_bytes

import jinja2
from aiohttp import BasicAuth, web
from prometheus_client import Counter

from recmesh.common import limits, tracing
from recmesh.common.auth import Client, digest, load_keys, parse_keys
from recmesh.common.config import load_settings
from recmesh.common.errors import InvalidArgument
from recmesh.common.logs import setup_logging
from recmesh.common.metrics import serve_metrics
from recmesh.common.validation import check_id, check_query, check_text
from recmesh.experiments.assignment import check_experiment_name
from recmesh.v1 import common_pb2, recommendations_pb2
from services.console.config import ConsoleSettings
from services.console.gateway import Gateway, GatewayError
from services.console.live import Live, RankerParameters

log = logging.getLogger("recmesh.console")
HERE = Path(__file__).parent
PAGES = Counter("recmesh_console_requests_total", "Console HTTP requests, by route and status", ["route", "status"])
OPEN_PATHS = ("/healthz", "/readyz")
EVENTS_SHOWN = 30  # on the user page; the JSON has every event the profile holds
MAX_K = 100  # the gateway's default max_k; a narrower gateway answers INVALID_ARGUMENT, shown as is

SETTINGS = web.AppKey("settings", ConsoleSettings)
GATEWAY = web.AppKey("gateway", Gateway)
LIVE = web.AppKey("live", Live)
KEYS = web.AppKey("keys", object)  # dict[str, Client] | None
STATE = web.AppKey("state", dict)
JINJA = web.AppKey("jinja", jinja2.Environment)


def console_keys(settings: ConsoleSettings) -> dict[str, Client] | None:
    """The keys that open the console; None when none are configured (open)."""
    if settings.api_keys_file is None and not settings.api_keys:
        return None
    keys: dict[str, Client] = {}
    if settings.api_keys_file is not None:
        keys |= load_keys(settings.api_keys_file)
    if settings.api_keys:
        keys |= parse_keys(settings.api_keys.replace(";", "\n"), "RECMESH_CONSOLE_API_KEYS")
    return keys


def _token(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, rest = header.partition(" ")
    if scheme.lower() == "bearer" and rest.strip():
        return rest.strip()
    if scheme.lower() == "basic":
        try:
            return BasicAuth.decode(header).password or None
        except (ValueError, binascii.Error):
            return None
    return None


@web.middleware
async def admin_only(request: web.Request, handler):
    keys = request.app[KEYS]
    if keys is None or request.path in OPEN_PATHS:
        return await handler(request)
    token = _token(request)
    client = keys.get(digest(token)) if token else None
    if client is None:
        message = "authorization: log in with a token that has the admin scope" if token is None \
            else "authorization: unknown token"
        raise web.HTTPUnauthorized(text=message, headers={"WWW-Authenticate": 'Basic realm="recmesh console"'})
    if "admin" not in client.scopes:
        raise web.HTTPForbidden(text=f"authorization: client {client.name!r} lacks scope 'admin'")
    return await handler(request)


@web.middleware
async def counted(request: web.Request, handler):
    route = request.match_info.route.resource.canonical if request.match_info.route.resource else "unmatched"
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        PAGES.labels(route, str(status)).inc()


# ---- input: every failure names its field (HTTP 400) ----

def _k(request: web.Request, default: int) -> int:
    raw = request.query.get("k", "")
    if raw == "":
        return default
    try:
        k = int(raw)
    except ValueError:
        raise InvalidArgument("k", f"must be a whole number in 1..{MAX_K}, got {raw!r}") from None
    if not 1 <= k <= MAX_K:
        raise InvalidArgument("k", f"must be in 1..{MAX_K}, got {k}")
    return k


def _event_type(value: int) -> str:
    return common_pb2.EventType.Name(value).removeprefix("EVENT_TYPE_").lower() \
        if value in common_pb2.EventType.values() else str(value)


def _when(timestamp_ms: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(timestamp_ms / 1000)) + f".{timestamp_ms % 1000:03d}Z"


def _ago(seconds: float) -> str:
    seconds = max(0.0, seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit} ago"
    return f"{seconds:.0f} s ago"


# ---- what the pages and the JSON show ----

def answer(reply: recommendations_pb2.RecommendResponse, live: Live, now: float) -> dict:
    return {
        "request_id": reply.request_id,
        "items": [{"item_id": i.item_id, "title": i.title, "categories": list(i.categories),
                   "score": round(i.score, 4), "reasons": list(i.reasons)} for i in reply.items],
        "versions": [{"component": name, "version": version,
                      "freshness": freshness(live.ranker_of(version), now) if name == "ranker" else ""}
                     for name, version in sorted(reply.versions.items())],
        "stage_latency": [{"stage": s.stage, "ms": round(s.ms, 2)} for s in reply.stage_latency],
        "degraded": list(reply.degraded),
        "total_ms": round(reply.total_ms, 2),
    }


def freshness(ranker: RankerParameters | None, now: float) -> str:
    """How old a ranker parameter version is, from the metrics of a ranker serving it; "" when
    no scraped ranker serves it (not configured, or a replica the scrape did not reach)."""
    if ranker is None:
        return ""
    served = f"served since {_ago(now - ranker.serving_since)}" if ranker.serving_since else ""
    if ranker.trained_through <= 0:
        return ", ".join(filter(None, ["shipped or trained offline (no online feedback)", served]))
    return ", ".join(filter(None, [f"learned from feedback up to {_ago(now - ranker.trained_through)}", served]))


def profile(p: recommendations_pb2.UserProfile) -> dict:
    return {
        "user_id": p.user_id,
        "event_count": p.event_count,
        "recent_events": [{"when": _when(e.timestamp_ms), "timestamp_ms": e.timestamp_ms, "type": _event_type(e.type),
                           "item_id": e.item_id, "query": e.query, "value": e.value} for e in p.recent_events],
        "recent_queries": list(p.recent_queries),
        "top_categories": [{"category": c.category, "weight": round(c.weight, 3)} for c in p.top_categories],
    }


def changes(plain: dict, with_query: dict) -> dict:
    """What the typed query changed: items entering the list, items leaving it."""
    before = [i["item_id"] for i in plain["items"]]
    after = [i["item_id"] for i in with_query["items"]]
    return {"entering": [i for i in after if i not in set(before)],
            "leaving": [i for i in before if i not in set(after)]}


def live_view(live: Live, now: float) -> dict:
    window = live.current()
    return {
        "configured": live.configured,
        "error": live.gateway_error,
        "window": None if window is None else {
            "seconds": round(window.seconds, 1), "throughput": round(window.throughput, 2),
            "p99_ms": None if window.p99_ms is None else round(window.p99_ms, 1),
            "degraded_share": None if window.degraded_share is None else round(window.degraded_share, 4),
            "calls": window.calls},
        "rankers": [{"version": version, "replicas": sum(r.version == version for r in live.rankers.values()),
                     "freshness": freshness(live.ranker_of(version), now)}
                    for version in sorted({r.version for r in live.rankers.values()})],
        "ranker_error": live.ranker_error,
    }


# ---- handlers ----

@dataclass
class Page:
    template: str
    title: str


def render(request: web.Request, page: Page, status: int = 200, **data) -> web.Response:
    env = request.app[JINJA]
    html = env.get_template(page.template).render(title=page.title, **data)
    return web.Response(text=html, status=status, content_type="text/html")


def wants_json(request: web.Request) -> bool:
    return request.path.startswith("/api/")


def failure(request: web.Request, status: int, error: dict) -> web.Response:
    if wants_json(request):
        return web.json_response({"error": error}, status=status)
    return render(request, Page("error.html", "Error"), status=status, error=error)


def check_utf8(request: web.Request) -> None:
    """InvalidArgument naming the field when the URL's percent-encoded bytes are not UTF-8.

    aiohttp keeps such a path segment as its literal "%FF" text and replaces such query bytes
    with U+FFFD, so either would reach the gateway as another, valid id or text; the gRPC API
    cannot be given them at all (its strings are UTF-8), so the console refuses them too. The
    field is the route's path variable, or the query parameter's name."""
    path, _, query = request.raw_path.partition("?")
    try:
        unquote_to_bytes(path).decode("utf-8")
    except UnicodeDecodeError:
        names = list(request.match_info)
        raise InvalidArgument(names[0] if names else "path", "is not UTF-8 text once percent-decoded") from None
    for pair in query.split("&"):
        name, _, value = pair.partition("=")
        try:
            field = unquote_to_bytes(name.replace("+", " ")).decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidArgument("query string", "holds a parameter name that is not UTF-8 text") from None
        try:
            unquote_to_bytes(value.replace("+", " ")).decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidArgument(field, "is not UTF-8 text once percent-decoded") from None


def handles_errors(fn: Callable[[web.Request], Awaitable[web.StreamResponse]]):
    """Bad input (check_utf8 first): 400 naming the field. A gateway error: its status code and
    details, shown (400 for INVALID_ARGUMENT, 404 NOT_FOUND, else 502)."""
    async def handler(request: web.Request) -> web.StreamResponse:
        try:
            check_utf8(request)
            return await fn(request)
        except InvalidArgument as exc:
            return failure(request, 400, {"field": exc.field, "message": str(exc)})
        except GatewayError as exc:
            return failure(request, exc.http_status, {"gateway": exc.method, "code": exc.code.name,
                                                      "message": exc.details})
    return handler


def _respond(request: web.Request, page: Page, data: dict) -> web.Response:
    return web.json_response(data) if wants_json(request) else render(request, page, **data)


def _remember(request: web.Request, reply: dict) -> None:
    """The versions of the last answer the console saw, for the overview."""
    request.app[STATE]["last_versions"] = reply["versions"]


@handles_errors
async def user_page(request: web.Request) -> web.Response:
    s, now = request.app[SETTINGS], time.time()
    user_id = check_id(request.match_info["user_id"], "user_id")
    query = check_query(request.query.get("query", ""), "query", limits.QUERY_CHARS)
    k = _k(request, s.default_k)
    lookup = await request.app[GATEWAY].user(user_id, k, query)
    live = request.app[LIVE]
    plain = answer(lookup.plain, live, now)
    data = {"user_id": user_id, "query": query, "k": k, "profile": profile(lookup.profile), "recommendations": plain,
            "with_query": None, "changes": None, "events_shown": EVENTS_SHOWN}
    if lookup.with_query is not None:
        data["with_query"] = answer(lookup.with_query, live, now)
        data["changes"] = changes(plain, data["with_query"])
    _remember(request, data["with_query"] or plain)
    return _respond(request, Page("user.html", f"User {user_id}"), data)


@handles_errors
async def item_page(request: web.Request) -> web.Response:
    s = request.app[SETTINGS]
    item_id = check_id(request.match_info["item_id"], "item_id")
    k = _k(request, s.default_k)
    similar = answer(await request.app[GATEWAY].similar_to_item(item_id, k), request.app[LIVE], time.time())
    _remember(request, similar)
    return _respond(request, Page("item.html", f"Item {item_id}"), {"item_id": item_id, "k": k, "similar": similar})


@handles_errors
async def search_page(request: web.Request) -> web.Response:
    s = request.app[SETTINGS]
    text = check_text(request.query.get("text", ""), "text", limits.QUERY_CHARS)
    if not text:
        raise InvalidArgument("text", "must not be empty")
    k = _k(request, s.default_k)
    found = answer(await request.app[GATEWAY].search(text, k), request.app[LIVE], time.time())
    _remember(request, found)
    return _respond(request, Page("search.html", f"Search {text}"), {"text": text, "k": k, "found": found})


@handles_errors
async def lookup_form(request: web.Request) -> web.Response:
    """The overview's forms land here: /go?user_id=... or /go?item_id=... -> that page."""
    for field in ("user_id", "item_id"):
        if field in request.query:
            value = check_id(request.query[field].strip(), field)
            # The id as one percent-encoded path segment: a "/" in it must not split it, and a
            # browser resolves "." and ".." segments (encoded or not) - a redirect to one would
            # leave /users/ for another page.
            if value in (".", ".."):
                raise InvalidArgument(field, f"{value!r} cannot be a page's address; use the API")
            page = request.app.router[f"{field}_page"].url_for(**{field: "-"}).path[:-1]
            raise web.HTTPFound(page + quote(value, safe=""))
    raise InvalidArgument("user_id", "give user_id or item_id")


def experiment_row(e) -> dict:
    """An experiment as the pages show it (common.proto Experiment, state by name)."""
    from google.protobuf import json_format

    return {"name": e.name, "state": common_pb2.ExperimentState.Name(e.state).removeprefix("EXPERIMENT_STATE_"),
            "control": e.control, "primary": e.primary_metric, "stopped_reason": e.stopped_reason,
            "created": _when(e.created_ms), "stopped": _when(e.stopped_ms) if e.stopped_ms else "",
            "variants": [{"name": v.name, "share": v.share,
                          "overrides": json_format.MessageToDict(v.overrides, preserving_proto_field_name=True)}
                         for v in e.variants]}


@handles_errors
async def experiments_page(request: web.Request) -> web.Response:
    rows = [experiment_row(e) for e in await request.app[GATEWAY].experiments()]
    return _respond(request, Page("experiments.html", "Experiments"), {"experiments": rows})


@handles_errors
async def experiment_page(request: web.Request) -> web.Response:
    """One experiment's report: per-variant metrics with intervals, against the control, the
    guardrail's decision, and its plot (/experiments/<name>.png)."""
    from recmesh.experiments.report import text

    name = check_experiment_name(request.match_info["name"], "name")
    report = await request.app[GATEWAY].experiment_report(name)
    table = text(report) if report["variants"] else report.get("note", "")
    return _respond(request, Page("experiment.html", f"Experiment {name}"),
                    {"name": name, "report": report, "table": table})


@handles_errors
async def experiment_png(request: web.Request) -> web.Response:
    from recmesh.experiments.report import plot

    name = check_experiment_name(request.match_info["name"], "name")
    report = await request.app[GATEWAY].experiment_report(name)
    if not report["variants"]:
        raise web.HTTPNotFound(text=f"no answers recorded under {name} yet")

    def draw() -> bytes:
        with tempfile.TemporaryDirectory() as tmp:
            return plot(report, Path(tmp) / "report.png").read_bytes()

    png = await asyncio.get_running_loop().run_in_executor(None, draw)
    return web.Response(body=png, content_type="image/png", headers={"Cache-Control": "no-store"})


async def overview(request: web.Request) -> web.Response:
    now = time.time()
    return render(request, Page("index.html", "recmesh console"), live=live_view(request.app[LIVE], now),
                  last_versions=request.app[STATE].get("last_versions"), settings=request.app[SETTINGS])


async def live_json(request: web.Request) -> web.Response:
    return web.json_response(live_view(request.app[LIVE], time.time()))


async def live_png(request: web.Request) -> web.Response:
    from services.console.plots import live_png as plot  # matplotlib is loaded on the first plot

    series = request.app[LIVE].series()
    png = await asyncio.get_running_loop().run_in_executor(None, plot, series)
    return web.Response(body=png, content_type="image/png", headers={"Cache-Control": "no-store"})


async def healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok")


async def readyz(request: web.Request) -> web.Response:
    """Ready until SIGTERM. Not tied to the gateway's health: while the gateway is down the
    console is what shows it (its pages answer with the gateway's error), so it stays in its
    Service; the body says whether the gateway is SERVING."""
    if request.app[STATE].get("draining"):
        return web.Response(status=503, text="draining")
    serving = await request.app[GATEWAY].serving()
    return web.Response(text=f"ready; gateway {request.app[SETTINGS].gateway_addr} "
                             f"{'SERVING' if serving else 'not SERVING'}")


def build_app(settings: ConsoleSettings) -> web.Application:
    """Call inside the event loop (the gateway channel binds to it)."""
    app = web.Application(middlewares=[counted, admin_only])
    app[SETTINGS] = settings
    app[KEYS] = console_keys(settings)
    app[GATEWAY] = Gateway(settings)
    app[LIVE] = Live(settings)
    app[STATE] = {}
    app[JINJA] = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"),
                                      autoescape=jinja2.select_autoescape(["html"]), undefined=jinja2.StrictUndefined)
    r = app.router
    r.add_get("/", overview)
    r.add_get("/go", lookup_form)
    r.add_get("/users/{user_id:.+}", user_page, name="user_id_page")
    r.add_get("/items/{item_id:.+}", item_page, name="item_id_page")
    r.add_get("/search", search_page)
    r.add_get("/api/users/{user_id:.+}", user_page)
    r.add_get("/api/items/{item_id:.+}", item_page)
    r.add_get("/api/search", search_page)
    r.add_get("/experiments", experiments_page)
    r.add_get("/experiments/{name}.png", experiment_png)
    r.add_get("/experiments/{name}", experiment_page)
    r.add_get("/api/experiments", experiments_page)
    r.add_get("/api/experiments/{name}", experiment_page)
    r.add_get("/api/live", live_json)
    r.add_get("/live.png", live_png)
    r.add_get("/healthz", healthz)
    r.add_get("/readyz", readyz)
    r.add_static("/static", HERE / "static")

    async def scraping(app: web.Application):
        task = asyncio.create_task(app[LIVE].run()) if settings.gateway_metrics_url or settings.ranker_metrics_url \
            else None
        yield
        if task is not None:
            task.cancel()
        await app[GATEWAY].close()

    app.cleanup_ctx.append(scraping)
    return app


def _ssl(settings: ConsoleSettings) -> ssl.SSLContext | None:
    if settings.tls_cert_file is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(settings.tls_cert_file, settings.tls_key_file)
    if settings.tls_client_ca_file is not None:
        context.load_verify_locations(settings.tls_client_ca_file)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


async def serve(settings: ConsoleSettings) -> None:
    """Until SIGTERM/SIGINT: then /readyz says 503, the listener closes, requests in flight get
    grace_s to finish, the gateway channel closes."""
    app = build_app(settings)
    if app[KEYS] is None:
        log.warning("no keys: the console is open to anyone who reaches it (set RECMESH_CONSOLE_API_KEYS_FILE)")
    # aiohttp reads a shutdown timeout of 0 as "wait without limit": GRACE_S 0 means no grace.
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=max(settings.grace_s, 0.001),
                           access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.port, ssl_context=_ssl(settings))
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise SystemExit(f"console: cannot listen on {settings.host}:{settings.port} ({exc}): another process "
                         "has it? set RECMESH_CONSOLE_PORT (or --port)") from None
    serve_metrics(settings.metrics_port)
    log.info("listening", extra={"address": f"{settings.host}:{settings.port}", "gateway": settings.gateway_addr,
                                 "login": app[KEYS] is not None, "tls": settings.tls_cert_file is not None})
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("stopping", extra={"grace_s": settings.grace_s})
    app[STATE]["draining"] = True
    await runner.cleanup()  # stops listening, waits up to grace_s for requests in flight
    log.info("stopped")


def main() -> None:
    settings = load_settings(ConsoleSettings)
    setup_logging("console", settings.log_level)
    tracing.setup("console", settings.trace_exporter)  # before the gateway channel is built
    try:
        keys = console_keys(settings)  # a bad key line stops the console at start, naming it
    except (OSError, ValueError) as exc:
        raise SystemExit(f"invalid ConsoleSettings configuration: api_keys: {exc}") from None
    if keys is not None and not any("admin" in c.scopes for c in keys.values()):
        raise SystemExit("invalid ConsoleSettings configuration: api_keys: no key has the admin scope, "
                         "so no one could open the console")
    asyncio.run(serve(settings))
