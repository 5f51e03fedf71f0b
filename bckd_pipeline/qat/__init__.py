"""Teacher-guided quantization-aware training: fake-quantize the student the way the
target's backend quantizes it, fine-tune it against the frozen teacher, export it as the ``qat-int8`` row.

``fakequant.py`` (NNCF's PyTorch quantization, one scheme per backend, and the exports), ``finetune.py``
(the short distillation schedule on the quantized student), ``stage.py`` (the pipeline's stage, cached).
torch and nncf are imported inside functions only.
"""
