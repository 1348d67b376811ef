"""`python -m pipeline serve`: the collection API, the HTTP endpoint SDKs send events to.

    python -m pipeline serve [--config PATH] (--sink DIR | --sink gs://BUCKET/PREFIX
        | --sink pubsub://projects/P/topics/T | --warehouse duckdb:///PATH)
        [--host 127.0.0.1] [--port 8088]

--sink DIR                  accepted requests appended to rotated newline-delimited JSON files
                            (DIR/*.jsonl once closed: what `--input_files 'DIR/*.jsonl'` reads)
--sink gs://BUCKET/PREFIX   the same records uploaded as objects under the prefix
--sink pubsub://projects/P/topics/T
                            one Pub/Sub message per accepted request (production, Cloud Run)
--warehouse duckdb:///PATH  embedded: the collector also loads what it accepts into this DuckDB
                            warehouse every few seconds, through the pipeline's own graph; query
                            it meanwhile with `python -m pipeline.query duckdb:///PATH ...`
--config PATH               the config file: its `sources:` (write keys) and `collector:`
                            (limits) sections, and in embedded mode everything the pipeline reads
--host HOST                 the address to listen on (default 127.0.0.1; 0.0.0.0 in a container)
--port PORT                 the port (default 8088; 0: any free port, printed at start)

Exactly one of --sink and --warehouse. SIGTERM or SIGINT: stop accepting, finish the requests
in flight, make everything accepted durable (embedded: loaded), exit 0. docs/collector.md.
"""
import argparse
import logging
import signal
import sys

# Not pipeline.config or pipeline.main: they import the stages and so Apache Beam (about 1 s and
# 100 MB), which only embedded mode needs; config_file reads and checks the file without it.
from pipeline import config_file
from pipeline.errors import OneLineParser, UsageError, did_you_mean

DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 8088
log = logging.getLogger("sluice.collector")


def parse_args(argv: list) -> argparse.Namespace:
    parser = OneLineParser(prog="python -m pipeline serve", add_help=False, allow_abbrev=False)
    parser.add_argument("--config")
    parser.add_argument("--sink")
    parser.add_argument("--warehouse")
    parser.add_argument("--host", default=DEFAULT_HOST)
    parser.add_argument("--port", default=str(DEFAULT_PORT))
    args, rest = parser.parse_known_args(argv)
    if rest:
        known = parser.option_names()
        raise UsageError(f"unrecognized option {rest[0]}{did_you_mean(rest[0].split('=', 1)[0], known)} "
                         "(see python -m pipeline serve --help)"
                         if rest[0].startswith("-") else f"unexpected argument {rest[0]!r}")
    if (args.sink is None) == (args.warehouse is None):
        raise UsageError("give exactly one of --sink (DIR, gs://BUCKET/PREFIX or pubsub://projects/P/topics/T) "
                         "and --warehouse duckdb:///PATH" + (" (got both)" if args.sink else ""))
    if not args.port.isdigit() or not 0 <= int(args.port) <= 65535:
        raise UsageError(f"--port {args.port!r}: a port number, 0 to 65535 (0: any free port)")
    args.port = int(args.port)
    if not args.host:
        raise UsageError("--host: an address to listen on, such as 127.0.0.1")
    if args.sink is not None and not args.sink.strip():
        raise UsageError("--sink: a directory, gs://BUCKET/PREFIX or pubsub://projects/P/topics/T")
    if args.warehouse is not None and not (args.warehouse.startswith("duckdb:///")
                                           and len(args.warehouse) > len("duckdb:///")):
        raise UsageError(f"--warehouse {args.warehouse!r}: embedded mode loads a DuckDB file, duckdb:///PATH "
                         "(for BigQuery, run the collector with --sink and a pipeline job)")
    return args


def _sink(url: str):
    """(the sink for --sink URL, how the start line names it)."""
    if url.startswith("pubsub:"):
        from collector.sinks.pubsub import PubSubSink
        try:
            return PubSubSink(url), url
        except ValueError:
            raise UsageError(f"--sink {url!r}: expected pubsub://projects/PROJECT/topics/TOPIC") from None
    if url.startswith("gs://"):
        from collector.sinks.spool import GcsSink
        try:
            return GcsSink(url), url
        except ValueError as exc:
            raise UsageError(f"--sink {url!r}: {exc}") from None
    if "://" in url:
        raise UsageError(f"--sink {url!r}: expected a directory, gs://BUCKET/PREFIX or pubsub://projects/P/topics/T")
    from collector.sinks.spool import SpoolSink
    return SpoolSink(url), f"spool {url}"


def settings_of(config_path) -> tuple:
    """(the config document, CollectorSettings with every write key read). The whole file is
    checked against the schema, but only `sources:` and `collector:` are typed here: the rest
    (rules, destinations, contracts) is the pipeline's, checked by the job that reads the sink
    (embedded mode: by FileLoads, before the server starts). Typing it here would import Beam."""
    config = (config_file.read(config_path) if config_path else None) or {}
    config_file.check_schema(config)
    settings = config_file.resolve_collector(config_file.collector_section(config))
    if not settings.sources:
        raise UsageError(f"--config {config_path}: no sources: the collector would refuse every request; "
                         "add a `sources:` section with a name and write_key each" if config_path else
                         "--config: give a config file with a `sources:` section (the write keys to accept)")
    return config, settings


_listened = []   # one True once the server has listened (its own drain handlers took over)


def _stop_before_listening(sig, frame):
    """SIGTERM/SIGINT during start-up (imports, the config, embedded mode's first graph build):
    nothing is accepted yet, so stop now with status 0 and no traceback, rather than die by the
    signal (status -15) or print SIGINT's KeyboardInterrupt. collector.server replaces this
    handler before the sink starts and the socket is served, and puts it back after the sink is
    closed: a signal then (embedded mode's last clean-up) is ignored, the drain is already done."""
    if _listened:
        return
    log.warning("collector: %s received while starting: stopping (nothing was accepted)", signal.Signals(sig).name)
    raise SystemExit(0)


def _mark_listened(app=None, address=None) -> None:
    _listened.append(True)


def main(argv: list) -> int:
    if "--help" in argv or "-h" in argv:
        print(__doc__)
        return 0
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # The collector's own lines (start, drain, stop) at INFO, whatever configured logging before.
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    for name in ("sluice.collector", "collector"):
        logging.getLogger(name).addHandler(handler)
        logging.getLogger(name).propagate = False
    log.setLevel(logging.INFO)
    signal.signal(signal.SIGTERM, _stop_before_listening)
    signal.signal(signal.SIGINT, _stop_before_listening)
    from collector.server import StartError
    try:
        return _serve(parse_args(argv))
    except (UsageError, StartError) as exc:
        print(f"sluice: error: {exc}", file=sys.stderr)
        return 2


def _serve(args) -> int:
    import uvloop

    from collector import server
    sink, described = _sink(args.sink) if args.sink is not None else (None, None)  # checked before the config
    config, settings = settings_of(args.config)
    if sink is not None:
        debugger = _debugger(settings, config, args.config, args.host)

        def on_listening(app, address):
            _mark_listened()
            debugger.install(app, address)
            debugger.look_up_in_warehouse()   # debugger.warehouse: fates from BigQuery, on a thread
            server.settle_heap()   # every module imported: out of the cyclic collector's way

        try:
            return uvloop.run(server.serve(settings, sink, args.host, args.port, described, on_listening))
        finally:
            debugger.close()
    return _serve_embedded(args, settings)


def _debugger(settings, document, config_path, host):
    """The live debugger (collector.debugger), checking events with the config's contracts as
    the pipeline will. A contracts directory that cannot be read does not stop the collector
    (its events are not checked against contracts here): the pipeline job reports it. Not read
    at all when the debugger will be off (collector.debugger.settings.access)."""
    from collector.debugger.service import Debugger
    from collector.debugger.settings import access
    if not access(settings.debugger, host)[0]:
        return Debugger(settings)
    # Only now: pipeline.config and contracts import the stages (and Beam), which serve --sink
    # needs for a debugger that is on only (collector.debugger.service imports none).
    from pipeline import config as config_module, contracts
    config = config_module.Config()   # decode's defaults, should the config's sections not be read
    try:
        # Only the sections the checks read, typed as the pipeline types them: the rest (rules,
        # destinations) is the job's, and may need secrets the collector is not given.
        config = config_module.validate({k: document[k] for k in ("decode", "warehouse", "contracts")
                                         if k in document})
        config = contracts.load(config, config_path)
    except Exception as exc:  # noqa: BLE001 - a usage error or an unreadable gs:// directory alike
        log.warning("debugger: events are not checked against contracts: %s", exc)
        config = config._replace(contracts=None)
    return Debugger(settings, config.contracts, config.decode)


def _serve_embedded(args, settings) -> int:
    """--warehouse duckdb:///PATH: the spool beside the warehouse, loaded by the pipeline's batch
    graph in this process (pipeline.main.FileLoads), and pipeline.query answered over loopback."""
    import uvloop

    from collector import query, server
    from collector.debugger.service import Debugger
    from collector.embedded import EmbeddedSink, LoaderMetrics
    from pipeline.main import FileLoads

    if settings.debugger.warehouse:
        log.warning("debugger.warehouse is for serve --sink: embedded mode looks fates up in its own warehouse")
    path = args.warehouse[len("duckdb:///"):]
    loads = FileLoads((["--config", args.config] if args.config else []) + ["--warehouse", args.warehouse])
    sink = EmbeddedSink.for_warehouse(path, loads, limits=loads.limits)
    advertised = []
    debugger = Debugger(settings, loads.plan.config.contracts, loads.limits, loads.plan.config)   # the loads' own

    def on_listening(app, address):
        _mark_listened()
        token = query.advertise(path, args.host, address[1])
        advertised.append(token)
        app.routes[query.PATH] = query.QueryEndpoint(loads.cursor, token)
        app.metrics.registry.register(LoaderMetrics(sink))   # the loader's runs and outcomes on /metrics
        debugger.install(app, address)
        if debugger.on:   # each load's outcomes, looked up in what it wrote (collector.debugger.fates)
            sink.loader.on_loaded = debugger.fates(loads.cursor).loaded
        server.settle_heap()

    try:
        return uvloop.run(server.serve(settings, sink, args.host, args.port,
                                       f"embedded, warehouse {args.warehouse}", on_listening))
    finally:
        for token in advertised:
            query.withdraw(path, token)
        loads.close()
