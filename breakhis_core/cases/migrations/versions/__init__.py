"""One module per schema revision, oldest first: ``0001_cases`` (cases, images), ``0002_addenda`` (addenda)."""
