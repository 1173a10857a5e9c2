"""dfa trainer: Res2Net (timm) on runtime.features mel spectrograms. Needs the `train` extra."""
