"""`python -m pipeline` and the `sluice` console script (setup.py's entry point is main())."""
import sys


def main() -> int:
    if sys.argv[1:2] == ["serve"]:
        import signal
        # A stop during the imports below is a clean exit 0 (nothing accepted yet); serve.main puts
        # its own start-up handler in place first thing (pipeline/serve.py _stop_before_listening).
        signal.signal(signal.SIGTERM, lambda sig, frame: sys.exit(0))
        signal.signal(signal.SIGINT, lambda sig, frame: sys.exit(0))
        # Straight to the collector, not through pipeline.main: that module imports Apache Beam
        # (about 1 s and 130 MB of every start), which only `serve --warehouse` (embedded) loads.
        from pipeline import serve
        return serve.main(sys.argv[2:])
    if sys.argv[1:2] == ["experiments"]:
        # Straight to the analysis, which runs SQL in the warehouse: no Beam import either.
        from pipeline import experiments
        return experiments.main(sys.argv[2:])
    from pipeline.main import main as run
    return run()


if __name__ == "__main__":
    sys.exit(main())
