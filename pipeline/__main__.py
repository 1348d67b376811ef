import sys

if sys.argv[1:2] == ["serve"]:
    # Straight to the collector, not through pipeline.main: that module imports Apache Beam (about
    # 1 s and 100 MB of every start), which only `serve --warehouse` (embedded) loads, itself.
    import signal
    # A stop during the imports below is a clean exit 0 (nothing accepted yet); serve.main puts
    # its own start-up handler in place first thing (pipeline/serve.py _stop_before_listening).
    signal.signal(signal.SIGTERM, lambda sig, frame: sys.exit(0))
    signal.signal(signal.SIGINT, lambda sig, frame: sys.exit(0))
    from pipeline import serve
    sys.exit(serve.main(sys.argv[2:]))

from pipeline.main import main  # noqa: E402

sys.exit(main())
