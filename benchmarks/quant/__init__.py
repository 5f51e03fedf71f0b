"""The quantization table's library: measure.py (export, INT8 flavours, accuracy, latency, training),
remedies.py (the cheap remedies and the mixed-precision sweep) and table.py (the whole table, its JSON and
Markdown). benchmarks/quant_table.py is the command."""
