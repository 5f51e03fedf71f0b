"""The CI gate: a run's report.json against a budgets file, and optionally an older report.

budgets.py reads and checks the TOML budgets file; gate.py makes one check per budget; noise.py is
the statistics behind the noise-aware checks; output.py prints them and writes JUnit and Markdown.
Nothing here imports torch or the runtimes: a CI job that only gates stays light.
"""
