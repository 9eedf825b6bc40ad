"""matplotlib, headless, imported when the first figure is drawn."""

def pyplot():
    """matplotlib.pyplot, headless: imported when the first figure is drawn, not at start-up (~0.35 s)."""
    import matplotlib
    matplotlib.use("Agg")  # figures are saved to PNG and sent to W&B, never shown
    import matplotlib.pyplot as plt
    return plt
