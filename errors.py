"""The errors the library raises for a problem the user must fix: str() is the one-paragraph message
(naming the file or key and the fix). Only the entry points print them and choose the exit status."""


class ConfigError(Exception):
    """A run that cannot go ahead as configured: a key's value, a config file, the run folder, the device,
    a resume that conflicts with the checkpoint, a study's database. main.py and experiments.py exit with status 1."""


class PeerFailed(Exception):
    """Under torchrun: another process of the job failed and says why; this one ends with status 1, silently."""
