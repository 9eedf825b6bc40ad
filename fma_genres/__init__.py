"""The FMA genre classification suite, by layer."""
