"""Prefect flows: thin wrappers that map cotaforge's stage functions over batches of clips."""
