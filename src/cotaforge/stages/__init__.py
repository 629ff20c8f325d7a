"""One module per pipeline stage: ingest, caption, expand, validate, balance, publish."""
