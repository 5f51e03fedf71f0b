"""Stage 2: ONNX export, graph simplification and the numerical check after every rewrite.

Not built yet (tracked as its own issue). Nothing in this package is imported by stage 1.
"""
