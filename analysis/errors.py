"""The analysis's one error: something the person running it must fix, named by where it is."""


class AnalysisError(Exception):
    """`where` is an option (`--warehouse`, `--experiment`) or a config key path
    (`experiments.metrics[1].when.op`); pipeline/experiments.py prints it on one line, exit 2."""

    def __init__(self, where: str, message: str):
        super().__init__(f"{where}: {message}")
        self.where, self.message = where, message
