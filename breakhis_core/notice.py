"""The research-use notice: the one wording of what the product's results are (and are not) for.

Every surface carries it: each page of the app (``ui.frame``), the HTML/PDF reports, the CLI's prediction output
(text and ``--json``), slide analyses' ``summary.json``; the model card states the intended use.
"""

NOTICE = "Decision support for research use only, not a diagnosis: a pathologist reviews every result."
"""The notice sentence shown with every result."""
INTENDED_USE = "research decision support, not a diagnosis"
"""The model card's ``intended_use`` (card.json; the CLI's description says the same)."""
