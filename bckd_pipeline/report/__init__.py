"""What a run leaves for people and for CI: report.json (build.py), report.md (markdown.py), report.html
(html.py), manifest.json (manifest.py), and the label maps report.html shows (evidence.py).

All of it is written once, at the end of `run` and `deploy`. The per-image parity evidence the CI gate
(bckd_pipeline/gate/) reads back is bckd_pipeline/parity_images.py, written by the parity stage.
"""
