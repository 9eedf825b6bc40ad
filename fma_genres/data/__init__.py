"""Data: FMA metadata, the folder and CSV datasets, the spectrogram cache, preloading, demo data."""
