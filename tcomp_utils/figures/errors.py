"""What a figure or README table raises when its results table has none of the cells it shows."""


class NothingToDraw(ValueError):
    """A results table that holds none of the cells a figure draws (e.g. no fine-tuned cell yet)."""
