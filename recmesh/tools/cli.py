"""`recmesh`: bootstrap the catalog, run the local mesh, and call the API from a shell."""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import shutil
import signal
import sys
import time
from pathlib import Path

DEFAULT_TARGET = "localhost:50060"
# Subcommands that hand all their arguments to a module's main().
PASS_THROUGH = {"eval": "recmesh.tools.eval.run", "train": "recmesh.tools.eval.release",
                "tune-text": "recmesh.tools.eval.release", "load": "recmesh.tools.loadtest",
                "chaos": "recmesh.tools.chaos", "scale": "recmesh.tools.bench.scale"}
# The function of the module a pass-through command calls, when it is not main().
PASS_THROUGH_ENTRY = {"tune-text": "tune_text_main"}
# Subcommands that write into the var (RECMESH_VAR): checked before they start.
WRITES_VAR = {"eval", "train", "tune-text", "load", "chaos", "bootstrap", "import", "run"}
# The extras (recmesh.tools.extras) each subcommand needs; the others need only the client's dependencies.
NEEDS = {"eval": ("serve", "bench"), "train": ("serve",), "tune-text": ("serve",), "load": ("serve", "bench"),
         "chaos": ("serve", "bench"), "scale": ("serve", "bench"),
         "bootstrap": ("serve",), "import": ("serve",), "run": ("serve",), "publish-catalog": ("serve",)}


def _print_message(message) -> None:
    from google.protobuf.json_format import MessageToDict

    shown = MessageToDict(message, preserving_proto_field_name=True)
    print(json.dumps(_numbers_shown(message, shown), indent=2, ensure_ascii=False))


def _numbers_shown(message, shown: dict) -> dict:
    """proto3 JSON leaves a zero out and writes 64-bit integers as strings: a merge that moved
    nothing printed {} and a deletion "events_deleted": "441". Here numbers are numbers and a
    zero is said ("events_moved": 0); empty strings and lists stay out. Nested messages likewise."""
    from google.protobuf.descriptor import FieldDescriptor as F

    wide = {F.TYPE_INT64, F.TYPE_UINT64, F.TYPE_SINT64, F.TYPE_FIXED64, F.TYPE_SFIXED64}
    numeric = wide | {F.TYPE_INT32, F.TYPE_UINT32, F.TYPE_SINT32, F.TYPE_FIXED32, F.TYPE_SFIXED32,
                      F.TYPE_DOUBLE, F.TYPE_FLOAT}
    for field in message.DESCRIPTOR.fields:
        value, repeated = getattr(message, field.name), field.is_repeated
        if field.type in numeric and not repeated and field.name not in shown and not field.has_presence:
            shown[field.name] = value
        elif field.name not in shown:
            continue
        elif field.type in wide:
            shown[field.name] = [int(v) for v in value] if repeated else int(value)
        elif field.type == F.TYPE_MESSAGE and not field.message_type.GetOptions().map_entry:
            if repeated:
                shown[field.name] = [_numbers_shown(m, d) for m, d in zip(value, shown[field.name], strict=True)]
            elif isinstance(shown[field.name], dict):
                shown[field.name] = _numbers_shown(value, shown[field.name])
    return shown


def _client(args):
    from recmesh.client import RecmeshClient

    return RecmeshClient(args.target, timeout_s=args.timeout, token=os.environ.get("RECMESH_TOKEN") or None)


def cmd_make_key(args) -> None:
    from recmesh.common.auth import make_key

    token, line = make_key(args.scopes.split(","), args.name)
    print(json.dumps({"token": token, "key_file_line": line}, indent=2))


def cmd_bootstrap(args) -> None:
    from recmesh.tools.catalog import bootstrap

    bootstrap.run(args)


def cmd_import(args) -> None:
    from recmesh.tools.catalog import importer

    importer.run(args)


def _cli_name() -> str:
    """How to call this CLI from another shell: `recmesh` when it is on PATH, else its path in
    this interpreter's environment (a venv that is not activated)."""
    beside = Path(sys.executable).parent / "recmesh"
    if shutil.which("recmesh") or not beside.exists():
        return "recmesh"
    return str(beside.relative_to(Path.cwd()) if beside.is_relative_to(Path.cwd()) else beside)


def cmd_run(args) -> None:
    from recmesh.tools.demo import MOVIELENS, load_script, run_demo
    from recmesh.tools.devstack import Stack

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    # Explicit: a shell may start us with SIGINT ignored, and SIGTERM should stop cleanly too.
    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, interrupt)
    from recmesh.common.paths import var_dir
    from recmesh.tools.preflight import check_catalog, check_port

    check_catalog(var_dir())  # before minutes of start-up, not after
    check_port(args.port)
    ports = {"gateway": args.port} if args.port else {}
    started = time.perf_counter()
    print("starting tritonserver, updater, retrieval, ranker, encoder, gateway, console ...", flush=True)
    stack = Stack(ports=ports, console=True)
    try:
        stack.start()
        print(f"Triton, the five services and the console ready after {time.perf_counter() - started:.1f} s "
              f"(logs in {stack.var / 'logs'})")
        for name in stack.ports:
            print(f"   {name:9} {stack.address(name)}")
        script = load_script(stack.var)  # read once: the scripted session's and the hint's
        if not args.no_demo:
            run_demo(stack.address("gateway"), script=script)
        if args.exit_after_demo:
            return
        user, query = ("42", "space opera") if script is MOVIELENS else ("someone", script.query)
        print(f"\nrecmesh is up: try `{_cli_name()} --target {stack.address('gateway')} recommend --user {user} "
              f"--query \"{query}\"` in another shell, or open the console at {stack.console_url}users/{user}. "
              "Ctrl-C stops everything.", flush=True)
        supervisor = stack.supervise()  # a crashed service is started again, and said so
        reported = 0
        while True:
            time.sleep(0.5)
            for name, exited, back in supervisor.restarts[reported:]:
                print(f"{name} exited and was restarted ({back - exited:.1f} s)", file=sys.stderr, flush=True)
            reported = len(supervisor.restarts)
    except KeyboardInterrupt:
        print("\nstopping ...")
    finally:
        stack.stop()
        print("stopped")


def cmd_demo(args) -> None:
    from recmesh.tools.demo import run_demo

    run_demo(args.target, args.user)


def _name_and_value(text: str, form: str) -> tuple[str, str]:
    """NAME=VALUE split at the first "=" (argparse type helper: a bad one is a usage error)."""
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"{text!r}: expected {form}")
    return name, value


def _text_set(text: str) -> tuple[str, list[str]]:
    """--where/--not NAME=V1,V2: the text attribute is one of the values."""
    name, values = _name_and_value(text, "NAME=VALUE[,VALUE...], e.g. brand=HP,Canon")
    return name, values.split(",")


def _number_range(text: str) -> tuple[str, float | None, float | None]:
    """--range NAME=MIN:MAX, either bound left empty for an open side (price=10:50, price=:50)."""
    name, bounds = _name_and_value(text, "NAME=MIN:MAX, e.g. price=10:50 or price=:50")
    low, sep, high = bounds.partition(":")
    try:
        if not sep:
            raise ValueError
        return name, float(low) if low.strip() else None, float(high) if high.strip() else None
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected NAME=MIN:MAX with numbers, e.g. price=10:50") from None


def _flag_value(text: str) -> tuple[str, bool]:
    """--flag NAME=true|false."""
    name, value = _name_and_value(text, "NAME=true|false, e.g. in_stock=true")
    if value.lower() not in ("true", "false"):
        raise argparse.ArgumentTypeError(f"{text!r}: expected NAME=true or NAME=false")
    return name, value.lower() == "true"


def _attribute(text: str) -> tuple[str, str | float | bool]:
    """--attr NAME=VALUE (true/false: a flag; a finite number: a number; else a text), or typed:
    NAME:text=VALUE, NAME:number=VALUE, NAME:flag=true|false."""
    key, value = _name_and_value(text, "NAME=VALUE or NAME:text|number|flag=VALUE, e.g. price=89.5")
    name, _, kind = key.partition(":")
    if kind == "text":
        return name, value
    if kind == "flag":
        return _flag_value(f"{name}={value}")
    try:
        number = float(value)
    except ValueError:
        number = None
    if kind == "number":
        if number is None or not math.isfinite(number):
            raise argparse.ArgumentTypeError(f"{text!r}: not a finite number")
        return name, number
    if kind:
        raise argparse.ArgumentTypeError(f"{text!r}: the kind after ':' is text, number or flag")
    if value.lower() in ("true", "false"):
        return name, value.lower() == "true"
    return name, number if number is not None and math.isfinite(number) else value


def add_filter_arguments(p: argparse.ArgumentParser) -> None:
    """Recommend's filters as flags (recommend, similar, batch): categories, seen items, attributes;
    `filter_arguments` reads them back."""
    p.add_argument("--include", action="append", help="only these categories (repeatable)")
    p.add_argument("--exclude", action="append", help="no items in these categories (repeatable)")
    p.add_argument("--include-seen", action="store_true", help="allow items the user already interacted with")
    _attribute_flags(p, "only items whose", "no items whose")


def filter_arguments(args) -> dict:
    """The flags of add_filter_arguments as RecmeshClient.recommend's / similar_items' keyword
    arguments (include_categories, exclude_categories, exclude_seen, attributes)."""
    return {"include_categories": args.include or (), "exclude_categories": args.exclude or (),
            "exclude_seen": not args.include_seen, "attributes": _attribute_filters(args)}


def _attribute_filters(args) -> list:
    """The --where, --not, --range, --not-range and --flag flags as attribute filters."""
    from recmesh.client import flag, in_range, where

    return ([where(name, *values) for name, values in args.where or ()]
            + [where(name, *values, exclude=True) for name, values in args.not_ or ()]
            + [in_range(name, low, high) for name, low, high in args.range or ()]
            + [in_range(name, low, high, exclude=True) for name, low, high in args.not_range or ()]
            + [flag(name, value) for name, value in args.flag or ()])


def _shown_attributes(attributes) -> str:
    """An answer's item attributes for a terminal: " {brand=HP, price=89}"; "" for none."""
    shown = []
    for name in sorted(attributes):
        value = getattr(attributes[name], attributes[name].WhichOneof("kind") or "text")
        if isinstance(value, bool):
            value = str(value).lower()
        elif isinstance(value, float):
            value = f"{value:g}"
        shown.append(f"{name}={value}")
    return f" {{{', '.join(shown)}}}" if shown else ""


def _session_event(text: str):
    """--session ITEM[:TYPE] (TYPE view by default): one inline event of a guest's session."""
    from recmesh.client import EVENT_TYPES, Event

    item, _, kind = text.rpartition(":") if ":" in text else (text, "", "view")
    if not item or kind not in EVENT_TYPES:
        raise argparse.ArgumentTypeError(f"{text!r}: expected ITEM or ITEM:TYPE, TYPE one of {sorted(EVENT_TYPES)}")
    return Event("", item, kind)


def _rule_json(text: str):
    """--rule JSON: one common.proto Rule in its JSON form (argparse type helper)."""
    from google.protobuf import json_format

    from recmesh.v1 import common_pb2

    try:
        return json_format.Parse(text, common_pb2.Rule())
    except json_format.ParseError as exc:
        example = '\'{"name": "acme", "boost": 2, "match": {"categories": ["Drama"]}}\''
        raise argparse.ArgumentTypeError(f"{text!r}: not a Rule in JSON ({exc}); e.g. {example}") from None


def _pin_at(text: str) -> tuple[str, int]:
    """--pin ITEM@POSITION (0 = the top)."""
    item, sep, position = text.rpartition("@")
    try:
        if not sep or not item:
            raise ValueError
        return item, int(position)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected ITEM@POSITION, e.g. 318@0") from None


def cmd_recommend(args) -> None:
    if not args.user and not args.session:
        sys.exit("recmesh recommend: give --user, or --session for a guest without an id")
    with _client(args) as rm:
        reply = rm.recommend(args.user or "", query=args.query or "", k=args.k, diversity=args.diversity,
                             session_events=args.session or (), surface=args.surface or "", rules=args.rule or (),
                             **filter_arguments(args))
    _print_answer(reply, args.json)


def cmd_similar(args) -> None:
    with _client(args) as rm:
        reply = rm.similar_items(args.item, args.text, k=args.k, user_id=args.user, surface=args.surface or "",
                                 rules=args.rule or (), **filter_arguments(args))
    _print_answer(reply, args.json)


def cmd_batch(args) -> None:
    from recmesh.client import filters_proto
    from recmesh.tools import batch

    batch.run(args, filters_proto(**filter_arguments(args)), args.rule or ())


def _print_answer(reply, as_json: bool) -> None:
    """A RecommendResponse for a terminal: one line per item, then time, versions, degradations."""
    if as_json:
        _print_message(reply)
        return
    if not reply.items:
        print("(no item passes the filters and exclusions)")
    for i, item in enumerate(reply.items, start=1):
        print(f"{i:2}. [{item.item_id}] {item.title} ({'|'.join(item.categories)}){_shown_attributes(item.attributes)} "
              f"{item.score:.3f} - {'; '.join(item.reasons)}")
    print(f"-- {reply.total_ms:.1f} ms, versions {dict(reply.versions)}"
          + (f", variant {reply.variant}" if reply.variant else "")
          + (f", degraded: {list(reply.degraded)}" if reply.degraded else ""))


def _rule_from_flags(args):
    """`recmesh rules put`'s flags as a Rule: one action, and the match (ids, categories, and the
    attribute tests of --where, --not, --range, --not-range, --flag)."""
    from recmesh import client

    match = {"item_ids": args.item or (), "categories": args.category or (), "attributes": _attribute_filters(args)}
    if args.boost is not None:
        return client.boost(args.boost, args.name, **match)
    if args.promote is not None:
        return client.promote(args.promote, args.name, **match)
    if args.exclude_items:
        return client.exclude(args.name, **match)
    return client.pin(*args.pin, name=args.name)


def _shown_rule(stored) -> str:
    """A stored rule on one line: name, action, match, surfaces."""
    rule = stored.rule
    action = rule.WhichOneof("action")
    what = {"boost": f"boost ×{rule.boost:g}", "promote_share": f"promote {rule.promote_share:g} of the slots",
            "exclude": "exclude", "pin": f"pin {rule.pin.item_id} at {rule.pin.position}"}.get(action, "no action")
    match = rule.match
    conditions = ([f"items {','.join(match.item_ids)}"] if match.item_ids else []) + \
        ([f"categories {','.join(match.categories)}"] if match.categories else []) + \
        [f"attribute {f.name}" for f in match.attributes]
    surfaces = ", ".join(stored.surfaces) or "every surface"
    return f"{rule.name}: {what}" + (f" of {'; '.join(conditions)}" if conditions else "") + f" ({surfaces})"


def cmd_rules(args) -> None:
    with _client(args) as rm:
        if args.action == "put":
            _print_message(rm.put_rule(_rule_from_flags(args), surfaces=args.surface or ()))
        elif args.action == "delete":
            print(json.dumps({"deleted": rm.delete_rule(args.name)}))
        else:
            rules = rm.list_rules()
            if args.json:
                from recmesh.v1 import common_pb2

                _print_message(common_pb2.ListRulesResponse(rules=rules))
            else:
                for stored in rules:
                    print(_shown_rule(stored))


def _variant_flag(text: str) -> dict:
    """--variant NAME=SHARE[:key=value,...] (keys diversity, exploration, ranking,
    ranker_version, interest_model) as client.variant_proto's mapping, e.g.
    B=0.5:ranking=retrieval_order,diversity=0.3, B=0.5:ranker_version=ranker-linear-v2 or
    B=0.5:interest_model=20261123T065311Z-b."""
    head, _, rest = text.partition(":")
    name, eq, share = head.partition("=")
    if not eq:
        raise argparse.ArgumentTypeError(f"NAME=SHARE[:key=value,...] expected, got {text!r}")
    try:
        variant: dict = {"name": name, "share": float(share)}
        for pair in filter(None, rest.split(",")):
            key, _, value = pair.partition("=")
            if key not in ("diversity", "exploration", "ranking", "ranker_version", "interest_model"):
                raise argparse.ArgumentTypeError(
                    f"unknown override {key!r} (diversity, exploration, ranking, ranker_version, interest_model)")
            variant[key] = value if key in ("ranking", "ranker_version", "interest_model") else float(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: {exc}") from None
    if variant.get("ranking", "model") not in ("model", "retrieval_order"):
        raise argparse.ArgumentTypeError(f"ranking: model or retrieval_order, got {variant['ranking']!r}")
    return variant


def _shown_experiment(e) -> str:
    """An experiment on one line: name, state, variants with shares and overrides."""
    from google.protobuf import json_format

    from recmesh.v1 import common_pb2

    state = common_pb2.ExperimentState.Name(e.state).removeprefix("EXPERIMENT_STATE_")
    variants = ", ".join(
        f"{v.name} {v.share:g}" + (f" {json.dumps(json_format.MessageToDict(v.overrides))}"
                                   if v.overrides.ListFields() else "") for v in e.variants)
    return (f"{e.name}: {state} (control {e.control}, primary {e.primary_metric}): {variants}"
            + (f"; stopped: {e.stopped_reason}" if e.stopped_reason else ""))


def cmd_experiments(args) -> None:
    with _client(args) as rm:
        if args.action == "put":
            _print_message(rm.put_experiment(args.name, args.variant, control=args.control or "",
                                             primary_metric=args.primary or ""))
        elif args.action == "stop":
            _print_message(rm.stop_experiment(args.name, reason=args.reason or ""))
        elif args.action == "list":
            experiments = rm.list_experiments()
            if args.json:
                from recmesh.v1 import common_pb2

                _print_message(common_pb2.ListExperimentsResponse(experiments=experiments))
            else:
                for e in experiments:
                    print(_shown_experiment(e))
        else:
            from recmesh.experiments.report import plot, text

            summary = rm.experiment_report(args.name)
            print(json.dumps(summary, indent=2) if args.json else
                  text(summary) if summary["variants"] else f"no report yet: {summary.get('note', '')}")
            if args.png is not None and summary["variants"]:
                print(f"wrote {plot(summary, args.png)}", file=sys.stderr)


def cmd_interest_models(args) -> None:
    from recmesh.tools import interest_models

    try:
        if args.action == "add":
            print(f"installed {interest_models.add(args.artifact, args.name)}; restart the encoder (and Triton) "
                  "to serve it")
        elif args.action == "remove":
            interest_models.remove(args.name)
            print(f"removed {args.name}; restart the encoder (and Triton)")
        else:
            for row in interest_models.listing():
                print(f"{row['version']}{' (default)' if row['default'] else ''} item space {row['item_space']}"
                      f"{'' if row['catalog_compatible'] else ' (NOT the catalog space: refused for variants)'}"
                      f" {row['path']}")
    except ValueError as exc:
        sys.exit(f"recmesh interest-models: {exc}")


def cmd_track(args) -> None:
    from recmesh.client import Event

    event = Event(args.user, args.item or "", args.type, query=args.query or "", value=args.value,
                  event_id=args.event_id or "")
    with _client(args) as rm:
        _print_message(rm.track_events([event]))


def cmd_upsert(args) -> None:
    with _client(args) as rm:
        item = {"item_id": args.item, "title": args.title, "categories": args.category or [],
                "description": args.description or "", "tags": args.tag or [], "attributes": dict(args.attr or ())}
        _print_message(rm.upsert_items([item]))


def cmd_delete_items(args) -> None:
    with _client(args) as rm:
        _print_message(rm.delete_items(args.items))


def cmd_profile(args) -> None:
    with _client(args) as rm:
        _print_message(rm.profile(args.user))


def cmd_delete_user(args) -> None:
    with _client(args) as rm:
        _print_message(rm.delete_user(args.user))


def cmd_merge_users(args) -> None:
    with _client(args) as rm:
        _print_message(rm.merge_users(args.from_user, args.into_user))


def _attribute_flags(p: argparse.ArgumentParser, only: str, no: str) -> None:
    """--where, --not, --range, --not-range, --flag: attribute tests (`_attribute_filters`)."""
    p.add_argument("--where", action="append", type=_text_set, metavar="NAME=V[,V...]",
                   help=f"{only} text attribute is one of the values, e.g. brand=HP,Canon (repeatable)")
    p.add_argument("--not", dest="not_", action="append", type=_text_set, metavar="NAME=V[,V...]",
                   help=f"{no} text attribute is one of the values (repeatable)")
    p.add_argument("--range", action="append", type=_number_range, metavar="NAME=MIN:MAX",
                   help=f"{only} number attribute is in [MIN, MAX]; a bound may be left out: price=:50 "
                        "(repeatable)")
    p.add_argument("--not-range", action="append", type=_number_range, metavar="NAME=MIN:MAX",
                   help=f"{no} number attribute is in [MIN, MAX] (repeatable)")
    p.add_argument("--flag", action="append", type=_flag_value, metavar="NAME=true|false",
                   help=f"{only} flag attribute is this, e.g. in_stock=true (repeatable)")


def _rule_flags(p: argparse.ArgumentParser) -> None:
    """--surface and --rule: the answer's surface (its stored rules apply) and rules of its own."""
    p.add_argument("--surface", help="the answer's surface (Context.surface): its stored rules apply")
    p.add_argument("--rule", action="append", type=_rule_json, metavar="JSON",
                   help="a business rule for this request, as JSON (common.proto Rule), e.g. "
                        '\'{"name": "acme", "boost": 2, "match": {"attributes": [{"name": "brand", "any_of": '
                        '{"values": ["Acme"]}}]}}\' (repeatable; applied after the stored ones)')


def build_parser() -> argparse.ArgumentParser:
    from recmesh.client import EVENT_TYPES

    parser = argparse.ArgumentParser(prog="recmesh", description=__doc__)
    parser.add_argument("--target", default=DEFAULT_TARGET, help="gateway address (default %(default)s)")
    parser.add_argument("--timeout", type=float, default=2.0, help="seconds per call")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("bootstrap", help="build the catalog, vectors and Qdrant shard (cached)")
    from recmesh.tools.catalog.bootstrap import add_arguments

    add_arguments(p)
    p.set_defaults(func=cmd_bootstrap)

    p = sub.add_parser("import", help="your catalog and events (CSV, JSONL or Parquet) into the var: checked row by "
                                       "row, re-imports apply the difference (recmesh import --help)")
    from recmesh.tools.catalog import importer

    importer.add_arguments(p)
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("make-key", help="a new API key: prints the token (give it to the client) and its hashed "
                                         "line (append it to the gateway's key file)")
    p.add_argument("--scopes", required=True, help="comma-separated: recommend,track,catalog:write,admin")
    p.add_argument("--name", required=True, help="the client's name (in logs and rate limits)")
    p.set_defaults(func=cmd_make_key)

    p = sub.add_parser("publish-catalog", help="copy the bootstrapped catalog into a Qdrant server/cluster collection")
    from recmesh.tools.catalog import publish

    publish.add_arguments(p)
    p.set_defaults(func=lambda args: print(json.dumps(publish.run(args))))

    p = sub.add_parser("run", help="start all services locally, play the scripted session, serve until Ctrl-C")
    p.add_argument("--port", type=int, default=50060, help="gateway port (0: any free port)")
    p.add_argument("--no-demo", action="store_true")
    p.add_argument("--exit-after-demo", action="store_true")
    p.set_defaults(func=cmd_run)

    # Listed for --help; main() hands these to their modules with all their flags (PASS_THROUGH).
    sub.add_parser("eval", help="offline evaluation of the baselines and the interest model, the first part of `make "
                              "eval` (which then checks the served path and replays through a live mesh); "
                              "recmesh eval --help for its flags")
    sub.add_parser("train", help="train the served interest model and install it for Triton (recmesh train --help)")
    sub.add_parser("tune-text", help="re-train the text model from the var's event log, check it on the freshest "
                                      "events, publish it only if better; --every MINUTES for a schedule "
                                      "(recmesh tune-text --help)")
    sub.add_parser("load", help="open-loop load test through the gateway, as `make load` (recmesh load --help)")
    sub.add_parser("scale", help="the catalog at 100 k / 1 M items: derive a var by vector jitter, HNSW recall@100 "
                   "against exact search (recmesh scale --help)")
    sub.add_parser("chaos", help="kill and stop each service under load, as `make chaos` (recmesh chaos --help)")

    p = sub.add_parser("demo", help="play the scripted session against a running gateway")
    p.add_argument("--user", default=None)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("recommend", help="ask for recommendations")
    p.add_argument("--user", help="the user; left out with --session: a guest without an id")
    p.add_argument("--session", action="append", type=_session_event, metavar="ITEM[:TYPE]",
                   help="an event of the user's session sent inline, oldest first, not logged (TYPE: view unless "
                        "given, e.g. 1258:click; repeatable)")
    p.add_argument("--query")
    p.add_argument("-k", type=int, default=10)
    add_filter_arguments(p)
    p.add_argument("--diversity", type=float, default=0.0, help="0..1: trade relevance for variety")
    _rule_flags(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_recommend)

    p = sub.add_parser("similar", help="items like a catalog item or a free text (more like this)")
    anchor = p.add_mutually_exclusive_group(required=True)
    anchor.add_argument("--item", help="the catalog item the answer is like (never in it)")
    anchor.add_argument("--text", help="a free text the answer is like, e.g. a description")
    p.add_argument("--user", default="", help="their seen items are left out, their interest re-orders")
    p.add_argument("-k", type=int, default=10)
    add_filter_arguments(p)
    _rule_flags(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_similar)

    p = sub.add_parser("batch", help="Recommend for every user of a file, one JSON line each (campaigns): "
                                     "resumable, bounded concurrency (recmesh batch --help)")
    from recmesh.tools import batch

    batch.add_arguments(p)
    add_filter_arguments(p)
    p.add_argument("--rule", action="append", type=_rule_json, metavar="JSON",
                   help="a business rule for every request, as JSON (as recommend's --rule; repeatable)")
    p.set_defaults(func=cmd_batch)

    p = sub.add_parser("rules", help="stored business rules: put (create or replace by name), list, delete "
                                     "(needs the admin scope)")
    rules = p.add_subparsers(dest="action", required=True)
    r = rules.add_parser("put", help="store a rule for every answer of its surfaces (none: every answer)")
    r.add_argument("--name", required=True, help="1..128 of A-Z a-z 0-9 _ . : - (reasons say rule:NAME)")
    action = r.add_mutually_exclusive_group(required=True)
    action.add_argument("--boost", type=float, metavar="F", help="multiply the matching items' odds by F "
                                                                 "(> 1 boosts, < 1 buries)")
    action.add_argument("--promote", type=float, metavar="SHARE",
                        help="fill ceil(SHARE * k) slots (0 < SHARE <= 1) with the best matching items")
    action.add_argument("--exclude", dest="exclude_items", action="store_true", help="leave the matching items out")
    action.add_argument("--pin", type=_pin_at, metavar="ITEM@POSITION", help="show ITEM at POSITION (0 = the top)")
    r.add_argument("--item", action="append", help="match: the item id is one of these (repeatable)")
    r.add_argument("--category", action="append", help="match: the item is in one of these (repeatable)")
    _attribute_flags(r, "match: items whose", "match: items unless their")
    r.add_argument("--surface", action="append", help="apply on this surface only (repeatable; none: every one)")
    r.set_defaults(func=cmd_rules)
    r = rules.add_parser("list", help="the stored rules, in the order they apply (by name)")
    r.add_argument("--json", action="store_true")
    r.set_defaults(func=cmd_rules)
    r = rules.add_parser("delete", help="delete a stored rule by name")
    r.add_argument("name")
    r.set_defaults(func=cmd_rules)

    p = sub.add_parser("experiments", help="experiments: put (start one), list, stop, report (per-variant online "
                                           "metrics with intervals; needs the admin scope; docs/experiments.md)")
    experiments = p.add_subparsers(dest="action", required=True)
    r = experiments.add_parser("put", help="start an experiment (one runs at a time)")
    r.add_argument("name", help="1..64 of A-Z a-z 0-9 _ . - (also the assignment hash's key)")
    r.add_argument("--variant", action="append", required=True, type=_variant_flag,
                   metavar="NAME=SHARE[:key=value,...]",
                   help="a variant, in assignment order (repeat; shares sum to 1); overrides: diversity=0..1, "
                        "exploration=0..1, ranking=model|retrieval_order, ranker_version=VERSION (a parameter "
                        "version the updater has: frozen, while the others follow the learner), "
                        "interest_model=VERSION (an interest model the encoder serves: recmesh interest-models "
                        "list), "
                        "e.g. B=0.5:ranking=retrieval_order")
    r.add_argument("--control", help="the variant the others are compared with (default: the first)")
    r.add_argument("--primary", help="the guardrail's metric: ctr_at_k (default), conversion or mrr")
    r.set_defaults(func=cmd_experiments)
    r = experiments.add_parser("list", help="every experiment, running and stopped, in creation order")
    r.add_argument("--json", action="store_true")
    r.set_defaults(func=cmd_experiments)
    r = experiments.add_parser("stop", help="stop an experiment: everyone is served the defaults again")
    r.add_argument("name")
    r.add_argument("--reason", help="why, for the record")
    r.set_defaults(func=cmd_experiments)
    r = experiments.add_parser("report", help="per-variant impressions, CTR@k, conversion, MRR, latency, degraded "
                                              "share with 95%% intervals; each against the control; the guardrail")
    r.add_argument("name")
    r.add_argument("--json", action="store_true", help="the report as JSON")
    r.add_argument("--png", type=Path, metavar="PATH", help="also plot the metrics with their intervals here")
    r.set_defaults(func=cmd_experiments)

    p = sub.add_parser("interest-models", help="the var's interest models for experiments' variants: list, add "
                                                "(a further artifact of the catalog's item space), remove "
                                                "(docs/experiments.md)")
    models = p.add_subparsers(dest="action", required=True)
    models.add_parser("list", help="the default and the further ones, with their item spaces")
    r = models.add_parser("add", help="install an interest model file beside the default (encoder restart)")
    r.add_argument("artifact", type=Path, help="an interest_model.pt trained for the catalog's item space")
    r.add_argument("--name", help="the version name variants use (default: the artifact's own version)")
    r = models.add_parser("remove", help="remove a further interest model by name (encoder restart)")
    r.add_argument("name")
    p.set_defaults(func=cmd_interest_models)

    p = sub.add_parser("track", help="report one event")
    p.add_argument("--user", required=True)
    p.add_argument("--item")
    p.add_argument("--type", required=True, choices=sorted(EVENT_TYPES))
    p.add_argument("--query")
    p.add_argument("--value", type=float, default=0.0)
    p.add_argument("--event-id")
    p.set_defaults(func=cmd_track)

    p = sub.add_parser("upsert", help="add or update one catalog item")
    p.add_argument("--item", required=True)
    p.add_argument("--title", required=True)
    p.add_argument("--category", action="append")
    p.add_argument("--tag", action="append")
    p.add_argument("--description")
    p.add_argument("--attr", action="append", type=_attribute, metavar="NAME=VALUE",
                   help="a filterable attribute: true/false is a flag, a number a number, else a text; or typed, "
                        "NAME:text=VALUE, NAME:number=VALUE, NAME:flag=true (repeatable)")
    p.set_defaults(func=cmd_upsert)

    p = sub.add_parser("delete-items", help="remove catalog items")
    p.add_argument("items", nargs="+")
    p.set_defaults(func=cmd_delete_items)

    p = sub.add_parser("profile", help="what recmesh knows about a user")
    p.add_argument("--user", required=True)
    p.set_defaults(func=cmd_profile)

    p = sub.add_parser("delete-user", help="forget a user")
    p.add_argument("--user", required=True)
    p.set_defaults(func=cmd_delete_user)

    p = sub.add_parser("merge-users", help="move every event of one user id (a guest's session) to another, at "
                                           "sign-in; a repeat moves nothing")
    p.add_argument("--from", dest="from_user", required=True, help="the id whose events move, e.g. a guest session id")
    p.add_argument("--into", dest="into_user", required=True, help="the user they move to")
    p.set_defaults(func=cmd_merge_users)
    return parser


def _var_flag(argv: list[str]) -> Path | None:
    """The folder a command's own --var names (import, bootstrap), checked instead of RECMESH_VAR's."""
    for i, arg in enumerate(argv):
        if arg == "--var" and i + 1 < len(argv):
            return Path(argv[i + 1])
        if arg.startswith("--var="):
            return Path(arg.removeprefix("--var="))
    return None


def main(argv: list[str] | None = None) -> None:
    import grpc

    from recmesh.common.paths import var_dir
    from recmesh.tools.extras import require
    from recmesh.tools.preflight import check_var

    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] and argv[0] in NEEDS and not {"-h", "--help"} & set(argv[1:]):
        require(f"recmesh {argv[0]}", *NEEDS[argv[0]])
        if argv[0] in WRITES_VAR and argv[0] != "import":  # import checks its var itself (a dry run: unwritten)
            flag = _var_flag(argv[1:])
            check_var(flag, "--var") if flag else check_var(var_dir())
    if argv[:1] and argv[0] in PASS_THROUGH:  # commands with their own flags and --help
        entry = PASS_THROUGH_ENTRY.get(argv[0], "main")
        getattr(importlib.import_module(PASS_THROUGH[argv[0]]), entry)(argv[1:])
        return
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except grpc.RpcError as exc:
        sys.exit(f"recmesh: {exc.code().name}: {exc.details()}")


if __name__ == "__main__":
    main()
