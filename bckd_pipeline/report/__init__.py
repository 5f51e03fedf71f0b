"""What a run leaves for people and for CI: report.json (build.py), report.md (markdown.py), report.html
(html.py), manifest.json (manifest.py), and the per-image evidence behind them (evidence.py).

The per-image evidence is what the CI gate (bckd_pipeline/gate/) reads back; the rest is written
once, at the end of `run` and `deploy`.
"""
