"""The verbs of ``python -m ich``: one module per verb (see ``ich.cli``)."""
