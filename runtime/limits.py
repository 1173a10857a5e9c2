"""Limits shared by the CLIs and the runtime, importable without numpy (the CLIs read them
before they set numpy's thread variables)."""

# A batch of 224x224 windows is 200 kB per window before the model's activations (res2net50:
# ~25 MB per window on CPU): 512 is past any speed gain and still fits a GPU.
MAX_BATCH = 512
